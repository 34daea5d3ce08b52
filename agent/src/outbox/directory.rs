//! The directory sink, for air-gapped sites: one file per envelope under a local directory
//! (a mounted disk an auditor takes away, a share another tool uploads from).
//!
//! Layout: `<dir>/<site>/<host>/<seq, 20 digits>-<digest hex>.json`, holding the stored
//! canonical envelope bytes and a newline (so `cat <dir>/<site>/<host>/*.json` is a JSON Lines
//! export in chain order). Each file is written to a temporary name, fsync'd, renamed into
//! place, and the directory is fsync'd before the batch is reported delivered, so what the
//! outbox's cursor counts as delivered survives a power loss. A name that already exists with
//! the same bytes is a harmless redelivery; with other bytes it is an error, never an overwrite.
//!
//! The sink creates `<site>/<host>` below its directory but never the directory itself: if it
//! is missing (an unmounted disk), writing into the empty mount point would hide the evidence
//! from whoever mounts the disk later, so the sink fails and the outbox backs off instead.
//! It must not delete or rewrite any existing file except its own temporary files.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::outbox::{Delivery, Outgoing, Sink, SinkError};

/// Mode of delivered files: readable by the group that collects them, written by the agent
/// only.
const FILE_MODE: u32 = 0o640;

/// Files written and fsync'd concurrently before their renames; the cap bounds open file
/// descriptors (well below the usual soft limit of 1,024).
const GROUP_FILES: usize = 512;

/// Threads writing and fsyncing a group at once.
const SYNC_THREADS: usize = 16;

/// A sink writing one file per record below a directory.
#[derive(Clone, Debug)]
pub struct DirectorySink {
    name: String,
    root: PathBuf,
}

enum Placed {
    /// The file already held these bytes.
    Present,
    /// Written to `temp`, to be fsync'd and renamed to `target`.
    Written {
        file: File,
        temp: PathBuf,
        target: PathBuf,
    },
}

impl DirectorySink {
    /// A sink writing below `root`, which must exist when records are delivered.
    pub fn new(root: PathBuf) -> DirectorySink {
        DirectorySink {
            name: DirectorySink::name_for(&root),
            root,
        }
    }

    /// The sink name (cursor key) of a directory: `directory:<path>`.
    pub fn name_for(root: &Path) -> String {
        format!("directory:{}", root.display())
    }

    /// Where a record's file goes.
    pub fn path_of(&self, outgoing: &Outgoing) -> PathBuf {
        self.root
            .join(&outgoing.site_id)
            .join(&outgoing.host_id)
            .join(outgoing.file_name())
    }

    /// Writes a batch and fsyncs it (blocking).
    pub fn deliver_blocking(&self, batch: &[Outgoing]) -> Delivery {
        let mut delivered = 0;
        for group in batch.chunks(GROUP_FILES) {
            let result = self.deliver_group(group);
            delivered += result.delivered;
            if result.error.is_some() {
                return Delivery {
                    delivered,
                    error: result.error,
                };
            }
        }
        Delivery {
            delivered,
            error: None,
        }
    }

    fn deliver_group(&self, group: &[Outgoing]) -> Delivery {
        // Directories first (a batch names one or a few), so the threads below only write.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut usable = group.len();
        let mut error = None;
        for (idx, outgoing) in group.iter().enumerate() {
            let dir = self.root.join(&outgoing.site_id).join(&outgoing.host_id);
            if !dirs.contains(&dir) {
                if let Err(err) = self.ensure_dir(outgoing) {
                    error = Some(err);
                    usable = idx;
                    break;
                }
                dirs.push(dir);
            }
        }
        // Durable data first, then the names: a crash in between leaves temporary files, which
        // the next delivery overwrites. The delivered prefix ends at the first failure.
        let mut placed = Vec::with_capacity(usable);
        for result in place_and_sync(&self.root, &group[..usable]) {
            match result {
                Ok(it) => placed.push(it),
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        for (idx, entry) in placed.iter().enumerate() {
            if let Placed::Written { temp, target, .. } = entry
                && let Err(source) = std::fs::rename(temp, target)
            {
                error = Some(io_error(target, source));
                placed.truncate(idx);
                break;
            }
        }
        for dir in &dirs {
            if let Err(err) = sync_dir(dir) {
                // Nothing in this group is durable by name until its directory is.
                return Delivery {
                    delivered: 0,
                    error: Some(err),
                };
            }
        }
        Delivery {
            delivered: placed.len(),
            error,
        }
    }

    /// Creates `<root>/<site>/<host>` if needed, fsyncing each parent of a created directory.
    fn ensure_dir(&self, outgoing: &Outgoing) -> Result<(), SinkError> {
        match std::fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io_error(
                    &self.root,
                    std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
                ));
            }
            Err(source) => return Err(io_error(&self.root, source)),
        }
        let site = self.root.join(&outgoing.site_id);
        let host = site.join(&outgoing.host_id);
        for (dir, parent) in [(&site, &self.root), (&host, &site)] {
            match std::fs::create_dir(dir) {
                Ok(()) => sync_dir(parent)?,
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(io_error(dir, source)),
            }
        }
        Ok(())
    }
}

impl Sink for DirectorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a self,
        batch: &'a [Outgoing],
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
        Box::pin(async move { self.deliver_blocking(batch) })
    }
}

/// Writes a record's temporary file, or finds it already delivered.
fn place(dir: &Path, outgoing: &Outgoing) -> Result<Placed, SinkError> {
    let file_name = outgoing.file_name();
    let target = dir.join(&file_name);
    let mut content = Vec::with_capacity(outgoing.envelope.len() + 1);
    content.extend_from_slice(&outgoing.envelope);
    content.push(b'\n');
    match File::open(&target) {
        Ok(existing) => {
            let mut found = Vec::with_capacity(content.len());
            existing
                .take(content.len() as u64 + 1)
                .read_to_end(&mut found)
                .map_err(|source| io_error(&target, source))?;
            if found == content {
                return Ok(Placed::Present);
            }
            return Err(SinkError::Conflict {
                name: target.display().to_string(),
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error(&target, source)),
    }
    let temp = dir.join(format!(".{file_name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&temp)
        .map_err(|source| io_error(&temp, source))?;
    file.write_all(&content)
        .map_err(|source| io_error(&temp, source))?;
    Ok(Placed::Written { file, temp, target })
}

/// Writes and fsyncs the temporary file of every record (or finds it delivered), on a few
/// threads at once: the filesystem folds concurrent fsyncs into shared journal commits and
/// device flushes, which serial fsyncs cannot share (three to five times the throughput on a
/// virtual disk here). Results come back in batch order; each thread stops at its first
/// failure, so the results end at or after the first failing record.
fn place_and_sync(root: &Path, group: &[Outgoing]) -> Vec<Result<Placed, SinkError>> {
    let threads = SYNC_THREADS.min(group.len()).max(1);
    let chunk = group.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .chunks(chunk)
            .map(|records| {
                scope.spawn(move || {
                    let mut results = Vec::with_capacity(records.len());
                    for outgoing in records {
                        let dir = root.join(&outgoing.site_id).join(&outgoing.host_id);
                        let result = place(&dir, outgoing).and_then(|placed| {
                            if let Placed::Written { file, temp, .. } = &placed
                                && let Err(source) = file.sync_all()
                            {
                                return Err(io_error(temp, source));
                            }
                            Ok(placed)
                        });
                        let failed = result.is_err();
                        results.push(result);
                        if failed {
                            break;
                        }
                    }
                    results
                })
            })
            .collect();
        let mut results = Vec::with_capacity(group.len());
        for handle in handles {
            match handle.join() {
                Ok(chunk_results) => {
                    let complete = chunk_results.iter().all(Result::is_ok);
                    results.extend(chunk_results);
                    if !complete {
                        break;
                    }
                }
                Err(_) => {
                    results.push(Err(SinkError::Io {
                        path: root.to_path_buf(),
                        source: std::io::Error::other("a writer thread panicked"),
                    }));
                    break;
                }
            }
        }
        results
    })
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|it| it.sync_all())
        .map_err(|source| io_error(dir, source))
}

fn io_error(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use jiff::Timestamp;

    use super::*;

    fn outgoing(seq: u64, content: &str) -> Outgoing {
        Outgoing {
            seq,
            digest_hex: format!("{seq:064x}"),
            site_id: "clinic-a".into(),
            host_id: "nixos-1".into(),
            retain_until: Timestamp::from_second(2_000_000_000).unwrap(),
            envelope: content.as_bytes().to_vec(),
        }
    }

    #[test]
    fn writes_one_file_per_record_under_site_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path().to_path_buf());
        let batch = [outgoing(0, "{\"a\":1}"), outgoing(1, "{\"b\":2}")];
        let delivery = sink.deliver_blocking(&batch);
        assert_eq!(delivery.delivered, 2);
        assert!(delivery.error.is_none());
        let path = dir
            .path()
            .join("clinic-a/nixos-1")
            .join(format!("00000000000000000001-{:064x}.json", 1));
        assert_eq!(sink.path_of(&batch[1]), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"b\":2}\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("clinic-a/nixos-1"))
            .unwrap()
            .map(|it| it.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        assert_eq!(sink.name(), format!("directory:{}", dir.path().display()));
    }

    #[test]
    fn redelivery_is_harmless_and_different_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path().to_path_buf());
        let batch = [outgoing(0, "{\"a\":1}"), outgoing(1, "{\"b\":2}")];
        assert_eq!(sink.deliver_blocking(&batch[..1]).delivered, 1);
        let modified = std::fs::metadata(sink.path_of(&batch[0]))
            .unwrap()
            .modified()
            .unwrap();
        // As after a crash between "delivered" and "cursor saved".
        let delivery = sink.deliver_blocking(&batch);
        assert_eq!((delivery.delivered, delivery.error.is_none()), (2, true));
        assert_eq!(
            std::fs::metadata(sink.path_of(&batch[0]))
                .unwrap()
                .modified()
                .unwrap(),
            modified,
            "the delivered file is not rewritten"
        );
        let forged = [outgoing(0, "{\"a\":2}")];
        let delivery = sink.deliver_blocking(&forged);
        assert_eq!(delivery.delivered, 0);
        assert!(matches!(delivery.error, Some(SinkError::Conflict { .. })));
        assert_eq!(
            std::fs::read(sink.path_of(&batch[0])).unwrap(),
            b"{\"a\":1}\n"
        );
    }

    #[test]
    fn a_leftover_temporary_file_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path().to_path_buf());
        let record = outgoing(5, "{\"c\":3}");
        let host_dir = dir.path().join("clinic-a/nixos-1");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join(format!(".{}.tmp", record.file_name())),
            b"half a rec",
        )
        .unwrap();
        assert_eq!(
            sink.deliver_blocking(std::slice::from_ref(&record))
                .delivered,
            1
        );
        assert_eq!(
            std::fs::read(sink.path_of(&record)).unwrap(),
            b"{\"c\":3}\n"
        );
        assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_root_is_an_error_not_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("unmounted");
        let sink = DirectorySink::new(root.clone());
        let delivery = sink.deliver_blocking(&[outgoing(0, "{}")]);
        assert_eq!(delivery.delivered, 0);
        let message = delivery.error.unwrap().to_string();
        assert!(message.contains("unmounted"), "{message}");
        assert!(!root.exists());
    }

    #[test]
    fn an_unwritable_directory_delivers_the_prefix_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path().to_path_buf());
        let mut second_host = outgoing(1, "{}");
        second_host.host_id = "nixos-2".into();
        // A file where the second host's directory would go.
        std::fs::create_dir_all(dir.path().join("clinic-a")).unwrap();
        std::fs::write(dir.path().join("clinic-a/nixos-2"), b"").unwrap();
        let delivery = sink.deliver_blocking(&[outgoing(0, "{}"), second_host, outgoing(2, "{}")]);
        assert_eq!(delivery.delivered, 1);
        assert!(delivery.error.is_some());
    }
}
