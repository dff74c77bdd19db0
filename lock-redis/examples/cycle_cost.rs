//! Where a lock cycle's time goes: client and server CPU per acquire +
//! release, 64 concurrent tasks on one connection, for the raw cycle and
//! for the ways to take a fencing token with the lock.
//!
//! ```text
//! cargo run --release -p distlock-redis --example cycle_cost
//! ```
//!
//! Variants: `raw` (SET NX PX, Lua compare-delete: no fencing token),
//! `transaction` (MULTI SET NX PX + INCR, then Lua compare-delete: what
//! `RedisLock` sends), `lua` (one Lua script for SET NX PX + INCR, then the
//! release script), and `RedisLock` itself. Server CPU comes from the
//! server's `INFO cpu`, client CPU from `getrusage`; the server runs on
//! CPU 0 and this program on CPU 1.

use std::time::{Duration, Instant};

use distlock_api::DistributedLock;
use distlock_redis::{RedisLock, redis};
use redis::aio::ConnectionManager;

const TASKS: usize = 64;
const ROUNDS: usize = 300;

static COMPARE_DELETE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

static LUA_ACQUIRE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
         return {1, redis.call('INCR', KEYS[2])} end return {0, redis.call('PTTL', KEYS[1])}",
    )
});

#[derive(Clone, Copy, Debug)]
enum Variant {
    Raw,
    Transaction,
    Lua,
    RedisLock,
}

async fn server_cpu(conn: &mut ConnectionManager) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|line| {
            line.strip_prefix("used_cpu_user:")
                .or_else(|| line.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

fn client_cpu() -> f64 {
    // SAFETY: getrusage writes a plain struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

async fn cycle(
    variant: Variant,
    mut conn: ConnectionManager,
    locks: RedisLock,
    task: usize,
    round: usize,
) {
    let key = format!("cost:{{{task}}}");
    let token = format!("{:032x}", round * TASKS + task);
    match variant {
        Variant::Raw => {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await
                .expect("SET");
            assert!(set.is_some());
        }
        Variant::Transaction => {
            let (set, _fence): (Option<String>, i64) = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .cmd("INCR")
                .arg(format!("{key}:fence"))
                .query_async(&mut conn)
                .await
                .expect("MULTI");
            assert!(set.is_some());
        }
        Variant::Lua => {
            let (granted, _fence): (i64, i64) = LUA_ACQUIRE
                .key(&key)
                .key(format!("{key}:fence"))
                .arg(&token)
                .arg(30_000)
                .invoke_async(&mut conn)
                .await
                .expect("EVALSHA");
            assert_eq!(granted, 1);
        }
        Variant::RedisLock => {
            let guard = locks
                .try_acquire(&key, Duration::from_secs(30))
                .await
                .expect("acquire")
                .expect("free");
            guard.release().await.expect("release");
            return;
        }
    }
    let released: i64 = COMPARE_DELETE
        .key(&key)
        .arg(&token)
        .invoke_async(&mut conn)
        .await
        .expect("compare-delete");
    assert_eq!(released, 1);
}

fn main() {
    let server = distlock_testkit::RedisServer::start().expect("redis-server");
    if let Some(pid) = server.pid() {
        distlock_testkit::pin_apart(pid).expect("pin server and client to different CPUs");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("url");
        let mut conn = ConnectionManager::new(client).await.expect("connect");
        let locks = RedisLock::connect(&server.url()).await.expect("connect");
        println!("{TASKS} tasks x {ROUNDS} rounds; per acquire + release cycle:");
        println!(
            "{:<12} {:>10} {:>12} {:>12}",
            "variant", "wall", "client CPU", "server CPU"
        );
        for variant in [
            Variant::Raw,
            Variant::Transaction,
            Variant::Lua,
            Variant::RedisLock,
        ] {
            // One warm-up pass, then the measured one.
            for measured in [false, true] {
                let (server0, client0, started) =
                    (server_cpu(&mut conn).await, client_cpu(), Instant::now());
                for round in 0..ROUNDS {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|task| {
                            tokio::spawn(cycle(variant, conn.clone(), locks.clone(), task, round))
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                }
                let cycles = (ROUNDS * TASKS) as f64;
                let (server1, client1) = (server_cpu(&mut conn).await, client_cpu());
                if measured {
                    println!(
                        "{:<12} {:>7.1} µs {:>9.1} µs {:>9.1} µs",
                        format!("{variant:?}"),
                        started.elapsed().as_secs_f64() * 1e6 / cycles,
                        (client1 - client0) * 1e6 / cycles,
                        (server1 - server0) * 1e6 / cycles,
                    );
                }
            }
        }
    });
}
