//! Where servers keep their data: one base directory per user, and instance
//! directories named after the test process that owns them, so that the
//! leftovers of a killed test run are removed by the next one.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the kit starts
//! it as the `nobody` user, which must be able to reach its directories.

use std::ffi::CString;
use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::error::{TestkitError, io_error};
use crate::process::process_is_alive;

/// The environment variable that chooses where the kit keeps its directories.
pub(crate) const DIR_ENV: &str = "DISTLOCK_TESTKIT_DIR";
/// `/dev/shm` is used only with at least this much room (Docker gives it 64 MiB).
const MIN_SHM_FREE: u64 = 2 << 30;

/// Prefixes of the directories this module creates and sweeps.
pub(crate) const REDIS_PREFIX: &str = "redis";
pub(crate) const PG_PREFIX: &str = "pg";
pub(crate) const PG_TEMPLATE_TMP_PREFIX: &str = "pgtmpl";

/// The unprivileged account a server runs as when the tests run as root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `Some(nobody)` when running as root (PostgreSQL's requirement), else `None`.
pub(crate) fn unprivileged_user() -> Result<Option<RunAs>, TestkitError> {
    if euid() != 0 {
        return Ok(None);
    }
    lookup_user("nobody").map(Some).ok_or_else(|| {
        TestkitError::Other(
            "PostgreSQL refuses to run as root, and there is no `nobody` user to run it as: \
             create one, or run the tests as an unprivileged user"
                .into(),
        )
    })
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: passwd is a plain C struct; all-zero is a valid (empty) value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf.len() is its true size;
    // getpwnam_r is the thread-safe variant.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(RunAs {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// The base directory, created on first use (and stale leftovers swept then).
pub(crate) fn base_dir() -> Result<&'static Path, TestkitError> {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(base) = BASE.get() {
        return Ok(base);
    }
    let base = create_base_dir()?;
    sweep(&base);
    Ok(BASE.get_or_init(|| base))
}

/// Where the base directory goes: `$DISTLOCK_TESTKIT_DIR`, else `/dev/shm` when
/// it has room (a PostgreSQL cluster is ~1,000 small files: copying one takes
/// ~60 ms on tmpfs against ~450 ms on the ext4 disk of our CI machine), else the
/// system's temporary directory.
fn root_dir(euid: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if free_bytes(shm).is_some_and(|free| free >= MIN_SHM_FREE)
        && (euid != 0 || traversable_by_all(shm))
    {
        return shm.to_path_buf();
    }
    let tmp = std::env::temp_dir();
    // The unprivileged server user must be able to walk down to its directory.
    if euid == 0 && !traversable_by_all(&tmp) {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// Free space for unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct; all-zero is a valid value.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stats` is valid for writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    (stats.f_bavail as u64).checked_mul(stats.f_frsize as u64)
}

fn create_base_dir() -> Result<PathBuf, TestkitError> {
    let euid = euid();
    let root = root_dir(euid);
    let base = root.join(format!("distlock-testkit-{euid}"));
    match fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(format!("could not create {}", base.display()))(e)),
    }
    let meta = fs::symlink_metadata(&base)
        .map_err(io_error(format!("could not inspect {}", base.display())))?;
    if !meta.is_dir() || meta.uid() != euid {
        return Err(TestkitError::Other(format!(
            "{} exists but is not a directory owned by uid {euid}; remove it",
            base.display()
        )));
    }
    if euid == 0 && !traversable_by_all(&root) {
        return Err(TestkitError::Other(format!(
            "{} is not reachable by other users, but PostgreSQL runs as `nobody` when the tests \
             run as root: set {DIR_ENV} to a directory every user can traverse (e.g. /tmp)",
            root.display()
        )));
    }
    fs::set_permissions(&base, Permissions::from_mode(0o755)).map_err(io_error(format!(
        "could not set the permissions of {}",
        base.display()
    )))?;
    Ok(base)
}

fn traversable_by_all(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Removes directories left behind by test processes that no longer exist.
fn sweep(base: &Path) {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.splitn(3, '-');
        let (Some(kind), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if ![REDIS_PREFIX, PG_PREFIX, PG_TEMPLATE_TMP_PREFIX].contains(&kind) {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != me && !process_is_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A new directory `<base>/<kind>-<pid>-XXXXXX`, owned by `owner` when given.
pub(crate) fn instance_dir(kind: &str, owner: Option<RunAs>) -> Result<TempDir, TestkitError> {
    let base = base_dir()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", std::process::id()))
        .tempdir_in(base)
        .map_err(io_error(format!(
            "could not create a directory in {}",
            base.display()
        )))?;
    if let Some(owner) = owner {
        chown(dir.path(), owner)?;
    }
    Ok(dir)
}

pub(crate) fn chown(path: &Path, owner: RunAs) -> Result<(), TestkitError> {
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(io_error(format!(
        "could not chown {} to uid {}",
        path.display(),
        owner.uid
    )))
}
