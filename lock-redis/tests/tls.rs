//! `rediss://`: TLS to a redis-server with a certificate from a private CA.
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lock_api::{DistributedLock, LockError};
use lock_redis::RedisLock;
use lock_testkit::{RedisOptions, RedisServer};

const TTL: Duration = Duration::from_secs(30);

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate it signed for `localhost` / 127.0.0.1.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=distlock test CA",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn locks_over_tls_with_a_private_ca_and_refuses_an_untrusted_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let path = |file: &str| dir.path().join(file).to_string_lossy().into_owned();
    let tls_port = free_port();
    let _server = RedisServer::start_with(
        RedisOptions::new()
            .config("tls-port", tls_port.to_string())
            .config("tls-cert-file", path("server.crt"))
            .config("tls-key-file", path("server.key"))
            .config("tls-ca-cert-file", path("ca.crt"))
            .config("tls-auth-clients", "no"),
    )
    .expect("redis-server with TLS");
    let url = format!("rediss://localhost:{tls_port}/0");
    let ca = std::fs::read(dir.path().join("ca.crt")).expect("read CA");

    let locks = RedisLock::options()
        .tls_root_certificate(ca)
        .connect(&url)
        .await
        .expect("TLS with the private CA");
    let guard = locks
        .acquire("tls", TTL, Duration::ZERO)
        .await
        .expect("acquire over TLS");
    assert!(locks.try_acquire("tls", TTL).await.expect("try").is_none());
    guard.release().await.expect("release over TLS");

    // Without the CA the server's certificate is not trusted: a typed error
    // in bounded time, not a hang.
    let untrusted = tokio::time::timeout(
        Duration::from_secs(10),
        RedisLock::options()
            .connect_timeout(Duration::from_secs(2))
            .connect(&url),
    )
    .await
    .expect("bounded");
    let err = untrusted.expect_err("an untrusted certificate must not connect");
    eprintln!("untrusted server: {err}");
    assert!(
        matches!(err, LockError::Connection(_) | LockError::Backend(_)),
        "{err:?}"
    );
}
