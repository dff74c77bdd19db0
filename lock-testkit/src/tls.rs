//! A throwaway certificate authority for TLS tests, made with the `openssl`
//! command.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{TestkitError, io_error};
use crate::process::{find_on_path, run_checked};
use crate::workdir::{chown, instance_dir, unprivileged_user};

/// How long one `openssl` run may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// A new CA and a server certificate it signed for `localhost` and
/// `127.0.0.1`, valid for two days, in a private directory that goes away
/// with the value. The certificate serves both ends of a TLS link (server
/// and client authentication), as a Redis Cluster node's does: the nodes
/// present it to each other on the cluster bus.
///
/// Readable by the PostgreSQL server (the files belong to the user it runs
/// as; the key is mode 0600, as PostgreSQL insists). Start a server with
/// them and connect with [`ca_pem`](Self::ca_pem) (or
/// [`ca_cert`](Self::ca_cert) as `sslrootcert`) as the only trusted root:
///
/// ```no_run
/// use distlock_testkit::{PgOptions, PgServer, TestCertificates};
///
/// # fn main() -> Result<(), distlock_testkit::TestkitError> {
/// let certs = TestCertificates::generate()?;
/// let server = PgServer::start_with(
///     PgOptions::new()
///         .setting("ssl", "on")
///         .setting("ssl_cert_file", certs.server_cert().display().to_string())
///         .setting("ssl_key_file", certs.server_key().display().to_string()),
/// )?;
/// # let _ = server;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestCertificates {
    dir: TempDir,
}

impl TestCertificates {
    /// Makes the CA and the server certificate (elliptic-curve P-256 keys).
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotInstalled`] without `openssl` on `PATH`;
    /// [`TestkitError::CommandFailed`] when it fails.
    pub fn generate() -> Result<Self, TestkitError> {
        let openssl = find_on_path("openssl").ok_or_else(|| TestkitError::NotInstalled {
            program: "openssl".to_owned(),
            searched: "on PATH".to_owned(),
            hint: "install the openssl package (scripts/ensure-servers.sh does)".to_owned(),
        })?;
        let owner = unprivileged_user()?;
        let dir = instance_dir("tls", owner)?;
        let run = |args: &[&str]| -> Result<(), TestkitError> {
            let mut command = Command::new(&openssl);
            command.args(args).current_dir(dir.path());
            run_checked(command, OPENSSL_TIMEOUT).map(drop)
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=distlock test CA",
        ];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&ca)?;
        let mut csr = vec![
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ];
        csr.extend(ec);
        run(&csr)?;
        let extensions = dir.path().join("server.ext");
        fs::write(
            &extensions,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .map_err(io_error(format!(
            "could not write {}",
            extensions.display()
        )))?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ])?;
        let certificates = TestCertificates { dir };
        let key = certificates.server_key();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(io_error(format!("could not chmod {}", key.display())))?;
        if let Some(owner) = owner {
            for file in [certificates.ca_cert(), certificates.server_cert(), key] {
                chown(&file, owner)?;
            }
        }
        Ok(certificates)
    }

    /// The CA certificate (PEM): the root to trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// The CA certificate's PEM bytes.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when the file cannot be read.
    pub fn ca_pem(&self) -> Result<Vec<u8>, TestkitError> {
        let path = self.ca_cert();
        fs::read(&path).map_err(io_error(format!("could not read {}", path.display())))
    }

    /// The server certificate (PEM), for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.crt")
    }

    /// The server's private key (PEM, mode 0600).
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    fn path(&self, file: &str) -> PathBuf {
        Path::new(self.dir.path()).join(file)
    }
}
