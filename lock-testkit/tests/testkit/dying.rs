//! Test processes that die without cleaning up (exit without drop, SIGKILL)
//! leave no server running and no directory behind; and what a start that
//! fails tells.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use distlock_testkit::{PgOptions, PgServer, RedisOptions, RedisServer, TestkitError};

use crate::common::assert_all_gone;

const CHILD_ENV: &str = "LOCK_TESTKIT_CHILD_MODE";

/// Does nothing in a normal run. Re-executed by the tests below with
/// `LOCK_TESTKIT_CHILD_MODE` set, it plays a test process that dies without
/// cleaning up: it starts servers, prints their pids, and exits or is killed.
#[test]
fn child_mode() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let report = |pids: &[u32], dir: &Path| {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        println!("CHILD_PIDS={}", pids.join(","));
        println!("CHILD_DIR={}", dir.display());
    };
    let kill_self = || {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL is not survivable");
    };
    match mode.as_str() {
        "redis-exit" => {
            let server = RedisServer::start().expect("start redis");
            report(&[server.pid().expect("running")], server.data_dir());
            std::mem::forget(server);
            std::process::exit(0);
        }
        "redis-shared-sigkill" => {
            let server = RedisServer::shared().expect("shared redis");
            report(&[server.pid().expect("running")], server.data_dir());
            kill_self();
        }
        "pg-sigkill" => {
            let server = PgServer::start().expect("start postgres");
            let pids: Vec<u32> = std::iter::once(server.pid().expect("running"))
                .chain(server.child_pids())
                .collect();
            report(&pids, server.data_dir());
            std::mem::forget(server);
            kill_self();
        }
        "shared-exit" => {
            let redis = RedisServer::shared().expect("shared redis");
            report(&[redis.pid().expect("running")], redis.data_dir());
            let pg = PgServer::shared().expect("shared postgres");
            let pids: Vec<u32> = std::iter::once(pg.pid().expect("running"))
                .chain(pg.child_pids())
                .collect();
            report(&pids, pg.data_dir());
            std::process::exit(0);
        }
        "redis-drop" => {
            let server = RedisServer::start().expect("start redis");
            report(&[server.pid().expect("running")], server.data_dir());
        }
        "missing-redis" => {
            let err = RedisServer::start().expect_err("redis-server must not be found");
            println!("CHILD_ERROR={err}");
        }
        "missing-postgres" => {
            let err = PgServer::start().expect_err("postgres must not be found");
            println!("CHILD_ERROR={err}");
        }
        other => panic!("unknown {CHILD_ENV} {other:?}"),
    }
}

struct ChildReport {
    pids: Vec<u32>,
    dirs: Vec<std::path::PathBuf>,
    error: Option<String>,
}

/// Runs `child_mode` in a new process of this test binary and collects what it printed.
fn run_child(mode: &str, env: &[(&str, &str)]) -> ChildReport {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            "dying::child_mode",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process");
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child test process ({mode}) did not finish within 60 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let lines = reader.join().expect("reader thread");
    let mut report = ChildReport {
        pids: Vec::new(),
        dirs: Vec::new(),
        error: None,
    };
    // libtest prints "test child_mode ... " without a newline, so a report may
    // share its line.
    for line in lines {
        if let Some((_, pids)) = line.split_once("CHILD_PIDS=") {
            report
                .pids
                .extend(pids.split(',').map(|p| p.parse::<u32>().expect("pid")));
        } else if let Some((_, dir)) = line.split_once("CHILD_DIR=") {
            report.dirs.push(dir.into());
        } else if let Some((_, error)) = line.split_once("CHILD_ERROR=") {
            report.error = Some(error.to_owned());
        }
    }
    report
}

#[test]
fn orphaned_redis_dies_when_the_test_process_exits_without_drop() {
    let report = run_child("redis-exit", &[]);
    assert_eq!(report.pids.len(), 1, "the child must report its server");
    let took = assert_all_gone(&report.pids, Duration::from_secs(5));
    eprintln!("[timing] orphaned redis gone after {took:?}");
}

#[test]
fn shared_redis_dies_when_the_test_process_is_killed() {
    let report = run_child("redis-shared-sigkill", &[]);
    assert_eq!(report.pids.len(), 1, "the child must report its server");
    let took = assert_all_gone(&report.pids, Duration::from_secs(5));
    eprintln!("[timing] shared redis of a SIGKILLed process gone after {took:?}");
}

#[test]
fn orphaned_postgres_dies_when_the_test_process_is_killed() {
    // As root the postmaster runs as `nobody`: this also proves the death
    // signal survives the uid switch.
    let report = run_child("pg-sigkill", &[]);
    assert!(
        report.pids.len() > 1,
        "postmaster and its children: {:?}",
        report.pids
    );
    let took = assert_all_gone(&report.pids, Duration::from_secs(5));
    eprintln!("[timing] postgres of a SIGKILLed process gone after {took:?}");
}

#[test]
fn shared_servers_are_stopped_and_removed_at_exit() {
    let report = run_child("shared-exit", &[]);
    assert!(
        report.pids.len() > 2,
        "redis, postmaster and children: {:?}",
        report.pids
    );
    assert_eq!(report.dirs.len(), 2);
    // The exit hook stops them before the process is gone.
    assert_all_gone(&report.pids, Duration::from_secs(1));
    for dir in &report.dirs {
        assert!(!dir.exists(), "{} survived the exit", dir.display());
    }
}

#[test]
fn missing_binaries_say_what_to_install() {
    let report = run_child("missing-redis", &[("PATH", "/nonexistent")]);
    let error = report.error.expect("an error from the child");
    assert!(error.contains("redis-server not found on PATH"), "{error}");
    assert!(error.contains("apt-get install redis-server"), "{error}");
    assert!(error.contains("REDIS_URL"), "{error}");
    eprintln!("[error example] {error}");

    let report = run_child("missing-postgres", &[("DISTLOCK_PG_BIN", "/nonexistent")]);
    let error = report.error.expect("an error from the child");
    assert!(error.contains("DISTLOCK_PG_BIN=/nonexistent"), "{error}");
    assert!(error.contains("apt-get install postgresql"), "{error}");
    eprintln!("[error example] {error}");
}

#[test]
fn leftovers_of_killed_test_processes_are_swept_by_the_next_one() {
    let killed = run_child("pg-sigkill", &[]);
    assert_all_gone(&killed.pids, Duration::from_secs(5));
    let dir = killed
        .dirs
        .first()
        .expect("the child reports its data directory");
    // `dir` is <instance>/data; the instance directory is named after the dead process.
    let instance = dir.parent().expect("instance directory");
    // A SIGKILLed process cannot clean up after itself: any later test process
    // (this one's next child, or a concurrent one) sweeps the directory when it
    // first needs a directory of its own.
    let next = run_child("redis-drop", &[]);
    assert_eq!(next.pids.len(), 1);
    assert!(!instance.exists(), "{} was not swept", instance.display());
}

#[test]
fn start_failures_show_the_server_log() {
    let err = RedisServer::start_with(RedisOptions::new().config("no-such-directive", "1"))
        .expect_err("redis must refuse an unknown directive");
    assert!(matches!(err, TestkitError::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-directive"), "{err}");
    eprintln!("[error example] {err}");

    let err = PgServer::start_with(PgOptions::new().setting("no_such_setting", "1"))
        .expect_err("postgres must refuse an unknown setting");
    assert!(matches!(err, TestkitError::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_setting"), "{err}");
    eprintln!("[error example] {err}");
}

#[test]
fn a_server_that_dies_by_itself_is_not_running() {
    let server = RedisServer::start().expect("start redis");
    let pid = server.pid().expect("running");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child.
    unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid fits"), libc::SIGKILL) };
    let start = Instant::now();
    while server.is_running() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "is_running() still true"
        );
        thread::sleep(Duration::from_millis(5));
    }
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
