//! The fencing-token sequence and roles: a role that may not create it, or
//! may not use it, gets an error that says what to create or grant; a
//! sequence that would hand out tokens out of order is refused.

use crate::common;

use std::time::Duration;

use common::{database_url, observer};
use distlock_postgres::sqlx::{self, AssertSqlSafe, Executor as _};
use distlock_postgres::{DistributedLock, LockError, PgAdvisoryLock, PgLockOptions};

const TTL: Duration = Duration::from_secs(10);

fn backend_message(outcome: Result<Option<distlock_postgres::LockGuard>, LockError>) -> String {
    match outcome {
        Err(err @ LockError::Backend(_)) => err.to_string(),
        Err(err) => panic!("expected a Backend error, got {err}"),
        Ok(_) => panic!("expected an error, the lock was taken"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_is_told_what_to_create_and_grant() {
    let url = database_url().await;
    let mut admin = observer(&url).await;
    let role = format!("distlock_app_{:08x}", rand::random::<u32>());
    admin
        .execute(AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .await
        .expect("create role");
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    let locks = PgAdvisoryLock::connect(&role_url)
        .await
        .expect("connect as the role");
    let name = common::name("perm");

    // PostgreSQL 15+: no CREATE on schema public for ordinary roles.
    let message = backend_message(locks.try_acquire(&name, TTL).await);
    for needle in [
        "may not create the fencing-token sequence",
        "CREATE SEQUENCE \"public\".\"distlock_fencing_token\"",
        &format!("GRANT USAGE ON SEQUENCE \"public\".\"distlock_fencing_token\" TO \"{role}\""),
        &format!("GRANT CREATE ON SCHEMA \"public\" TO \"{role}\""),
    ] {
        assert!(message.contains(needle), "missing {needle:?} in: {message}");
    }
    // Nothing is left locked by the failed attempts.
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND a.usename = $1",
    )
    .bind(&role)
    .fetch_one(&mut admin)
    .await
    .expect("count");
    assert_eq!(locked, 0);

    // An administrator creates it; the role still may not use it.
    admin
        .execute("CREATE SEQUENCE public.distlock_fencing_token")
        .await
        .expect("create sequence");
    let message = backend_message(locks.try_acquire(&name, TTL).await);
    assert!(
        message.contains(&format!(
            "GRANT USAGE ON SEQUENCE \"public\".\"distlock_fencing_token\" TO \"{role}\""
        )),
        "{message}"
    );

    // Granted: it works, for this client and a new one.
    admin
        .execute(AssertSqlSafe(format!(
            "GRANT USAGE ON SEQUENCE public.distlock_fencing_token TO {role}"
        )))
        .await
        .expect("grant");
    let guard = locks
        .try_acquire(&name, TTL)
        .await
        .expect("granted now")
        .expect("free");
    guard.release().await.expect("ours");
    drop(locks);

    let _ = admin
        .execute(AssertSqlSafe(format!(
            "REVOKE ALL ON SEQUENCE public.distlock_fencing_token FROM {role}"
        )))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_explained() {
    let url = database_url().await;
    let locks = PgLockOptions::new()
        .fencing_sequence("no_such_schema", "tokens")
        .connect(&url)
        .await
        .expect("connect");
    let message = backend_message(locks.try_acquire("x", TTL).await);
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        message.contains("CREATE SCHEMA \"no_such_schema\""),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_that_caches_values_is_refused() {
    let url = database_url().await;
    let mut admin = observer(&url).await;
    admin
        .execute("CREATE SEQUENCE public.cached_tokens CACHE 20")
        .await
        .expect("create");
    let locks = PgLockOptions::new()
        .fencing_sequence("public", "cached_tokens")
        .connect(&url)
        .await
        .expect("connect");
    let message = backend_message(locks.try_acquire("x", TTL).await);
    assert!(message.contains("CACHE 1"), "{message}");

    // A table of that name is not a sequence.
    admin
        .execute("CREATE TABLE public.not_a_sequence (x int)")
        .await
        .expect("create");
    let locks = PgLockOptions::new()
        .fencing_sequence("public", "not_a_sequence")
        .connect(&url)
        .await
        .expect("connect");
    let message = backend_message(locks.try_acquire("x", TTL).await);
    assert!(message.contains("is not a sequence"), "{message}");
}
