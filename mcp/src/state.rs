//! The state directory and `init`, which fills it: the order-signing key, the CA, the server
//! certificate and the database, all in one private directory (mode 0700).
//!
//! | File | Mode | What |
//! |------|------|------|
//! | `mcp.db` (+ `-wal`, `-shm`) | 0600 | hosts, evidence, orders, audit |
//! | `order-signing.key`, `.pub` | 0600, 0644 | Ed25519 key that signs orders; agents pin the `.pub` |
//! | `ca.pem`, `ca.key` | 0644, 0600 | the CA that issues server and client certificates |
//! | `server.pem`, `server.key` | 0644, 0600 | the TLS server certificate and its key |
//!
//! `init` refuses a directory that holds any of these files, so nothing is ever overwritten;
//! it writes the database last, so its presence means the directory is initialised.
//! `serve` reads the certificates and the database and never the order-signing key.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;

use crate::db::{self, DbError};
use crate::files::{self, FileError, PUBLIC_MODE, SECRET_MODE};
use crate::keys::{self, KeyError};
use crate::pki::{self, Authority, PkiError};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/msp-mcp";
/// Default names of the server certificate.
pub const DEFAULT_SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// `init` could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The database could not be created.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The directory is initialised (or holds a file `init` would write).
    #[error("{dir} is already initialised ({file} exists); refusing to overwrite it")]
    Initialised {
        /// The state directory.
        dir: PathBuf,
        /// The file found.
        file: PathBuf,
    },
    /// The order key could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Where each file of the state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

/// What `init` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initialised {
    /// The order-signing public key (what agents pin).
    pub order_key: VerifyingKey,
    /// Fingerprint of the CA certificate.
    pub ca_fingerprint: String,
    /// Names in the server certificate.
    pub server_names: Vec<String>,
}

impl StateDir {
    /// The state in `root`.
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database.
    pub fn database(&self) -> PathBuf {
        self.root.join("mcp.db")
    }

    /// The order-signing private key (its public half is this path plus `.pub`).
    pub fn order_key(&self) -> PathBuf {
        self.root.join("order-signing.key")
    }

    /// The CA certificate.
    pub fn ca_certificate(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// The server certificate.
    pub fn server_certificate(&self) -> PathBuf {
        self.root.join("server.pem")
    }

    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }

    /// Every file `init` writes, the database last.
    pub fn files(&self) -> Vec<PathBuf> {
        vec![
            self.order_key(),
            keys::public_key_path(&self.order_key()),
            self.ca_certificate(),
            self.ca_key(),
            self.server_certificate(),
            self.server_key(),
            self.database(),
        ]
    }

    /// Loads the CA (for enrollment).
    pub fn authority(&self) -> Result<Authority, AuthorityError> {
        let key = files::read_secret(&self.ca_key())?;
        let text = std::str::from_utf8(&key).map_err(|_| AuthorityError::NotText {
            path: self.ca_key(),
        })?;
        Ok(Authority::load(text)?)
    }
}

/// The CA key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The file could not be read (or is readable by others).
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not text.
    #[error("{path}: not a PEM file")]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The key is not usable.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Initialises a state directory: creates it (0700) if needed and writes every file of the
/// table above; refuses if any of them exists.
pub fn init(
    state: &StateDir,
    server_names: &[String],
    now: Timestamp,
) -> Result<Initialised, InitError> {
    pki::check_server_names(server_names)?;
    for file in state.files() {
        if file.symlink_metadata().is_ok() {
            return Err(InitError::Initialised {
                dir: state.root().to_path_buf(),
                file,
            });
        }
    }
    files::ensure_private_dir(state.root())?;
    let order_key = keys::generate_signing_key(&state.order_key())?;
    let (authority, ca) = Authority::create(now)?;
    files::write_new(&state.ca_key(), ca.key_pem.as_bytes(), SECRET_MODE)?;
    files::write_new(
        &state.ca_certificate(),
        ca.certificate_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    let server = authority.issue_server(server_names, now)?;
    files::write_new(&state.server_key(), server.key_pem.as_bytes(), SECRET_MODE)?;
    files::write_new(
        &state.server_certificate(),
        server.certificate_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    drop(db::create(&state.database())?);
    files::sync_dir(state.root());
    Ok(Initialised {
        order_key,
        ca_fingerprint: ca.fingerprint,
        server_names: server_names.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_every_file_with_its_mode_and_refuses_a_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("state"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        init(&state, &names, Timestamp::now()).unwrap();
        assert_eq!(mode(state.root()), 0o700);
        for (file, expected) in [
            (state.order_key(), 0o600),
            (keys::public_key_path(&state.order_key()), 0o644),
            (state.ca_key(), 0o600),
            (state.ca_certificate(), 0o644),
            (state.server_key(), 0o600),
            (state.server_certificate(), 0o644),
            (state.database(), 0o600),
        ] {
            assert_eq!(mode(&file), expected, "{}", file.display());
        }
        let before = std::fs::read(state.ca_key()).unwrap();
        let err = init(&state, &names, Timestamp::now()).unwrap_err();
        assert!(err.to_string().contains("already initialised"), "{err}");
        assert_eq!(std::fs::read(state.ca_key()).unwrap(), before);
        assert!(state.authority().is_ok());
    }
}
