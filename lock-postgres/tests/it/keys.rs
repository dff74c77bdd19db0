//! Lock names become advisory-lock keys through a stable hash: pinned
//! vectors, agreement with the documented SQL formula on a real server, no
//! collisions among a million random names, and locking by raw key.

use crate::common;

use std::time::Duration;

use common::{app_name, client, database_url, observer};
use distlock_postgres::sqlx::{self, AssertSqlSafe};
use distlock_postgres::{DistributedLock, KEY_SQL, PgLockOptions, lock_key, lock_key_in};
use proptest::prelude::*;
use rand::Rng;

const TTL: Duration = Duration::from_secs(30);

/// Computed independently (Python's hashlib: first 8 bytes of SHA-256,
/// big-endian, signed). These must never change: other processes, other
/// versions and operators' SQL rely on them.
const VECTORS: &[(&str, i64)] = &[
    ("ticket:42", -2_853_554_027_507_961_513),
    ("", -2_039_914_840_885_289_964),
    ("a", -3_848_465_438_864_589_366),
    ("🎫", -1_948_756_828_463_656_181),
    ("shop:ticket:42", 2_025_561_150_399_127_444),
    ("distlock", 8_421_534_236_681_386_785),
    ("\0", 7_940_984_811_893_783_192),
    ("e\u{301}", -4_678_546_791_977_036_110),
    ("\u{e9}", 5_375_421_630_974_772_051),
];

#[test]
fn keys_match_the_pinned_vectors() {
    for &(name, key) in VECTORS {
        assert_eq!(lock_key(name), key, "key of {name:?}");
    }
    let long = "x".repeat(1024);
    assert_eq!(lock_key(&long), 5_308_572_275_329_433_152);
}

#[test]
fn a_namespace_is_a_prefix() {
    assert_eq!(
        lock_key_in("shop:", "ticket:42"),
        lock_key("shop:ticket:42")
    );
    assert_eq!(lock_key_in("", "ticket:42"), lock_key("ticket:42"));
    assert_ne!(lock_key_in("shop:", "ticket:42"), lock_key("ticket:42"));
}

/// The birthday bound for n = 10⁶ random 64-bit keys is n²/2⁶⁵ ≈ 2.7 × 10⁻⁸:
/// a collision here means the hash is broken, not unlucky.
///
/// Names are random text of random length with a unique suffix (`#<i>`,
/// so no two are equal); hashed on two threads to keep a debug build quick.
#[test]
fn a_million_random_names_have_distinct_keys() {
    const N: u64 = 1_000_000;
    const THREADS: u64 = 2;
    let seed: u64 = rand::random();
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                let mut keys = Vec::with_capacity((N / THREADS + 1) as usize);
                let mut name = String::with_capacity(64);
                for i in (thread..N).step_by(THREADS as usize) {
                    random_name(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut name);
                    name.push('#');
                    name.push_str(&i.to_string());
                    keys.push(lock_key(&name));
                }
                keys
            })
        })
        .collect();
    let mut keys: Vec<i64> = workers
        .into_iter()
        .flat_map(|worker| worker.join().expect("a hashing thread"))
        .collect();
    assert_eq!(keys.len() as u64, N);
    keys.sort_unstable();
    let duplicates = keys.windows(2).filter(|pair| pair[0] == pair[1]).count();
    assert_eq!(
        duplicates, 0,
        "{duplicates} key collisions among {N} distinct names (seed {seed:#x})"
    );
}

/// Random text of 1 to 24 characters (letters, digits, and one in eight
/// from outside ASCII), from a splitmix64 stream seeded by `state`.
fn random_name(mut state: u64, name: &mut String) {
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_";
    name.clear();
    let len = 1 + next() % 24;
    for _ in 0..len {
        let r = next();
        if r % 8 == 0 {
            name.push(char::from_u32(0xa0 + (r >> 8) as u32 % 0x2f00).unwrap_or('?'));
        } else {
            name.push(ALPHABET[(r >> 8) as usize % ALPHABET.len()] as char);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn keys_are_deterministic_and_prefix_composable(ns in ".{0,8}", name in ".{1,40}") {
        prop_assert_eq!(lock_key(&name), lock_key(&name.clone()));
        prop_assert_eq!(lock_key_in(&ns, &name), lock_key(&format!("{ns}{name}")));
    }

    #[test]
    fn one_more_character_is_another_key(name in ".{1,64}", extra in any::<char>()) {
        prop_assert_ne!(lock_key(&name), lock_key(&format!("{name}{extra}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sql_formula_agrees_with_the_server() {
    let url = database_url().await;
    let mut db = observer(&url).await;
    let mut names: Vec<String> = VECTORS
        .iter()
        .map(|&(name, _)| name.to_owned())
        // PostgreSQL text cannot hold NUL; such names still lock (only the
        // key goes to the server), they just cannot be looked up in SQL.
        .filter(|name| !name.contains('\0'))
        .collect();
    names.push("x".repeat(1024));
    names.push("🔒".repeat(256));
    let mut rng = rand::rng();
    for _ in 0..300 {
        let len = rng.random_range(1..=40);
        let name: String = (0..len)
            .map(|_| {
                loop {
                    let c: char = rng.random();
                    if c != '\0' {
                        break c;
                    }
                }
            })
            .collect();
        names.push(name);
    }
    let sql = format!("SELECT {KEY_SQL}");
    for name in &names {
        let on_server: i64 = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(name)
            .fetch_one(&mut db)
            .await
            .expect("the key formula");
        assert_eq!(
            on_server,
            lock_key(name),
            "SQL and Rust disagree on {name:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_keys_are_plain_advisory_locks() {
    let url = database_url().await;
    let app = app_name("raw-keys");
    let locks = client(&url, &app, PgLockOptions::new()).await;
    let mut outside = observer(&url).await;
    let key = rand::random::<i64>();

    // Ours: the same lock pg_advisory_lock(key) would take elsewhere.
    let guard = locks
        .acquire_key(key, TTL, Duration::ZERO)
        .await
        .expect("a free key");
    assert_eq!(guard.name(), key.to_string());
    assert!(guard.fencing_token() > 0);
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut outside)
        .await
        .expect("try from outside");
    assert!(!taken, "another session took a key distlock holds");
    guard.release().await.expect("still ours");
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut outside)
        .await
        .expect("try from outside");
    assert!(taken, "the released key stayed locked");

    // Theirs: distlock sees it held, and gets it once they let go.
    assert!(
        locks
            .try_acquire_key(key, TTL)
            .await
            .expect("try")
            .is_none()
    );
    let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut outside)
        .await
        .expect("unlock from outside");
    let guard = locks
        .try_acquire_key(key, TTL)
        .await
        .expect("try")
        .expect("free again");
    guard.release().await.expect("still ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_and_its_key_are_one_lock() {
    let url = database_url().await;
    let locks = client(
        &url,
        &app_name("name-key"),
        PgLockOptions::new().key_namespace("ns:"),
    )
    .await;
    let name = common::name("name-key");
    assert_eq!(locks.key(&name), lock_key_in("ns:", &name));

    let guard = locks
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    assert!(
        locks
            .try_acquire_key(lock_key_in("ns:", &name), TTL)
            .await
            .expect("try")
            .is_none(),
        "the raw key of a held name was free"
    );
    // Without the namespace it is another key.
    let other = locks
        .try_acquire_key(lock_key(&name), TTL)
        .await
        .expect("try")
        .expect("a different key");
    other.release().await.expect("ours");
    guard.release().await.expect("ours");
}
