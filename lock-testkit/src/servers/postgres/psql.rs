//! `psql` against a port of ours (a server or the pooler in front of it):
//! the kit's one way to run SQL without a driver.

use std::process::Command;
use std::time::Duration;

use super::binaries::pg_binaries;
use crate::error::TestkitError;
use crate::process::run_checked;

const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `sql` as user `postgres` in `database` on `127.0.0.1:port`; its
/// output unaligned and tuples-only (`-At`: one row per line, columns
/// separated by `|`), without the final newline. Stops at the first error.
pub(crate) fn psql(port: u16, database: &str, sql: &str) -> Result<String, TestkitError> {
    let mut command = Command::new(&pg_binaries()?.psql);
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        // Names through the environment are taken literally (a `-d` argument
        // containing `=` would be parsed as a connection string).
        .env("PGUSER", "postgres")
        .env("PGDATABASE", database)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE");
    let output = run_checked(command, PSQL_TIMEOUT)?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}
