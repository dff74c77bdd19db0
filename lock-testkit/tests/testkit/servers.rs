//! Real servers, real processes: start, probe, inject faults, and check that
//! nothing is left behind, including when the test process dies abruptly.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{assert_all_gone, redis_command};
use distlock_testkit::{
    PgOptions, PgServer, RedisOptions, RedisServer, TestkitError, process_is_alive,
};

const SHORT: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------- helpers

fn assert_pong(server: &RedisServer) {
    let reply = redis_command(server.addr(), &["PING"]).expect("PING");
    assert_eq!(reply, "+PONG\r\n");
}

/// PostgreSQL's SSLRequest: a live server answers one byte ('N' here) at once.
fn pg_probe(addr: SocketAddr) -> io::Result<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, SHORT)?;
    stream.set_read_timeout(Some(SHORT))?;
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer)?;
    Ok(answer[0])
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn assert_refused(addr: SocketAddr) {
    let err = TcpStream::connect_timeout(&addr, SHORT).expect_err("nothing should listen any more");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = f();
    eprintln!("[timing] {label}: {:?}", start.elapsed());
    value
}

// ---------------------------------------------------------------- redis

#[test]
fn redis_kill_and_restart_on_the_same_port() {
    let mut server = timed("redis start", RedisServer::start).expect("start redis");
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_pong(&server);

    let pid = server.pid().expect("running");
    server.kill().expect("kill");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed redis {pid} still exists"
    );
    assert_eq!(server.pid(), None);
    assert_refused(server.addr());

    let port = server.port();
    timed("redis restart", || server.restart()).expect("restart");
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert_pong(&server);
}

#[test]
fn redis_pause_times_out_and_resume_recovers() {
    let mut server = RedisServer::start().expect("start redis");
    server.pause().expect("pause");
    assert!(server.is_paused());
    assert_eq!(proc_state(server.pid().expect("running")), Some('T'));
    let err = redis_command(server.addr(), &["PING"]).expect_err("a paused server must not answer");
    assert!(is_timeout(&err), "expected a read timeout, got {err}");

    server.resume().expect("resume");
    assert!(!server.is_paused());
    assert_pong(&server);
}

#[test]
fn redis_append_only_file_survives_kill_and_restart() {
    let mut server =
        RedisServer::start_with(RedisOptions::new().append_only()).expect("start redis");
    let reply = redis_command(server.addr(), &["SET", "ticket:42", "booked"]).expect("SET");
    assert_eq!(reply, "+OK\r\n");
    server.kill().expect("kill");
    server.restart().expect("restart");
    let reply = redis_command(server.addr(), &["GET", "ticket:42"]).expect("GET");
    assert_eq!(reply, "$6\r\nbooked\r\n");

    // Without persistence the data is gone after the same treatment.
    let mut volatile = RedisServer::start().expect("start redis");
    redis_command(volatile.addr(), &["SET", "k", "v"]).expect("SET");
    volatile.kill().expect("kill");
    volatile.restart().expect("restart");
    assert_eq!(
        redis_command(volatile.addr(), &["GET", "k"]).expect("GET"),
        "$-1\r\n"
    );
}

#[test]
fn redis_drop_leaves_no_process_and_no_directory() {
    let server = RedisServer::start().expect("start redis");
    let pid = server.pid().expect("running");
    let dir = server.data_dir().to_path_buf();
    let addr = server.addr();
    timed("redis drop", || drop(server));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "redis {pid} survived drop"
    );
    assert!(!dir.exists(), "{} survived drop", dir.display());
    assert_refused(addr);
}

#[test]
fn redis_stop_then_restart_and_wrong_state_errors() {
    let mut server = RedisServer::start().expect("start redis");
    server.stop().expect("stop");
    assert!(!server.is_running());
    server.stop().expect("stop is idempotent");
    assert!(matches!(
        server.kill(),
        Err(TestkitError::InvalidState { .. })
    ));
    assert!(matches!(
        server.pause(),
        Err(TestkitError::InvalidState { .. })
    ));
    server.restart().expect("restart");
    assert_pong(&server);
    // Restart of a running (even paused) server stops it first.
    server.pause().expect("pause");
    server.restart().expect("restart");
    assert!(!server.is_paused());
    assert_pong(&server);
}

#[test]
fn redis_outlives_the_thread_that_started_it() {
    // Cargo runs each test on its own thread; PR_SET_PDEATHSIG fires when the
    // forking *thread* exits, which is why the kit forks from a thread of its own.
    let server = thread::spawn(|| RedisServer::start().expect("start redis"))
        .join()
        .expect("thread");
    thread::sleep(Duration::from_millis(300));
    assert!(process_is_alive(server.pid().expect("running")));
    assert_pong(&server);
}

#[test]
fn shared_redis_is_started_once() {
    let first = timed("shared redis", RedisServer::shared).expect("shared redis");
    let second = RedisServer::shared().expect("shared redis");
    assert!(std::ptr::eq(first, second));
    assert_pong(first);
    let url = distlock_testkit::redis_url().expect("redis url");
    if std::env::var_os("REDIS_URL").is_none() {
        assert_eq!(url, first.url());
    }
}

// ---------------------------------------------------------------- postgres

#[test]
fn postgres_query_databases_kill_and_restart() {
    // The kit's default synchronous_commit=off may lose the last fraction of a
    // second of commits to a kill, like a real crash would; this test wants them.
    let options = PgOptions::new().setting("synchronous_commit", "on");
    let mut server =
        timed("postgres start", || PgServer::start_with(options)).expect("start postgres");
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    assert_eq!(server.psql("SELECT 1").expect("SELECT 1"), "1");

    let a = server
        .create_database("bookings a")
        .expect("create database");
    let b = timed("fresh database", || server.fresh_database()).expect("fresh database");
    assert_eq!(
        a,
        format!(
            "postgres://postgres@127.0.0.1:{}/bookings%20a",
            server.port()
        )
    );
    assert_ne!(a, b);
    assert_eq!(
        server
            .psql_in("bookings a", "SELECT current_database()")
            .expect("query"),
        "bookings a"
    );
    let err = server
        .create_database("bookings a")
        .expect_err("duplicate database");
    assert!(err.to_string().contains("already exists"), "{err}");
    server
        .psql_in(
            "bookings a",
            "CREATE TABLE t (id int); INSERT INTO t VALUES (7)",
        )
        .expect("insert");

    let pid = server.pid().expect("running");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid line");
        assert!(
            !uid_line.split_whitespace().skip(1).any(|uid| uid == "0"),
            "postgres runs as root: {uid_line}"
        );
    }
    let kids = server.child_pids();
    assert!(
        !kids.is_empty(),
        "a running postmaster has background processes"
    );
    timed("postgres kill", || server.kill()).expect("kill");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed postmaster {pid} still exists"
    );
    assert_all_gone(&kids, Duration::from_secs(5));
    assert_refused(server.addr());

    let port = server.port();
    timed("postgres restart after kill", || server.restart()).expect("restart");
    assert_eq!(server.port(), port);
    assert_eq!(server.psql("SELECT 1").expect("SELECT 1"), "1");
    assert_eq!(
        server
            .psql_in("bookings a", "SELECT id FROM t")
            .expect("query"),
        "7"
    );
    let names = server
        .psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'bookings a' OR datname LIKE 'distlock_test_%'")
        .expect("list databases");
    assert_eq!(names, "2");
}

#[test]
fn postgres_pause_times_out_and_resume_recovers() {
    let mut server = PgServer::start().expect("start postgres");
    assert_eq!(pg_probe(server.addr()).expect("probe"), b'N');

    server.pause().expect("pause");
    let pids: Vec<u32> = std::iter::once(server.pid().expect("running"))
        .chain(server.child_pids())
        .collect();
    for &pid in &pids {
        // 'Z': a backend that had just exited, waiting for its (frozen) parent.
        assert!(
            matches!(proc_state(pid), Some('T' | 'Z') | None),
            "process {pid} is not stopped"
        );
    }
    let err = pg_probe(server.addr()).expect_err("a paused server must not answer");
    assert!(is_timeout(&err), "expected a read timeout, got {err}");

    server.resume().expect("resume");
    for &pid in &pids {
        assert_ne!(proc_state(pid), Some('T'), "process {pid} is still stopped");
    }
    assert_eq!(pg_probe(server.addr()).expect("probe"), b'N');
    assert_eq!(server.psql("SELECT 1").expect("SELECT 1"), "1");
}

#[test]
fn postgres_options_stop_and_restart() {
    let options = PgOptions::new()
        .max_connections(20)
        .max_locks_per_transaction(128)
        .setting("work_mem", "8MB");
    let mut server = PgServer::start_with(options).expect("start postgres");
    let shown = server
        .psql("SELECT current_setting('max_connections'), current_setting('max_locks_per_transaction'), current_setting('work_mem'), current_setting('fsync')")
        .expect("settings");
    assert_eq!(shown, "20|128|8MB|off");

    let pid = server.pid().expect("running");
    timed("postgres stop", || server.stop()).expect("stop");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(matches!(
        server.resume(),
        Err(TestkitError::InvalidState { .. })
    ));
    timed("postgres restart after stop", || server.restart()).expect("restart");
    assert_eq!(server.psql("SHOW max_connections").expect("SHOW"), "20");

    let err = server
        .psql("SELECT * FROM no_such_table")
        .expect_err("bad SQL");
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[test]
fn postgres_drop_leaves_no_process_and_no_directory() {
    let mut server = PgServer::start().expect("start postgres");
    let pid = server.pid().expect("running");
    let kids = server.child_pids();
    let dir = server.data_dir().to_path_buf();
    let addr = server.addr();
    server.pause().expect("pause"); // drop must cope with a paused server too
    timed("postgres drop (paused)", || drop(server));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster {pid} survived drop"
    );
    assert_all_gone(&kids, Duration::from_secs(1));
    assert!(!dir.exists(), "{} survived drop", dir.display());
    assert_refused(addr);
}

#[test]
fn shared_postgres_gives_each_caller_its_own_database() {
    let first = timed("shared postgres", PgServer::shared).expect("shared postgres");
    let second = PgServer::shared().expect("shared postgres");
    assert!(std::ptr::eq(first, second));
    assert_eq!(first.psql("SHOW max_connections").expect("SHOW"), "200");
    let one = distlock_testkit::database_url().expect("database url");
    let two = distlock_testkit::database_url().expect("database url");
    if std::env::var_os("DATABASE_URL").is_none() {
        assert_ne!(one, two);
        let prefix = format!("postgres://postgres@127.0.0.1:{}/", first.port());
        for url in [&one, &two] {
            let name = url.strip_prefix(&prefix).expect("url on the shared server");
            assert_eq!(
                first
                    .psql_in(name, "SELECT current_database()")
                    .expect("query"),
                name
            );
        }
    }
}
