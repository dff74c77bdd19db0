//! The iptables side of partitions: chains of our own, hooked into
//! `OUTPUT`, made and removed with retries, and swept when their process is
//! gone.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::mem;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use crate::error::TestkitError;
use crate::exit_cleanup;
use crate::process::{find_on_path, is_executable, process_is_alive, run_checked, start_time};

/// How long one iptables command may take (it may wait for the xtables lock).
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a failed iptables change is tried (another process may have
/// changed the rule set at the same moment).
const IPTABLES_ATTEMPTS: u32 = 3;
/// The prefix of every chain the kit makes.
const CHAIN_PREFIX: &str = "dl";

/// Which iptables table a chain is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Table {
    Filter,
    Nat,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// One chain of ours, hooked into the table's `OUTPUT`; removed on drop.
pub(super) struct Chain {
    iptables: &'static Path,
    table: Table,
    /// Empty once removed.
    pub(super) name: String,
}

/// Chains this process made and has not removed yet, for the exit cleanup.
static LIVE: Mutex<BTreeMap<String, (Table, &'static Path)>> = Mutex::new(BTreeMap::new());

impl Chain {
    /// A placeholder that owns nothing.
    pub(super) fn removed() -> Self {
        Chain {
            iptables: Path::new(""),
            table: Table::Filter,
            name: String::new(),
        }
    }

    /// Makes the chain with `rules`, then hooks it in, so the rules take
    /// effect together.
    pub(super) fn create(
        iptables: &'static Path,
        table: Table,
        rules: &[Vec<String>],
    ) -> Result<Self, TestkitError> {
        sweep_stale(iptables);
        exit_cleanup::register();
        let chain = Chain {
            iptables,
            table,
            name: chain_name(),
        };
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chain.name.clone(), (table, iptables));
        // On failure `chain` is dropped, which removes what was made.
        chain.run(&["-N", &chain.name])?;
        for rule in rules {
            let mut args = vec!["-A", &chain.name];
            args.extend(rule.iter().map(String::as_str));
            chain.run(&args)?;
        }
        chain.run(&["-I", "OUTPUT", "1", "-j", &chain.name])?;
        Ok(chain)
    }

    fn run(&self, args: &[&str]) -> Result<(), TestkitError> {
        run_iptables(self.iptables, self.table, args)
    }

    pub(super) fn remove(mut self) -> Result<(), TestkitError> {
        let name = mem::take(&mut self.name);
        if name.is_empty() {
            return Ok(());
        }
        remove_chain(self.iptables, self.table, &name)?;
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
        Ok(())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let chain = Chain {
            iptables: self.iptables,
            table: self.table,
            name: mem::take(&mut self.name),
        };
        let name = chain.name.clone();
        if let Err(err) = chain.remove() {
            eprintln!("distlock-testkit: could not remove iptables chain {name}: {err}");
        }
    }
}

/// Unhooks, flushes and deletes a chain; a chain (or hook) that is already
/// gone counts as removed.
fn remove_chain(iptables: &Path, table: Table, name: &str) -> Result<(), TestkitError> {
    // The hook may be missing if creation failed half-way: ignore that.
    while run_iptables_once(iptables, table, &["-D", "OUTPUT", "-j", name]).is_ok() {}
    if !chain_exists(iptables, table, name) {
        return Ok(());
    }
    run_iptables(iptables, table, &["-F", name])?;
    run_iptables(iptables, table, &["-X", name])
}

fn chain_exists(iptables: &Path, table: Table, name: &str) -> bool {
    run_iptables_once(iptables, table, &["-S", name]).is_ok()
}

/// `dl<pid>-<process start time>-<n>`: unique per process (the start time
/// survives pid reuse), at most 28 characters as iptables allows.
fn chain_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    let started = start_time(pid).unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{CHAIN_PREFIX}{pid}-{started}-{n}")
}

/// Removes the chains of kit processes that are gone (killed before their
/// exit cleanup ran), once per process.
fn sweep_stale(iptables: &'static Path) {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        for table in [Table::Filter, Table::Nat] {
            let Ok(listing) = iptables_output(iptables, table, &["-S"]) else {
                continue;
            };
            for line in listing.lines() {
                let Some(name) = line.strip_prefix("-N ") else {
                    continue;
                };
                if is_stale(name) {
                    let _ = remove_chain(iptables, table, name);
                }
            }
        }
    });
}

/// Whether `name` is a chain of ours whose process no longer runs.
fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(CHAIN_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('-');
    let (Some(pid), Some(started), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(pid), Ok(started), Ok(_)) =
        (pid.parse::<u32>(), started.parse::<u64>(), n.parse::<u64>())
    else {
        return false;
    };
    !process_is_alive(pid) || start_time(pid).is_some_and(|now| now != started)
}

/// Removes every chain this process still has: the exit hook.
pub(crate) fn remove_all() {
    let live = mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    for (name, (table, iptables)) in live {
        // Plain commands: the exit hook runs while the process winds down.
        while exit_iptables(iptables, table, &["-D", "OUTPUT", "-j", &name]) {}
        exit_iptables(iptables, table, &["-F", &name]);
        exit_iptables(iptables, table, &["-X", &name]);
    }
}

fn exit_iptables(iptables: &Path, table: Table, args: &[&str]) -> bool {
    Command::new(iptables)
        .args(["-w", "5", "-t", table.name()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs iptables, trying again when another process changed the rules at
/// the same moment.
fn run_iptables(iptables: &Path, table: Table, args: &[&str]) -> Result<(), TestkitError> {
    let mut attempt = 1;
    loop {
        match run_iptables_once(iptables, table, args) {
            Ok(()) => return Ok(()),
            Err(_) if attempt < IPTABLES_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            Err(err) => return Err(err),
        }
    }
}

fn run_iptables_once(iptables: &Path, table: Table, args: &[&str]) -> Result<(), TestkitError> {
    iptables_output(iptables, table, args).map(|_| ())
}

fn iptables_output(iptables: &Path, table: Table, args: &[&str]) -> Result<String, TestkitError> {
    let mut command = Command::new(iptables);
    command
        .args(["-w", "5", "-t", table.name()])
        .args(args.iter().map(OsStr::new));
    let output = run_checked(command, IPTABLES_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The iptables binary, once root was checked: the one question every
/// constructor asks first.
pub(super) fn iptables() -> Result<&'static Path, TestkitError> {
    static FOUND: Mutex<Option<&'static Path>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(path) = *found {
        return Ok(path);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(TestkitError::Other(format!(
            "a network partition needs root to change iptables rules, and this test \
             process runs as uid {uid}: run the partition tests as root (CI does)"
        )));
    }
    let path = find_on_path("iptables")
        .or_else(|| {
            ["/usr/sbin/iptables", "/sbin/iptables"]
                .into_iter()
                .map(PathBuf::from)
                .find(|path| is_executable(path))
        })
        .ok_or_else(|| TestkitError::NotInstalled {
            program: "iptables".into(),
            searched: "on PATH, in /usr/sbin or /sbin".into(),
            hint: "install the Debian package iptables (scripts/ensure-servers.sh does)".into(),
        })?;
    let path: &'static Path = Box::leak(path.into_boxed_path());
    *found = Some(path);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables_and_are_recognised() {
        let name = chain_name();
        assert!(name.len() <= 28, "{name}");
        assert!(!is_stale(&name), "this process is alive: {name}");
        assert!(is_stale("dl4194303-1-1") || process_is_alive(4_194_303));
        assert!(!is_stale("DOCKER-USER"));
        assert!(!is_stale("dl-other"));
    }
}
