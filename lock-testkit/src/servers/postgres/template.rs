//! `initdb` takes seconds, so it runs once per installation and user into a
//! template cluster that every [`PgServer`](crate::PgServer) copies.
//!
//! The template lives in the kit's base directory and is reused by later test
//! processes too: it is built in a staging directory and renamed into place,
//! so a half-built template is never used, and concurrent builders simply let
//! the first rename win.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::binaries::PgBinaries;
use crate::error::{TestkitError, io_error};
use crate::process::run_checked;
use crate::workdir::{self, RunAs};

const INITDB_ARGS: &[&str] = &[
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
];
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// The template's data directory, built on first use.
pub(crate) fn template_data_dir(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
) -> Result<PathBuf, TestkitError> {
    // A Mutex rather than a OnceLock: a failed build is not cached, and
    // concurrent first callers wait for one build instead of racing.
    static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = TEMPLATE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(dir) = cached.as_ref() {
        return Ok(dir.clone());
    }
    let dir = build(bins, run_as)?;
    *cached = Some(dir.clone());
    Ok(dir)
}

fn build(bins: &PgBinaries, run_as: Option<RunAs>) -> Result<PathBuf, TestkitError> {
    let base = workdir::base_dir()?;
    let identity = format!(
        "{}\n{}\n{:?}\n{}",
        bins.postgres.display(),
        bins.version,
        run_as.map(|r| r.uid),
        INITDB_ARGS.join(" ")
    );
    let final_dir = base.join(format!(
        "pg-template-{}-{:016x}",
        short_version(&bins.version),
        fnv1a(identity.as_bytes())
    ));
    if is_complete(&final_dir) {
        return Ok(final_dir.join("data"));
    }

    let staging = workdir::instance_dir(workdir::PG_TEMPLATE_TMP_PREFIX, run_as)?;
    let mut initdb = Command::new(&bins.initdb);
    initdb
        .arg("-D")
        .arg(staging.path().join("data"))
        .args(INITDB_ARGS)
        .current_dir(staging.path())
        // With TZ set, initdb skips its slow scan of the time-zone database.
        .env("TZ", "UTC");
    if let Some(user) = run_as {
        initdb.uid(user.uid).gid(user.gid);
    }
    run_checked(initdb, INITDB_TIMEOUT)?;

    let staging = staging.keep();
    if final_dir.exists() && !is_complete(&final_dir) {
        let _ = fs::remove_dir_all(&final_dir);
    }
    match fs::rename(&staging, &final_dir) {
        Ok(()) => Ok(final_dir.join("data")),
        // Another process renamed its template into place first: use that one.
        Err(_) if is_complete(&final_dir) => {
            let _ = fs::remove_dir_all(&staging);
            Ok(final_dir.join("data"))
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(io_error(format!(
                "could not move the PostgreSQL template to {}",
                final_dir.display()
            ))(e))
        }
    }
}

fn is_complete(dir: &Path) -> bool {
    let data = dir.join("data");
    data.join("PG_VERSION").is_file() && data.join("global").join("pg_control").is_file()
}

/// "15.13" from "postgres (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)".
fn short_version(version: &str) -> String {
    version
        .split("(PostgreSQL)")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect()
}

/// FNV-1a: a hash that stays the same across processes and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
