//! `rediss://`: TLS to a redis-server with a certificate from a private CA.
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::time::Duration;

use distlock_api::{DistributedLock, LockError};
use distlock_redis::RedisLock;
use distlock_testkit::{
    RedisCluster, RedisClusterOptions, RedisOptions, RedisServer, TestCertificates,
};

const TTL: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Connecting to `url` without the private CA: a typed error within 10 s,
/// not a hang and not a connection.
async fn assert_untrusted(url: &str) {
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        RedisLock::options()
            .connect_timeout(Duration::from_secs(2))
            .connect(url),
    )
    .await
    .expect("bounded")
    .expect_err("an untrusted certificate must not connect");
    assert!(
        matches!(err, LockError::Connection(_) | LockError::Backend(_)),
        "{url}: {err:?}"
    );
}

/// A redis-server that also listens for TLS with the CA's certificate, and
/// its `rediss://` URL.
fn tls_server(certs: &TestCertificates) -> (RedisServer, String) {
    let path = |file: std::path::PathBuf| file.display().to_string();
    let tls_port = free_port();
    let server = RedisServer::start_with(
        RedisOptions::new()
            .config("tls-port", tls_port.to_string())
            .config("tls-cert-file", path(certs.server_cert()))
            .config("tls-key-file", path(certs.server_key()))
            .config("tls-ca-cert-file", path(certs.ca_cert()))
            .config("tls-auth-clients", "no"),
    )
    .expect("redis-server with TLS");
    (server, format!("rediss://localhost:{tls_port}/0"))
}

#[tokio::test]
async fn locks_over_tls_with_a_private_ca_and_refuses_an_untrusted_server() {
    let certs = TestCertificates::generate().expect("a throwaway CA");
    let (_server, url) = tls_server(&certs);
    let ca = certs.ca_pem().expect("read CA");

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

    // Without the CA the server's certificate is not trusted.
    assert_untrusted(&url).await;
}

#[tokio::test]
async fn a_redlock_over_three_tls_servers() {
    let certs = TestCertificates::generate().expect("a throwaway CA");
    let (_servers, urls): (Vec<RedisServer>, Vec<String>) =
        (0..3).map(|_| tls_server(&certs)).unzip();
    let ca = certs.ca_pem().expect("read CA");
    let locks = RedisLock::options()
        .tls_root_certificate(ca)
        .connect_redlock(&urls)
        .await
        .expect("three TLS nodes with the private CA");
    let mut guard = locks
        .acquire("tls-redlock", TTL, Duration::ZERO)
        .await
        .expect("acquire over TLS");
    assert!(
        locks
            .try_acquire("tls-redlock", TTL)
            .await
            .expect("try")
            .is_none()
    );
    guard.extend(TTL).await.expect("extend over TLS");
    guard.release().await.expect("release over TLS");

    // Without the CA no node is trusted: a majority cannot be reached.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        RedisLock::options()
            .connect_timeout(Duration::from_secs(2))
            .connect_redlock(&urls),
    )
    .await
    .expect("bounded")
    .expect_err("untrusted certificates must not connect");
    assert!(
        matches!(err, LockError::Connection(_) | LockError::Backend(_)),
        "{err:?}"
    );
}

/// A cluster over TLS (`rediss+cluster://`): the client learns the TLS ports
/// from a seed, reaches every master with the private CA, follows a slot
/// moved under a held lock, and refuses the cluster without the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_a_private_ca() {
    let certs = TestCertificates::generate().expect("a throwaway CA");
    let cluster =
        RedisCluster::start_with(RedisClusterOptions::new().tls(&certs)).expect("a TLS cluster");
    let url = cluster.tls_cluster_url().expect("TLS ports");
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let ca = certs.ca_pem().expect("read CA");
    let connect = || {
        RedisLock::options()
            .tls_root_certificate(ca.clone())
            .connect(&url)
    };
    let (a, b) = (connect().await.expect("TLS"), connect().await.expect("TLS"));
    assert!(a.is_cluster());

    // One name on each master, each exclusive across the two clients.
    let base = format!("tls-cluster:{:016x}", rand::random::<u64>());
    let slot_of = |name: &str| RedisCluster::key_slot(&format!("distlock:{{{name}}}"));
    let mut names: Vec<Option<String>> = vec![None; cluster.masters().len()];
    for i in 0.. {
        if names.iter().all(Option::is_some) {
            break;
        }
        let name = format!("{base}:{i}");
        let owner = cluster.node_for_slot(slot_of(&name)).expect("owner");
        names[owner].get_or_insert(name);
    }
    let names: Vec<String> = names.into_iter().flatten().collect();
    let mut guards = Vec::new();
    for name in &names {
        let guard = a
            .acquire(name, TTL, Duration::ZERO)
            .await
            .expect("acquire over TLS");
        assert!(
            b.try_acquire(name, TTL).await.expect("try").is_none(),
            "{name} is held"
        );
        guards.push(guard);
    }

    // The first name's slot moves under its held lock: extend and release
    // follow MOVED to the new master, over TLS.
    let slot = slot_of(&names[0]);
    let to = (cluster.node_for_slot(slot).expect("owner") + 1) % cluster.masters().len();
    cluster.migrate_slot(slot, to).expect("migrate the slot");
    for guard in &mut guards {
        guard.extend(TTL).await.expect("extend over TLS");
    }
    for guard in guards {
        guard.release().await.expect("release over TLS");
    }
    let again = b
        .acquire(&names[0], TTL, Duration::ZERO)
        .await
        .expect("free again on its new master");
    assert_eq!(again.fencing_token(), 2, "the counter moved with the slot");
    again.release().await.expect("release");

    // Without the CA the seeds are not trusted.
    assert_untrusted(&url).await;
}
