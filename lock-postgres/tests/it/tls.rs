//! `sslmode` with TLS compiled in: a server with a certificate from a
//! private CA, verified through the URL's `sslrootcert`.
#![cfg(feature = "tls")]

use std::time::Duration;

use distlock_api::{DistributedLock, LockError};
use distlock_postgres::PgAdvisoryLock;
use distlock_testkit::{PgOptions, PgServer, TestCertificates};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_and_verifies_the_server() {
    let certs = TestCertificates::generate().expect("a throwaway CA");
    let server = PgServer::start_with(
        PgOptions::new()
            .setting("ssl", "on")
            .setting("ssl_cert_file", certs.server_cert().display().to_string())
            .setting("ssl_key_file", certs.server_key().display().to_string()),
    )
    .expect("PostgreSQL with TLS");
    let url = server.fresh_database().expect("database");
    let sep = if url.contains('?') { '&' } else { '?' };
    let ca = certs.ca_cert().display().to_string();

    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{url}{sep}sslmode={mode}&sslrootcert={ca}")
            .replace("@127.0.0.1", "@localhost");
        let locks = PgAdvisoryLock::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("sslmode={mode}: {err}"));
        let guard = locks
            .acquire(&format!("tls-{mode}"), TTL, Duration::ZERO)
            .await
            .unwrap_or_else(|err| panic!("acquire with sslmode={mode}: {err}"));
        let ssl: bool = ssl_in_use(&url).await;
        assert!(ssl, "sslmode={mode}: the session is not encrypted");
        guard.release().await.expect("release over TLS");
    }

    // Verification without the CA: the server's certificate is not trusted.
    let untrusted = format!("{url}{sep}sslmode=verify-full").replace("@127.0.0.1", "@localhost");
    let err = tokio::time::timeout(Duration::from_secs(30), PgAdvisoryLock::connect(&untrusted))
        .await
        .expect("bounded")
        .expect_err("an untrusted certificate must not connect");
    assert!(
        matches!(err, LockError::Connection(_) | LockError::Backend(_)),
        "{err:?}"
    );
}

/// Whether a fresh session on `url` runs over TLS, per `pg_stat_ssl`.
async fn ssl_in_use(url: &str) -> bool {
    use distlock_postgres::sqlx::{Connection, PgConnection};
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let ssl: bool = distlock_postgres::sqlx::query_scalar(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_ssl");
    ssl
}
