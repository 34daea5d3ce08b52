//! How async request handlers reach SQLite: one writer thread that commits jobs in groups, and
//! a small pool of reader connections used on tokio's blocking threads.
//!
//! Every write (a check-in, an evidence batch, a result) is a job: a closure run on the writer's
//! connection inside its own `SAVEPOINT`, so a job that fails leaves nothing behind. The writer
//! takes every job that is waiting (up to [`MAX_GROUP_JOBS`]) into one `BEGIN IMMEDIATE` …
//! `COMMIT`, and answers each job only after that commit is durable (`synchronous=FULL`). One
//! fsync then covers a whole group: at ~2 ms per fsync, committing each check-in alone would cap
//! the server near 500 check-ins/s, while groups keep it CPU-bound. Under light load a group is
//! one job and nothing waits.
//!
//! This module owns the connections and the thread and nothing else: what a job does is the
//! caller's. The writer thread stops when the [`Database`] is shut down (its queue closes),
//! after finishing the jobs already queued.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::db::{self, DbError};

/// Most jobs committed together: bounds how long one group holds the write lock.
pub const MAX_GROUP_JOBS: usize = 512;
/// Jobs that may wait for the writer; beyond this, handlers wait to enqueue (backpressure).
pub const QUEUE_CAPACITY: usize = 8192;
/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Why a job did not run or its commit failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The group's transaction could not start.
    #[error("cannot begin a transaction: {0}")]
    Begin(String),
    /// The writer has stopped.
    #[error("the database writer has stopped")]
    Closed,
    /// The group's commit failed: nothing of the job was stored.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The job panicked or its thread went away; nothing of it was stored.
    #[error("the database job was lost")]
    Lost,
    /// A reader connection could not be opened.
    #[error("cannot open a reader connection: {0}")]
    Reader(String),
}

/// The database as the server uses it.
pub struct Database {
    /// Queue to the writer thread. `None` after [`Database::shutdown`]; dropping the last
    /// sender is what stops the thread.
    sender: Option<mpsc::Sender<Box<dyn Job>>>,
    /// Idle reader connections, shared with the blocking threads that borrow them.
    readers: Arc<Readers>,
    /// The writer thread, joined by [`Database::shutdown`].
    writer: Option<JoinHandle<()>>,
}

impl Database {
    /// Opens (and migrates) the database and starts the writer thread.
    pub fn start(path: &Path) -> Result<Database, DbError> {
        let conn = db::open(path)?;
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer_loop(&conn, receiver))
            .map_err(DbError::Writer)?;
        Ok(Database {
            sender: Some(sender),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            writer: Some(writer),
        })
    }

    /// Runs `work` on the writer connection inside the next group; returns its result once the
    /// group's commit is durable. An `Err` from `work` rolls back what it wrote.
    pub async fn write<T, E>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PoolError> + Send + 'static,
    {
        let sender = self.sender.as_ref().ok_or(PoolError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(WriteJob { work, reply });
        sender.send(job).await.map_err(|_| PoolError::Closed)?;
        answer.await.map_err(|_| PoolError::Lost)?
    }

    /// Runs `work` on a reader connection, on a blocking thread.
    pub async fn read<T, E>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PoolError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let res = work(&conn);
            readers.put(conn);
            res
        })
        .await
        .map_err(|_| PoolError::Lost)?
    }

    /// Stops the writer after the queued jobs and waits for it. Blocking.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queued write: run once on the writer connection, or failed without running.
trait Job: Send {
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Finish>;
    fn fail(self: Box<Self>, error: PoolError);
}

/// A job that ran and waits for its group's commit to answer.
trait Finish: Send {
    fn succeeded(&self) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), &PoolError>);
}

struct WriteJob<F, T, E> {
    work: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for WriteJob<F, T, E>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send + 'static,
    E: From<PoolError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Finish> {
        let this = *self;
        Box::new(Ran {
            result: (this.work)(conn),
            reply: this.reply,
        })
    }

    fn fail(self: Box<Self>, error: PoolError) {
        let _ = self.reply.send(Err(E::from(error)));
    }
}

struct Ran<T, E> {
    result: Result<T, E>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E> Finish for Ran<T, E>
where
    T: Send,
    E: From<PoolError> + Send,
{
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn finish(self: Box<Self>, commit: Result<(), &PoolError>) {
        let this = *self;
        // A failed job wrote nothing (its savepoint was rolled back), so its own error stands
        // whatever became of the commit.
        let result = match (this.result, commit) {
            (Ok(_), Err(error)) => Err(E::from(error.clone())),
            (result, _) => result,
        };
        let _ = this.reply.send(result);
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn take(&self) -> Result<Connection, PoolError> {
        let idle = self.idle.lock().ok().and_then(|mut it| it.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => db::reopen(&self.path).map_err(|err| PoolError::Reader(err.to_string())),
        }
    }

    fn put(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
    }
}

fn writer_loop(conn: &Connection, mut receiver: mpsc::Receiver<Box<dyn Job>>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP_JOBS {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        run_group(conn, jobs);
    }
}

fn run_group(conn: &Connection, jobs: Vec<Box<dyn Job>>) {
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %err, "cannot begin a write transaction");
        let error = PoolError::Begin(err.to_string());
        for job in jobs {
            job.fail(error.clone());
        }
        return;
    }
    let n_jobs = jobs.len();
    let mut finished = Vec::with_capacity(n_jobs);
    for job in jobs {
        if let Err(err) = statement(conn, "SAVEPOINT job") {
            job.fail(PoolError::Begin(err.to_string()));
            continue;
        }
        // A panicking job must not take the writer (and every later request) down with it;
        // its reply is dropped, which its handler reports as a lost job.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(conn)));
        let keep = matches!(&ran, Ok(it) if it.succeeded());
        let end = if keep {
            statement(conn, "RELEASE job")
        } else {
            statement(conn, "ROLLBACK TO job").and_then(|()| statement(conn, "RELEASE job"))
        };
        if let Err(err) = end {
            tracing::error!(error = %err, "cannot end a job's savepoint");
        }
        match ran {
            Ok(it) => finished.push(it),
            Err(_) => tracing::error!("a database job panicked; its writes were rolled back"),
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            tracing::trace!(jobs = n_jobs, "committed a group");
            for it in finished {
                it.finish(Ok(()));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, jobs = n_jobs, "commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            let error = PoolError::Commit(err.to_string());
            for it in finished {
                it.finish(Err(&error));
            }
        }
    }
}

fn statement(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Pool(PoolError),
        Refused,
        Sqlite(String),
    }

    impl From<PoolError> for TestError {
        fn from(err: PoolError) -> TestError {
            TestError::Pool(err)
        }
    }

    impl From<rusqlite::Error> for TestError {
        fn from(err: rusqlite::Error) -> TestError {
            TestError::Sqlite(err.to_string())
        }
    }

    fn audit_count(conn: &Connection) -> Result<i64, TestError> {
        Ok(conn.query_row("SELECT count(*) FROM audit", [], |row| row.get(0))?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_commit_together_and_failures_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcp.db");
        drop(db::create(&path).unwrap());
        let database = Arc::new(Database::start(&path).unwrap());
        let mut tasks = Vec::new();
        for idx in 0..200_i64 {
            let database = Arc::clone(&database);
            tasks.push(tokio::spawn(async move {
                database
                    .write(move |conn| {
                        conn.execute(
                            "INSERT INTO audit (at_ms, event, detail) VALUES (?1, 'test', '')",
                            [idx],
                        )?;
                        if idx % 10 == 0 {
                            return Err(TestError::Refused);
                        }
                        Ok(idx)
                    })
                    .await
            }));
        }
        let mut n_ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => n_ok += 1,
                Err(err) => assert_eq!(err, TestError::Refused),
            }
        }
        assert_eq!(n_ok, 180);
        let stored = database.read(audit_count).await.unwrap();
        assert_eq!(stored, 180, "refused jobs wrote nothing");

        let panicked = database
            .write(|conn| -> Result<(), TestError> {
                conn.execute(
                    "INSERT INTO audit (at_ms, event, detail) VALUES (0, 'p', '')",
                    [],
                )?;
                panic!("job panics");
            })
            .await;
        assert_eq!(panicked, Err(TestError::Pool(PoolError::Lost)));
        let after = database.write(audit_count).await.unwrap();
        assert_eq!(after, 180, "the panicking job's insert was rolled back");
        Arc::into_inner(database).unwrap().shutdown();
    }
}
