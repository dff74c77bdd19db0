//! Finds the PostgreSQL programs: `$DISTLOCK_PG_BIN`, else `postgres` and
//! `initdb` side by side on `PATH`, else the newest `/usr/lib/postgresql/*/bin`
//! (where Debian keeps them, off `PATH`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::TestkitError;
use crate::process::{find_on_path, is_executable, run_checked};

/// The environment variable naming a directory that holds `postgres` and `initdb`.
pub(crate) const PG_BIN_ENV: &str = "DISTLOCK_PG_BIN";
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
const HINT: &str = "install them with `apt-get install postgresql` (or point DISTLOCK_PG_BIN at their directory), \
                    or set DATABASE_URL to use a running server";

/// The programs of one PostgreSQL installation.
#[derive(Debug)]
pub(crate) struct PgBinaries {
    pub(crate) postgres: PathBuf,
    pub(crate) initdb: PathBuf,
    pub(crate) psql: PathBuf,
    pub(crate) pg_isready: PathBuf,
    /// `postgres --version`, e.g. "postgres (PostgreSQL) 15.13 (Debian ...)".
    pub(crate) version: String,
}

/// The installation to use, located once per process.
pub(crate) fn pg_binaries() -> Result<&'static PgBinaries, TestkitError> {
    static FOUND: OnceLock<PgBinaries> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found);
    }
    let found = locate()?;
    Ok(FOUND.get_or_init(|| found))
}

fn locate() -> Result<PgBinaries, TestkitError> {
    if let Some(dir) = env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            from_dir(&dir)
        } else {
            Err(TestkitError::NotInstalled {
                program: "postgres and initdb".into(),
                searched: format!("in {PG_BIN_ENV}={}", dir.display()),
                hint: HINT.into(),
            })
        };
    }
    if let Some(postgres) = find_on_path("postgres") {
        // Prefer the real directory (a symlink on PATH may point into
        // /usr/lib/postgresql/N/bin, which also holds psql and pg_isready).
        let real_dir = fs::canonicalize(&postgres)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let path_dir = postgres.parent().map(Path::to_path_buf);
        for dir in [real_dir, path_dir].into_iter().flatten() {
            if has_server(&dir) {
                return from_dir(&dir);
            }
        }
    }
    if let Some(dir) = newest_debian_bin_dir() {
        return from_dir(&dir);
    }
    Err(TestkitError::NotInstalled {
        program: "PostgreSQL server programs (postgres, initdb)".into(),
        searched: format!("in ${PG_BIN_ENV}, on PATH or under {DEBIAN_ROOT}/*/bin"),
        hint: HINT.into(),
    })
}

fn has_server(dir: &Path) -> bool {
    is_executable(&dir.join("postgres")) && is_executable(&dir.join("initdb"))
}

/// The `bin` directory of the highest version under /usr/lib/postgresql.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    let entries = fs::read_dir(DEBIAN_ROOT).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // "16", "9.6": compare as numbers, part by part.
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn from_dir(dir: &Path) -> Result<PgBinaries, TestkitError> {
    let client = |name: &str| {
        let local = dir.join(name);
        if is_executable(&local) {
            return Ok(local);
        }
        find_on_path(name).ok_or_else(|| TestkitError::NotInstalled {
            program: name.into(),
            searched: format!("in {} or on PATH", dir.display()),
            hint: "install it with `apt-get install postgresql-client`".into(),
        })
    };
    let postgres = dir.join("postgres");
    let mut version = Command::new(&postgres);
    version.arg("--version");
    let version = run_checked(version, Duration::from_secs(30))?;
    Ok(PgBinaries {
        initdb: dir.join("initdb"),
        psql: client("psql")?,
        pg_isready: client("pg_isready")?,
        version: String::from_utf8_lossy(&version.stdout).trim().to_owned(),
        postgres,
    })
}
