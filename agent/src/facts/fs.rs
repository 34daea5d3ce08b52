//! Files under a root prefix, with symlinks resolved inside the prefix.
//!
//! A check asks for a logical absolute path (`/run/current-system/nixos-version`); the root maps
//! it to a real path under its base, following every symlink as if the base were `/`. Absolute
//! link targets restart at the base and `..` never climbs above it, so a fixture tree copied from
//! a real host behaves like that host and cannot make the agent read outside the tree.
//! Reads are bounded: a file larger than the caller's limit is an error, never a partial read.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::facts::FactError;

/// Default limit for small text facts (config files, sysfs attributes, headers).
pub const SMALL_FILE_LIMIT: u64 = 1024 * 1024;
/// Most directory entries [`Root::list_dir`] returns before giving up.
pub const MAX_DIR_ENTRIES: usize = 16_384;
/// Symlinks followed before a resolution is declared a loop (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// A root prefix for reading facts.
#[derive(Clone, Debug)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    /// A root at `base`; `/` reads the live host.
    pub fn new(base: impl Into<PathBuf>) -> Root {
        Root { base: base.into() }
    }

    /// The live host.
    pub fn live() -> Root {
        Root::new("/")
    }

    /// Returns true if and only if this root is the live host's `/`.
    pub fn is_live(&self) -> bool {
        self.base == Path::new("/")
    }

    /// The base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Resolves a logical path to its canonical logical path, following every symlink inside
    /// the root. The result is absolute, has no `.`/`..` and no symlink components.
    pub fn canonical(&self, logical: &Path) -> Result<PathBuf, FactError> {
        self.resolve(logical, true)
    }

    /// Maps a logical path to the real path of the file it names (all links followed).
    pub fn real_path(&self, logical: &Path) -> Result<PathBuf, FactError> {
        Ok(self.join(&self.canonical(logical)?))
    }

    /// Reads a whole file, failing if it is larger than `limit` bytes.
    pub fn read_bounded(&self, logical: &Path, limit: u64) -> Result<Vec<u8>, FactError> {
        let real = self.real_path(logical)?;
        let file = std::fs::File::open(&real).map_err(|err| io_error(logical, err))?;
        let mut buf = Vec::new();
        // Read one byte more than the limit to tell "exactly at the limit" from "over it";
        // /proc and /sys report a size of 0 or 4096, so the length must be measured by reading.
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|err| io_error(logical, err))?;
        if buf.len() as u64 > limit {
            return Err(FactError::FileTooLarge {
                path: logical.to_path_buf(),
                limit,
            });
        }
        Ok(buf)
    }

    /// Reads the first `n` bytes of a file (fewer if it is shorter).
    pub fn read_prefix(&self, logical: &Path, n: u64) -> Result<Vec<u8>, FactError> {
        let real = self.real_path(logical)?;
        let file = std::fs::File::open(&real).map_err(|err| io_error(logical, err))?;
        let mut buf = Vec::new();
        file.take(n)
            .read_to_end(&mut buf)
            .map_err(|err| io_error(logical, err))?;
        Ok(buf)
    }

    /// Reads a small UTF-8 text file (at most [`SMALL_FILE_LIMIT`] bytes).
    pub fn read_text(&self, logical: &Path) -> Result<String, FactError> {
        let bytes = self.read_bounded(logical, SMALL_FILE_LIMIT)?;
        String::from_utf8(bytes)
            .map_err(|_| FactError::parse(logical.display().to_string(), "not UTF-8"))
    }

    /// Reads the target of a symlink without following the last component.
    pub fn read_link(&self, logical: &Path) -> Result<PathBuf, FactError> {
        let parent_canonical = self.canonical_parent(logical)?;
        let real = self.join(&parent_canonical);
        std::fs::read_link(&real).map_err(|err| io_error(logical, err))
    }

    /// Metadata of the file a path names, links followed.
    pub fn metadata(&self, logical: &Path) -> Result<Metadata, FactError> {
        let real = self.real_path(logical)?;
        std::fs::metadata(&real).map_err(|err| io_error(logical, err))
    }

    /// Metadata of the path itself (a symlink is not followed), e.g. the creation time of a
    /// generation link.
    pub fn symlink_metadata(&self, logical: &Path) -> Result<Metadata, FactError> {
        let real = self.join(&self.canonical_parent(logical)?);
        std::fs::symlink_metadata(&real).map_err(|err| io_error(logical, err))
    }

    /// Returns true if and only if the path exists (links followed).
    pub fn exists(&self, logical: &Path) -> bool {
        self.metadata(logical).is_ok()
    }

    /// Names in a directory, sorted, at most [`MAX_DIR_ENTRIES`].
    pub fn list_dir(&self, logical: &Path) -> Result<Vec<String>, FactError> {
        let real = self.real_path(logical)?;
        let entries = std::fs::read_dir(&real).map_err(|err| io_error(logical, err))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| io_error(logical, err))?;
            if names.len() == MAX_DIR_ENTRIES {
                return Err(FactError::Io {
                    path: logical.to_path_buf(),
                    source: std::io::Error::other(format!("more than {MAX_DIR_ENTRIES} entries")),
                });
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The canonical path of the parent joined with the last component (not followed).
    fn canonical_parent(&self, logical: &Path) -> Result<PathBuf, FactError> {
        self.resolve(logical, false)
    }

    fn join(&self, canonical_logical: &Path) -> PathBuf {
        let relative = canonical_logical
            .strip_prefix("/")
            .unwrap_or(canonical_logical);
        if relative.as_os_str().is_empty() {
            self.base.clone()
        } else {
            self.base.join(relative)
        }
    }

    fn resolve(&self, logical: &Path, follow_last: bool) -> Result<PathBuf, FactError> {
        let mut pending: VecDeque<OsString> = components(logical).collect();
        let mut current = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                current.pop();
                continue;
            }
            let candidate = current.join(&name);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                current = candidate;
                break;
            }
            let real = self.join(&candidate);
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(meta) => meta,
                Err(err) => return Err(io_error(logical, err)),
            };
            if !meta.file_type().is_symlink() {
                current = candidate;
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(FactError::SymlinkLoop {
                    path: logical.to_path_buf(),
                });
            }
            let target = std::fs::read_link(&real).map_err(|err| io_error(logical, err))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            let mut target_components: Vec<OsString> = components(&target).collect();
            while let Some(it) = target_components.pop() {
                pending.push_front(it);
            }
        }
        Ok(current)
    }
}

/// Normal components of a path, with `..` kept as a marker and `.`/root dropped.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|it| match it {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
    })
}

fn io_error(logical: &Path, err: std::io::Error) -> FactError {
    let path = logical.to_path_buf();
    match err.kind() {
        std::io::ErrorKind::NotFound => FactError::NotFound { path },
        std::io::ErrorKind::PermissionDenied => FactError::PermissionDenied { path },
        _ if err.raw_os_error() == Some(20) => FactError::NotFound { path }, // ENOTDIR
        _ => FactError::Io { path, source: err },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("nix/store/abc-system")).unwrap();
        std::fs::write(
            base.join("nix/store/abc-system/nixos-version"),
            "25.11.20260510.8fd9daa",
        )
        .unwrap();
        std::fs::create_dir_all(base.join("run")).unwrap();
        symlink("/nix/store/abc-system", base.join("run/current-system")).unwrap();
        let root = Root::new(base);
        let text = root
            .read_text(Path::new("/run/current-system/nixos-version"))
            .unwrap();
        assert_eq!(text, "25.11.20260510.8fd9daa");
        assert_eq!(
            root.canonical(Path::new("/run/current-system")).unwrap(),
            PathBuf::from("/nix/store/abc-system")
        );
        assert_eq!(
            root.read_link(Path::new("/run/current-system")).unwrap(),
            PathBuf::from("/nix/store/abc-system")
        );
    }

    #[test]
    fn dotdot_cannot_escape_and_loops_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("root");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        symlink("../../../secret", base.join("etc/escape")).unwrap();
        symlink("/etc/loop-b", base.join("etc/loop-a")).unwrap();
        symlink("/etc/loop-a", base.join("etc/loop-b")).unwrap();
        let root = Root::new(&base);
        assert!(matches!(
            root.read_text(Path::new("/etc/escape")),
            Err(FactError::NotFound { .. })
        ));
        assert!(matches!(
            root.read_text(Path::new("/etc/loop-a")),
            Err(FactError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn bounded_reads_refuse_large_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        let root = Root::new(dir.path());
        assert!(root.read_bounded(Path::new("/big"), 100).is_ok());
        assert!(matches!(
            root.read_bounded(Path::new("/big"), 99),
            Err(FactError::FileTooLarge { limit: 99, .. })
        ));
        assert_eq!(root.read_prefix(Path::new("/big"), 10).unwrap().len(), 10);
    }
}
