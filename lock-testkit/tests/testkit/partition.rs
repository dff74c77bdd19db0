//! Kernel-level partitions: packets really are dropped (a TCP exchange
//! stalls both ways, the server's keepalives go unanswered), only on the
//! path asked for, and the rules are gone afterwards — after `drop`, after
//! the process exits with the handle leaked, and after it was killed.
//!
//! These tests need root and iptables; without them they fail, saying so.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distlock_testkit::{AliasPort, Partition};

/// How long a read waits before the exchange counts as stalled.
const STALL: Duration = Duration::from_millis(300);
/// Bound on every read that must succeed.
const ARRIVE: Duration = Duration::from_secs(5);
/// Set in a child copy of this test binary: what the child should do.
const CHILD_ENV: &str = "LOCK_TESTKIT_PARTITION_CHILD";

fn server() -> (TcpListener, u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = listener.local_addr().expect("port").port();
    (listener, port)
}

/// A connected pair: (client, server side).
fn connect(listener: &TcpListener, port: u16) -> (TcpStream, TcpStream) {
    let client =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), ARRIVE).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    (client, accepted)
}

fn arrives(from: &mut TcpStream, to: &mut TcpStream, byte: u8) -> bool {
    from.write_all(&[byte]).expect("write");
    to.set_read_timeout(Some(STALL)).expect("timeout");
    let mut buf = [0u8; 1];
    match to.read(&mut buf) {
        Ok(1) => {
            assert_eq!(buf[0], byte);
            true
        }
        Ok(_) => panic!("the connection closed"),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(err) => panic!("read failed: {err}"),
    }
}

/// Reads `byte` within `ARRIVE` (after a partition heals, TCP retransmits
/// on its own schedule).
fn arrives_eventually(to: &mut TcpStream, byte: u8) {
    to.set_read_timeout(Some(ARRIVE)).expect("timeout");
    let mut buf = [0u8; 1];
    to.read_exact(&mut buf)
        .expect("the byte sent during the partition arrives");
    assert_eq!(buf[0], byte);
}

fn iptables_rules() -> String {
    let mut rules = String::new();
    for table in ["filter", "nat"] {
        let output = Command::new("iptables")
            .args(["-w", "5", "-t", table, "-S"])
            .output()
            .expect("iptables -S");
        assert!(output.status.success(), "iptables -S -t {table} failed");
        rules.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    rules
}

fn assert_chain_gone(chain: &str) {
    let rules = iptables_rules();
    assert!(
        !rules.lines().any(|line| line.contains(chain)),
        "chain {chain} is still there:\n{rules}"
    );
}

#[test]
fn an_isolated_alias_stalls_its_connections_both_ways_and_only_those() {
    let (listener, port) = server();
    let alias = AliasPort::new(port).expect("alias port (needs root and iptables)");
    let nat_chain = alias.chain_name().to_owned();

    // Through the alias, the server sees an ordinary client.
    let (mut victim, mut victim_server) = connect(&listener, alias.port());
    assert!(arrives(&mut victim, &mut victim_server, 1));
    assert!(arrives(&mut victim_server, &mut victim, 2));
    let (mut bystander, mut bystander_server) = connect(&listener, port);

    let partition = Partition::isolate(&alias).expect("partition");
    let chain = partition.chain_name().to_owned();
    assert!(iptables_rules().contains(&chain));
    assert!(
        !arrives(&mut victim, &mut victim_server, 3),
        "client → server got through"
    );
    assert!(
        !arrives(&mut victim_server, &mut victim, 4),
        "server → client got through"
    );
    // Other clients of the server are not affected, old or new.
    assert!(arrives(&mut bystander, &mut bystander_server, 5));
    assert!(arrives(&mut bystander_server, &mut bystander, 6));
    let (mut newcomer, mut newcomer_server) = connect(&listener, port);
    assert!(arrives(&mut newcomer, &mut newcomer_server, 7));
    // A new connection through the alias hangs in its handshake.
    let started = Instant::now();
    let refused = TcpStream::connect_timeout(&alias.addr(), STALL).expect_err("isolated");
    assert!(
        matches!(refused.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{refused}"
    );
    assert!(started.elapsed() >= STALL);

    partition.heal().expect("heal");
    assert_chain_gone(&chain);
    // What was sent during the partition is retransmitted and arrives.
    arrives_eventually(&mut victim_server, 3);
    arrives_eventually(&mut victim, 4);
    assert!(arrives(&mut victim, &mut victim_server, 8));

    drop(alias);
    assert_chain_gone(&nat_chain);
}

#[test]
fn a_dropped_port_cuts_every_client_and_heals_on_drop() {
    let (listener, port) = server();
    let (mut client, mut accepted) = connect(&listener, port);
    let partition = Partition::drop_port(port).expect("partition (needs root and iptables)");
    let chain = partition.chain_name().to_owned();
    assert!(!arrives(&mut client, &mut accepted, 1));
    assert!(!arrives(&mut accepted, &mut client, 2));
    drop(partition);
    assert_chain_gone(&chain);
    arrives_eventually(&mut accepted, 1);
    arrives_eventually(&mut client, 2);
}

/// The kernel of a partitioned peer answers nothing, so the other side's
/// keepalives fail and it drops the connection — what a `LinkProxy`
/// cannot show (its own kernel acknowledges the probes).
#[test]
fn keepalives_across_a_partition_go_unanswered() {
    let (listener, port) = server();
    let alias = AliasPort::new(port).expect("alias port");
    let (_victim, accepted) = connect(&listener, alias.port());
    set_keepalive(&accepted, 1, 1, 2);
    let partition = Partition::isolate(&alias).expect("partition");
    let started = Instant::now();
    let mut accepted = accepted;
    accepted
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let err = accepted.read(&mut buf).expect_err("the connection dies");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let took = started.elapsed();
    // idle 1 s + 2 probes 1 s apart: about 3 s.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    partition.heal().expect("heal");
}

fn set_keepalive(stream: &TcpStream, idle: i32, interval: i32, count: i32) {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: an int option of the size given, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt {name}");
    }
}

/// Runs this test binary again as a child, for `test`, with `CHILD_ENV=mode`.
fn spawn_child(test: &str, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .arg(format!("partition::{test}"))
        .args(["--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// In the child: makes a partition and an alias, prints their chains,
/// leaks both, and then exits or waits to be killed.
fn child_body(mode: &str) {
    let (_listener, port) = server();
    let alias = AliasPort::new(port).expect("alias");
    let partition = Partition::isolate(&alias).expect("partition");
    println!("CHAINS {} {}", alias.chain_name(), partition.chain_name());
    std::mem::forget(partition);
    std::mem::forget(alias);
    match mode {
        "exit" => std::process::exit(0),
        // Waits to be killed, but not forever if the parent failed first.
        _ => {
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(1)
        }
    }
}

fn read_chains(child: &mut std::process::Child) -> Vec<String> {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read child") == 1 {
        if byte[0] == b'\n' {
            let text = String::from_utf8_lossy(&line).into_owned();
            // libtest prints the test's name on the same line.
            if let Some((_, chains)) = text.split_once("CHAINS ") {
                return chains.split(' ').map(str::to_owned).collect();
            }
            line.clear();
        } else {
            line.push(byte[0]);
        }
    }
    panic!("the child printed no chains");
}

#[test]
fn leaked_rules_are_removed_at_exit() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child_body(&mode);
    }
    let mut child = spawn_child("leaked_rules_are_removed_at_exit", "exit");
    let chains = read_chains(&mut child);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    for chain in &chains {
        assert_chain_gone(chain);
    }
}

#[test]
fn rules_of_a_killed_process_are_removed_by_the_next_one() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child_body(&mode);
    }
    let mut child = spawn_child(
        "rules_of_a_killed_process_are_removed_by_the_next_one",
        "wait",
    );
    let chains = read_chains(&mut child);
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        iptables_rules().contains(&chains[0]),
        "the kill left them behind"
    );
    // The next process that makes a partition sweeps them up (this one
    // has swept already, so ask a fresh child to).
    let mut sweeper = spawn_child(
        "rules_of_a_killed_process_are_removed_by_the_next_one",
        "exit",
    );
    let _ = read_chains(&mut sweeper);
    assert!(sweeper.wait().expect("wait").success());
    for chain in &chains {
        assert_chain_gone(chain);
    }
}
