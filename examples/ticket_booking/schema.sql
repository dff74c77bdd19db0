-- The ticket-booking schema shared by examples/ticket_booking, its test and
-- the comparison run. `fence` is the fencing token of the last lock holder
-- whose write was accepted: a write carrying a smaller token is from a holder
-- whose lock ran out and is rejected.
CREATE TABLE IF NOT EXISTS events (
    id    BIGINT PRIMARY KEY,
    title TEXT   NOT NULL
);

CREATE TABLE IF NOT EXISTS tickets (
    id        BIGINT PRIMARY KEY,
    event_id  BIGINT NOT NULL REFERENCES events (id),
    seat      TEXT   NOT NULL,
    status    TEXT   NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'sold')),
    holder    TEXT,
    fence     BIGINT NOT NULL DEFAULT 0,
    booked_at TIMESTAMPTZ
);

-- Every accepted write, in commit order: what the tests check afterwards
-- (each seat sold at most once at a time, accepted tokens rising per seat).
CREATE TABLE IF NOT EXISTS ticket_log (
    seq       BIGSERIAL PRIMARY KEY,
    ticket_id BIGINT NOT NULL REFERENCES tickets (id),
    action    TEXT   NOT NULL CHECK (action IN ('book', 'cancel')),
    holder    TEXT   NOT NULL,
    fence     BIGINT NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
