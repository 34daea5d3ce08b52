//! Files the control plane writes once and reads with care: new files with exact modes (never
//! overwriting one that exists), private directories, and bounded reads of secrets that refuse a
//! file group or others could read.
//!
//! This module owns how bytes reach and leave the disk for keys, certificates and the enrollment
//! bundle, and nothing else. It never puts a file's content into an error: errors name the path
//! and what is wrong with it, since the content may be a private key.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Mode of private keys and of the database.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and public keys.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the state directory and of enrollment bundles: only the owner may list or enter them.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Largest key, certificate or public key file read (PEM files of one certificate are ~1 KiB).
pub const MAX_SMALL_FILE_BYTES: u64 = 64 * 1024;

/// A file that could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file or directory could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists and is never overwritten.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// A secret file is readable by group or others.
    #[error(
        "{path}: secret file is readable by group or others (mode {mode:04o}); restrict it with chmod 600"
    )]
    Permissions {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be written completely.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes a new file with exactly `mode` and syncs it; refuses if anything exists at `path`.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                FileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                FileError::Create {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let write_error = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    // The umask can only remove bits; set the mode explicitly so a certificate is 0644 even
    // under umask 077, and a key never more than 0600.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(())
}

/// Makes `path` a private directory (mode 0700): creates it (and its parents) when missing,
/// restricts an existing one. Returns whether it was created.
pub fn ensure_private_dir(path: &Path) -> Result<bool, FileError> {
    let create_error = |source| FileError::Create {
        path: path.to_path_buf(),
        source,
    };
    let created = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => false,
        Ok(_) => {
            return Err(create_error(std::io::Error::other(
                "exists and is not a directory",
            )));
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(path)
                .map_err(create_error)?;
            true
        }
        Err(err) => return Err(create_error(err)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(create_error)?;
    Ok(created)
}

/// Syncs a directory so the entries just created in it are durable. A directory that cannot
/// be opened (odd filesystems) does not undo files already written and synced.
pub fn sync_dir(path: &Path) {
    if let Ok(dir) = File::open(path) {
        let _ = dir.sync_all();
    }
}

/// Reads a secret file after checking, on the open handle, that it is a regular file that
/// neither group nor others can read.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let (file, mode) = open_regular(path)?;
    if mode & 0o077 != 0 {
        return Err(FileError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    read_bounded(path, file).map(Zeroizing::new)
}

/// Reads a public file (certificate, public key), bounded.
pub fn read_public(path: &Path) -> Result<Vec<u8>, FileError> {
    let (file, _) = open_regular(path)?;
    read_bounded(path, file)
}

fn open_regular(path: &Path) -> Result<(File, u32), FileError> {
    let read_error = |source| FileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    // fstat on the open handle: what is checked is what is read, even if the path changes.
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(read_error(std::io::Error::other("not a regular file")));
    }
    Ok((file, metadata.permissions().mode()))
}

fn read_bounded(path: &Path, file: File) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_SMALL_FILE_BYTES {
        return Err(FileError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("larger than {MAX_SMALL_FILE_BYTES} bytes")),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_get_exact_modes_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        write_new(&secret, b"s", SECRET_MODE).unwrap();
        assert_eq!(mode(&secret), 0o600);
        let public = dir.path().join("public");
        write_new(&public, b"p", PUBLIC_MODE).unwrap();
        assert_eq!(mode(&public), 0o644);
        let err = write_new(&secret, b"other", SECRET_MODE).unwrap_err();
        assert!(matches!(err, FileError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    }

    #[test]
    fn readable_secrets_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"top secret", 0o640).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(matches!(err, FileError::Permissions { mode: 0o640, .. }));
        assert!(!err.to_string().contains("top secret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap().as_slice(), b"top secret");
    }

    #[test]
    fn private_dirs_are_created_or_restricted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        assert!(ensure_private_dir(&path).unwrap());
        assert_eq!(mode(&path), 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!ensure_private_dir(&path).unwrap());
        assert_eq!(mode(&path), 0o700);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }
}
