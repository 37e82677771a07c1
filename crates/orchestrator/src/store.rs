//! SQLite persistence.
//!
//! One connection, owned by one writer thread. Callers hand it batches of
//! [`WriteOp`]s over a channel; the thread folds every batch that is waiting into
//! a single transaction (group commit), so a burst of events costs one commit,
//! not one per event. A caller that must not answer before its write is durable
//! awaits the acknowledgement, which is sent only after `COMMIT` returned: with
//! WAL, the committed pages are in the OS's hands, so a `kill -9` of the process
//! right after loses nothing.
//!
//! Reads happen once, at start-up ([`Store::open`] returns everything the
//! in-memory registry needs); after that memory is the read model. The only
//! later reads are the size and row counts for `/metrics`, on a separate
//! read-only connection ([`Store::measure`]) so they never wait for the writer
//! nor hold it up (WAL readers and the writer do not block each other).
//!
//! Disk stays bounded: history tables are trimmed per owner (only owners
//! written since the last trim are looked at), ended streams older than the
//! retention are removed in small batches ([`Store::expire_batch`]) that
//! queue behind writes like any other job, and the space they free goes back
//! to the file system in steps ([`Store::vacuum_step`], incremental
//! auto-vacuum), so no job holds the writer for long.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    CheckSource, Engine, EngineHealth, EngineUsage, HealthCheck, HealthStatus, HealthTransition,
    KeyType, RuntimeKind, StatSnapshot, Stream, StreamStatus,
};
use crate::persist::{Loaded, WriteOp};
use crate::time::Timestamp;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_stream_failovers.sql"),
    include_str!("../migrations/0003_streams_expiry.sql"),
    include_str!("../migrations/0004_stat_snapshot_streams_by_number.sql"),
];

/// A stream's number in `stat_snapshots.stream` (migration 0004), by its id.
const STREAM_SEQ: &str = "(SELECT seq FROM streams WHERE id = ?1)";

/// The tables, in the order `/metrics` lists their row counts.
pub const TABLES: [&str; 5] = [
    "engines",
    "streams",
    "stat_snapshots",
    "health_checks",
    "health_transitions",
];

/// SQLite's `auto_vacuum` value for INCREMENTAL.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Most jobs folded into one transaction.
const MAX_GROUP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database schema is version {found}, newer than this program knows ({known})")]
    SchemaTooNew { found: usize, known: usize },
    #[error("the database writer has stopped")]
    Closed,
    #[error("the database write failed ({}): {message}", .kind.as_str())]
    Write { kind: WriteFailure, message: String },
    /// More writes are waiting than the queue holds: the database is far
    /// behind (or failing), and a change that could not be queued is refused
    /// before it is made.
    #[error("{depth} writes are waiting for the database (limit {limit})")]
    Backlog { depth: usize, limit: usize },
    #[error("cannot start the database writer thread: {0}")]
    Thread(std::io::Error),
}

/// Why a commit failed, so that callers decide by kind, never by text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The file or its directory is read-only (permissions, `chattr +i`, a
    /// read-only mount).
    ReadOnly,
    /// Another process held the lock longer than the busy timeout.
    Busy,
    /// The disk is full.
    Full,
    Other,
}

impl WriteFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteFailure::ReadOnly => "read-only",
            WriteFailure::Busy => "locked by another process",
            WriteFailure::Full => "disk full",
            WriteFailure::Other => "other",
        }
    }

    fn of(error: &rusqlite::Error) -> WriteFailure {
        use rusqlite::ErrorCode;
        match error.sqlite_error_code() {
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                WriteFailure::ReadOnly
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => WriteFailure::Busy,
            Some(ErrorCode::DiskFull) => WriteFailure::Full,
            _ => WriteFailure::Other,
        }
    }
}

/// Most write jobs waiting for the writer. Above it, acknowledged writes are
/// refused (503) before anything changes, and background bookkeeping is
/// dropped and counted.
pub const QUEUE_LIMIT: usize = 50_000;

/// Most operations kept for a retry after failed commits. A database that
/// stays unwritable for long loses the oldest background bookkeeping beyond
/// this; acknowledged writes were answered 503 and the clients retry.
const DIRTY_LIMIT: usize = 200_000;

/// Limits for the periodic trimming of history tables.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub stats_per_stream: usize,
    pub health_per_engine: usize,
}

enum Job {
    Write {
        ops: Vec<WriteOp>,
        ack: Option<oneshot::Sender<Result<(), (WriteFailure, String)>>>,
    },
    Trim {
        retention: Retention,
    },
    Flush {
        ack: oneshot::Sender<()>,
    },
    Expire {
        cutoff: Timestamp,
        budget: usize,
        ack: oneshot::Sender<Result<Expired, (WriteFailure, String)>>,
    },
    Vacuum {
        pages: u32,
        ack: oneshot::Sender<Result<VacuumStep, (WriteFailure, String)>>,
    },
    Checkpoint {
        ack: oneshot::Sender<()>,
    },
}

/// What one [`Store::expire_batch`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub streams: usize,
    pub snapshots: usize,
    /// No expired stream is left.
    pub done: bool,
}

/// What one [`Store::vacuum_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VacuumStep {
    /// Bytes given back to the file system.
    pub freed_bytes: u64,
    /// Free pages still inside the file.
    pub pages_left: u64,
}

/// The database's size and contents, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    pub main_bytes: u64,
    pub wal_bytes: u64,
    /// Pages free inside the file (what an incremental vacuum gives back).
    pub free_bytes: u64,
    /// Rows per table, in [`TABLES`] order (empty when not counted).
    pub rows: Vec<(&'static str, u64)>,
}

#[derive(Clone)]
pub struct Store {
    jobs: mpsc::UnboundedSender<Job>,
    /// Jobs sent and not yet taken by the writer: the queue's depth, kept
    /// here because it bounds the queue (the channel itself is unbounded so
    /// that sending never blocks under the registry lock).
    depth: Arc<AtomicUsize>,
    /// Background writes dropped because the queue was full.
    dropped: Arc<AtomicU64>,
    /// Write jobs sent whose changes are not on disk yet: queued, being
    /// committed, or kept after a failed commit for the next one.
    unsaved: Arc<AtomicUsize>,
    path: Arc<PathBuf>,
    /// Read-only connection for [`Store::measure`], opened on first use.
    reader: Arc<Mutex<Option<Connection>>>,
}

impl Store {
    /// Opens (creating if needed) the database, migrates it, loads the state and
    /// starts the writer thread.
    pub fn open(
        path: &Path,
        retention: Retention,
        ended_streams_max: usize,
    ) -> Result<(Store, Loaded), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        let fresh = conn.pragma_query_value(None, "page_count", |r| r.get::<_, i64>(0))? == 0;
        if fresh {
            // Takes effect with the first table; no VACUUM needed.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        configure(&conn)?;
        migrate(&mut conn)?;
        switch_to_incremental_vacuum(&conn, path);
        let loaded = load(&conn, retention, ended_streams_max)?;
        let checkpointer = Checkpointer::start(path)?;
        // The writer leaves checkpoints to the checkpointer, and takes one
        // itself only if the WAL grew far past what it should (the
        // checkpointer failing or starved).
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let unsaved = Arc::new(AtomicUsize::new(0));
        let writer_depth = depth.clone();
        let writer_unsaved = unsaved.clone();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                writer_loop(&mut conn, rx, &writer_depth, &writer_unsaved);
                // Every sender is gone: stop the checkpointer, then
                // checkpoint so the next start finds a compact file.
                checkpointer.stop();
                let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            })
            .map_err(StoreError::Thread)?;
        let dropped = Arc::new(AtomicU64::new(0));
        Ok((
            Store {
                jobs,
                depth,
                dropped,
                unsaved,
                path: Arc::new(path.to_path_buf()),
                reader: Arc::new(Mutex::new(None)),
            },
            loaded,
        ))
    }

    /// Queues `ops` without waiting (background bookkeeping: health checks, stats).
    /// Queue order is commit order, so callers that enqueue while holding the
    /// registry lock keep the database in the registry's order.
    pub fn enqueue(&self, ops: Vec<WriteOp>) {
        if ops.is_empty() {
            return;
        }
        if self.depth() >= QUEUE_LIMIT {
            if self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                tracing::warn!(
                    depth = self.depth(),
                    "the database is far behind; background bookkeeping is being dropped"
                );
            }
            return;
        }
        self.send(Job::Write { ops, ack: None });
    }

    fn send(&self, job: Job) -> bool {
        let write = matches!(job, Job::Write { .. });
        self.depth.fetch_add(1, Ordering::Relaxed);
        if write {
            self.unsaved.fetch_add(1, Ordering::Relaxed);
        }
        if self.jobs.send(job).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            if write {
                self.unsaved.fetch_sub(1, Ordering::Relaxed);
            }
            tracing::warn!("database writer has stopped; a write was dropped");
            return false;
        }
        true
    }

    /// Jobs waiting for the writer.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Background writes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether changes already made in memory are not on disk yet (queued,
    /// being committed, or kept after a failed commit). A command that finds
    /// nothing to change must then still wait for a commit before it answers
    /// 2xx: the state it confirms may be one of those changes (a retried
    /// `stream_ended` whose first attempt got 503).
    pub fn has_unsaved(&self) -> bool {
        self.unsaved.load(Ordering::Acquire) > 0
    }

    /// Fails when an acknowledged write could not be queued. Checked before
    /// a change is made, so that a refused change leaves memory untouched.
    pub fn ensure_room(&self) -> Result<(), StoreError> {
        let depth = self.depth();
        if depth >= QUEUE_LIMIT {
            return Err(StoreError::Backlog {
                depth,
                limit: QUEUE_LIMIT,
            });
        }
        Ok(())
    }

    /// Queues `ops` and returns a receiver that resolves once they are committed.
    /// Sending is synchronous so it can happen under the registry lock; the
    /// waiting happens after the lock is released.
    pub fn submit(&self, ops: Vec<WriteOp>) -> PendingWrite {
        let (ack, rx) = oneshot::channel();
        let sent = self.send(Job::Write {
            ops,
            ack: Some(ack),
        });
        PendingWrite {
            rx: sent.then_some(rx),
        }
    }

    pub fn trim(&self, retention: Retention) {
        self.send(Job::Trim { retention });
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let (ack, rx) = oneshot::channel();
        if self.send(Job::Flush { ack }) {
            let _ = rx.await;
        }
    }

    /// Removes ended streams that ended before `cutoff`, oldest first, with
    /// their stat snapshots: at most `budget` snapshot rows (and `budget`
    /// streams) in one transaction, so that the writes queued meanwhile wait
    /// for one small batch only. Call again until [`Expired::done`].
    pub async fn expire_batch(
        &self,
        cutoff: Timestamp,
        budget: usize,
    ) -> Result<Expired, StoreError> {
        let (ack, rx) = oneshot::channel();
        if !self.send(Job::Expire {
            cutoff,
            budget: budget.max(1),
            ack,
        }) {
            return Err(StoreError::Closed);
        }
        match rx.await {
            Ok(Ok(expired)) => Ok(expired),
            Ok(Err((kind, message))) => Err(StoreError::Write { kind, message }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Gives up to `pages` free pages back to the file system (the file
    /// shrinks).
    pub async fn vacuum_step(&self, pages: u32) -> Result<VacuumStep, StoreError> {
        let (ack, rx) = oneshot::channel();
        if !self.send(Job::Vacuum {
            pages: pages.max(1),
            ack,
        }) {
            return Err(StoreError::Closed);
        }
        match rx.await {
            Ok(Ok(left)) => Ok(left),
            Ok(Err((kind, message))) => Err(StoreError::Write { kind, message }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Copies the WAL into the main file and truncates the WAL (best effort:
    /// a reader in the middle of a query makes it a partial checkpoint).
    pub async fn checkpoint(&self) {
        let (ack, rx) = oneshot::channel();
        if self.send(Job::Checkpoint { ack }) {
            let _ = rx.await;
        }
    }

    /// File sizes and row counts, read on a connection of its own (never
    /// through the writer): counting a large table takes a while, and the
    /// writer must not wait for it.
    /// `rows` empty unless `count_rows`.
    pub async fn measure(&self, count_rows: bool) -> Result<Measure, StoreError> {
        let path = self.path.clone();
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || measure(&path, &reader, count_rows))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

fn measure(
    path: &Path,
    reader: &Mutex<Option<Connection>>,
    count_rows: bool,
) -> Result<Measure, StoreError> {
    let mut guard = reader.lock();
    if guard.is_none() {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        *guard = Some(conn);
    }
    let Some(conn) = guard.as_ref() else {
        return Err(StoreError::Closed);
    };
    let mut rows = Vec::with_capacity(TABLES.len());
    for table in TABLES.into_iter().filter(|_| count_rows) {
        let count: i64 =
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        rows.push((table, count.max(0) as u64));
    }
    let free_pages: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(Measure {
        main_bytes: size(path),
        wal_bytes: size(Path::new(&wal)),
        free_bytes: (free_pages.max(0) * page_size.max(0)) as u64,
        rows,
    })
}

/// A database created before incremental auto-vacuum keeps freed pages
/// forever (reused, never returned). Switching needs one full VACUUM, which
/// rewrites the file (time proportional to its size, and as much free disk
/// space again): done once, at start, before anything is served. A failure
/// (disk full) is not fatal: the database works as before, only without
/// giving space back, and the switch is tried again at the next start.
fn switch_to_incremental_vacuum(conn: &Connection, path: &Path) {
    let mode = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0))
        .unwrap_or(AUTO_VACUUM_INCREMENTAL);
    if mode == AUTO_VACUUM_INCREMENTAL {
        return;
    }
    let before = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        db = %path.display(),
        bytes = before,
        "switching the database to incremental auto-vacuum: one-time VACUUM, the service starts when it is done"
    );
    let started = std::time::Instant::now();
    let result = conn
        .pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .and_then(|()| conn.execute_batch("VACUUM"));
    let took_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => {
            let after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            tracing::info!(
                took_ms,
                bytes_before = before,
                bytes_after = after,
                "database switched to incremental auto-vacuum"
            );
        }
        Err(error) => tracing::warn!(
            %error,
            took_ms,
            "could not switch the database to incremental auto-vacuum (it needs free disk space as large as the file); freed space is reused but not returned; trying again at the next start"
        ),
    }
}

/// A write that has been queued; await [`PendingWrite::committed`] before answering.
pub struct PendingWrite {
    rx: Option<oneshot::Receiver<Result<(), (WriteFailure, String)>>>,
}

impl PendingWrite {
    pub async fn committed(self) -> Result<(), StoreError> {
        let rx = self.rx.ok_or(StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, message))) => Err(StoreError::Write { kind, message }),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers never block the writer; NORMAL: a commit is durable against a
    // process crash (the WAL is written before COMMIT returns), fsync happens at
    // checkpoints. A power cut may lose the last commits, never corrupt the file.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A checkpoint that finds the WAL larger than this (after a long read,
    // a large clean-up step) truncates it back: the file does not keep its
    // high-water mark.
    conn.pragma_update(None, "journal_size_limit", 32 * 1024 * 1024)?;
    // Another process holding the lock (a backup, a sqlite3 shell) gets this
    // long; then the write fails and the API says 503 instead of hanging.
    // Writes queued meanwhile wait for the next attempt, so keep it short.
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    let upgrade = version > 0 && version < MIGRATIONS.len();
    if upgrade {
        // 0004 rewrites the stat snapshots (1.3 million rows: 1.2 s here)
        // and needs free disk about the new table's size meanwhile.
        tracing::info!(
            from = version,
            to = MIGRATIONS.len(),
            "migrating the database; this can take a minute on a large file"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "database migrated");
    }
    let incremental = conn.pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0))?
        == AUTO_VACUUM_INCREMENTAL;
    if upgrade && incremental {
        // What a rewritten table left free goes back to the file system now,
        // not at the next clean-up (never, with STREAMS_RETENTION_DAYS=0).
        // An older file is switched to incremental vacuum by a full VACUUM
        // right after this, which does the same.
        let step = vacuum_step(conn, u32::MAX)?;
        tracing::info!(
            freed_bytes = step.freed_bytes,
            "space the migration left free given back"
        );
    }
    Ok(())
}

/// How often the checkpointer copies committed pages from the WAL into the
/// database file. Every group commit rewrites whole pages, about 25 MB/s of
/// WAL at 5,000 engines checked every 2 s: at 1 s the WAL peaked at 66 MB,
/// near the writer's fallback; at 500 ms it stays near its 32 MiB limit.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// WAL pages (4 KiB) past which the writer checkpoints by itself: far above
/// what the checkpointer lets build up, so it happens only when the
/// checkpointer cannot do its job.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// Checkpoints the WAL from a connection and thread of its own, so that
/// acknowledged writes never wait for one. SQLite's automatic checkpoint
/// runs inside the commit that crosses 1,000 WAL pages: it copies the pages
/// into the database file and syncs both files, and every write queued
/// behind that commit waits for the syncs (0.5 to 0.9 s seen on a loaded
/// machine). A PASSIVE checkpoint here runs beside the writer's commits
/// without blocking them; the writer then starts the WAL over from its
/// beginning at its next commit once everything was copied.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never checkpoints on its own commits (it makes none), and waits
        // for nobody: a checkpoint that finds the database busy is skipped
        // and the next one takes over.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                match stopped.recv_timeout(CHECKPOINT_EVERY) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let started = std::time::Instant::now();
                let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                });
                match result {
                    Ok((wal_pages, copied)) => {
                        if started.elapsed() >= SLOW_JOB {
                            tracing::info!(
                                took_ms = started.elapsed().as_millis() as u64,
                                wal_pages,
                                copied,
                                "WAL checkpoint was slow (writes did not wait for it)"
                            );
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "WAL checkpoint failed; retried shortly")
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn writer_loop(
    conn: &mut Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    depth: &AtomicUsize,
    unsaved: &AtomicUsize,
) {
    // Batches whose commit failed, oldest first. Their changes are already in
    // memory, so they are written again, ahead of newer ones, with the next
    // commit: memory and disk converge as soon as the database takes writes.
    let mut dirty: VecDeque<Vec<WriteOp>> = VecDeque::new();
    let mut dirty_ops = 0usize;
    // Owners whose history grew since the last trim: only they can be over
    // their limit, so a trim costs what was written, not the table's size.
    let mut touched = Touched::default();
    while let Some(first) = jobs.blocking_recv() {
        let mut writes = Vec::new();
        let mut acks = Vec::new();
        let mut others = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            depth.fetch_sub(1, Ordering::Relaxed);
            match job {
                Job::Write { ops, ack } => {
                    writes.push(ops);
                    if let Some(ack) = ack {
                        acks.push(ack);
                    }
                }
                other => others.push(other),
            }
            if writes.len() < MAX_GROUP {
                next = jobs.try_recv().ok();
            }
        }
        // A trim or flush with nothing new to write retries what failed.
        let commit_started = std::time::Instant::now();
        let committing = writes.iter().map(Vec::len).sum::<usize>();
        if !writes.is_empty() || !dirty.is_empty() {
            let retried = dirty.len();
            let result = apply_all(conn, dirty.iter().chain(writes.iter()), &mut touched)
                .map_err(|e| (WriteFailure::of(&e), e.to_string()));
            match &result {
                Ok(()) => {
                    if retried > 0 {
                        tracing::info!(batches = retried, "writes that had failed are saved now");
                    }
                    // Before the acks: whoever is answered 2xx next sees
                    // these as saved.
                    unsaved.fetch_sub(retried + writes.len(), Ordering::Release);
                    dirty.clear();
                    dirty_ops = 0;
                }
                Err((kind, message)) => {
                    if dirty.is_empty() {
                        tracing::error!(error = %message, kind = kind.as_str(), "database write failed; the changes are kept and written again with the next commit");
                    }
                    for batch in writes {
                        dirty_ops += batch.len();
                        dirty.push_back(batch);
                    }
                    while dirty_ops > DIRTY_LIMIT {
                        match dirty.pop_front() {
                            Some(old) => {
                                dirty_ops -= old.len();
                                unsaved.fetch_sub(1, Ordering::Release);
                            }
                            None => break,
                        }
                    }
                }
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
        report_slow("commit", committing, commit_started);
        for job in others {
            let started = std::time::Instant::now();
            let kind = job.kind();
            match job {
                Job::Trim { retention } => {
                    if let Err(error) = trim(conn, retention, &mut touched) {
                        tracing::warn!(%error, "trimming history tables failed");
                    }
                }
                Job::Flush { ack } => {
                    let _ = ack.send(());
                }
                Job::Expire {
                    cutoff,
                    budget,
                    ack,
                } => {
                    let result = expire(conn, cutoff, budget)
                        .map_err(|e| (WriteFailure::of(&e), e.to_string()));
                    let _ = ack.send(result);
                }
                Job::Vacuum { pages, ack } => {
                    let result =
                        vacuum_step(conn, pages).map_err(|e| (WriteFailure::of(&e), e.to_string()));
                    let _ = ack.send(result);
                }
                Job::Checkpoint { ack } => {
                    if let Err(error) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
                        tracing::debug!(%error, "checkpoint failed");
                    }
                    let _ = ack.send(());
                }
                Job::Write { .. } => {}
            }
            report_slow(kind, 0, started);
        }
    }
}

/// A job that kept the writer (and so every queued write) waiting longer
/// than this is logged: it is what acknowledged writes wait for.
const SLOW_JOB: std::time::Duration = std::time::Duration::from_millis(250);

fn report_slow(job: &'static str, ops: usize, started: std::time::Instant) {
    let took = started.elapsed();
    if took >= SLOW_JOB {
        tracing::info!(
            job,
            ops,
            took_ms = took.as_millis() as u64,
            "a database job held the writer"
        );
    }
}

impl Job {
    fn kind(&self) -> &'static str {
        match self {
            Job::Write { .. } => "write",
            Job::Trim { .. } => "trim",
            Job::Flush { .. } => "flush",
            Job::Expire { .. } => "expire",
            Job::Vacuum { .. } => "vacuum",
            Job::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// History owners written since the last trim.
#[derive(Default)]
struct Touched {
    streams: HashSet<String>,
    engines: HashSet<String>,
}

impl Touched {
    fn note(&mut self, op: &WriteOp) {
        // Checked before inserting so that a known owner costs no allocation.
        let (set, owner) = match op {
            WriteOp::StatSnapshot { stream_id, .. } => (&mut self.streams, stream_id),
            WriteOp::HealthCheck { engine_id, .. }
            | WriteOp::HealthTransition { engine_id, .. } => (&mut self.engines, engine_id),
            _ => return,
        };
        if !set.contains(owner) {
            set.insert(owner.clone());
        }
    }
}

fn apply_all<'a>(
    conn: &mut Connection,
    batches: impl Iterator<Item = &'a Vec<WriteOp>>,
    touched: &mut Touched,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in batches.flatten() {
        apply(&tx, op)?;
        touched.note(op);
    }
    tx.commit()
}

fn apply(tx: &Transaction<'_>, op: &WriteOp) -> rusqlite::Result<()> {
    match op {
        WriteOp::UpsertEngine(e) => {
            let labels = serde_json::to_string(&e.labels).unwrap_or_else(|_| "{}".into());
            tx.prepare_cached(
                "INSERT INTO engines (container_id, container_name, host, port, labels, runtime,
                    first_seen, last_seen, health_status, last_health_check, health_since,
                    consecutive_failures, last_health_error, last_latency_ms, last_stream_usage,
                    streams_total, busy_ms_closed, busy_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                 ON CONFLICT (container_id) DO UPDATE SET
                    container_name = excluded.container_name, host = excluded.host,
                    port = excluded.port, labels = excluded.labels, runtime = excluded.runtime,
                    first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                    health_status = excluded.health_status,
                    last_health_check = excluded.last_health_check,
                    health_since = excluded.health_since,
                    consecutive_failures = excluded.consecutive_failures,
                    last_health_error = excluded.last_health_error,
                    last_latency_ms = excluded.last_latency_ms,
                    last_stream_usage = excluded.last_stream_usage,
                    streams_total = excluded.streams_total,
                    busy_ms_closed = excluded.busy_ms_closed, busy_since = excluded.busy_since",
            )?
            .execute(params![
                e.container_id,
                e.container_name,
                e.host,
                e.port,
                labels,
                e.runtime.as_str(),
                e.first_seen.millis(),
                e.last_seen.millis(),
                e.health.status.as_str(),
                e.health.last_check.map(Timestamp::millis),
                e.health.status_since.map(Timestamp::millis),
                e.health.consecutive_failures,
                e.health.last_error,
                e.health.last_latency_ms,
                e.usage.last_stream_usage.map(Timestamp::millis),
                e.usage.streams_total as i64,
                e.usage.busy_ms_closed,
                e.usage.busy_since.map(Timestamp::millis),
            ])?;
        }
        WriteOp::EngineHealth {
            engine_id,
            health: h,
        } => {
            tx.prepare_cached(
                "UPDATE engines SET health_status = ?2, last_health_check = ?3,
                    health_since = ?4, consecutive_failures = ?5, last_health_error = ?6,
                    last_latency_ms = ?7
                 WHERE container_id = ?1",
            )?
            .execute(params![
                engine_id,
                h.status.as_str(),
                h.last_check.map(Timestamp::millis),
                h.status_since.map(Timestamp::millis),
                h.consecutive_failures,
                h.last_error,
                h.last_latency_ms,
            ])?;
        }
        WriteOp::DeleteEngine(id) => {
            tx.prepare_cached("DELETE FROM engines WHERE container_id = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM health_checks WHERE engine_id = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM health_transitions WHERE engine_id = ?1")?
                .execute([id])?;
        }
        WriteOp::UpsertStream(s) => {
            tx.prepare_cached(
                "INSERT INTO streams (id, key_type, key, container_id, playback_session_id,
                    stat_url, command_url, is_live, started_at, ended_at, status, end_reason,
                    failovers, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                    (SELECT IFNULL(MAX(seq), 0) + 1 FROM streams))
                 ON CONFLICT (id) DO UPDATE SET
                    key_type = excluded.key_type, key = excluded.key,
                    container_id = excluded.container_id,
                    playback_session_id = excluded.playback_session_id,
                    stat_url = excluded.stat_url, command_url = excluded.command_url,
                    is_live = excluded.is_live, started_at = excluded.started_at,
                    ended_at = excluded.ended_at, status = excluded.status,
                    end_reason = excluded.end_reason, failovers = excluded.failovers",
            )?
            .execute(params![
                s.id,
                s.key_type.as_str(),
                s.key,
                s.container_id,
                s.playback_session_id,
                s.stat_url,
                s.command_url,
                s.is_live,
                s.started_at.millis(),
                s.ended_at.map(Timestamp::millis),
                s.status.as_str(),
                s.end_reason,
                serde_json::to_string(&s.failovers).unwrap_or_else(|_| "[]".into()),
            ])?;
        }
        WriteOp::StatSnapshot {
            stream_id,
            snapshot: s,
        } => {
            tx.prepare_cached(
                "INSERT INTO stat_snapshots (stream, ts, peers, speed_down, speed_up,
                    downloaded, uploaded, status)
                 SELECT seq, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM streams WHERE id = ?1",
            )?
            .execute(params![
                stream_id,
                s.ts.millis(),
                s.peers,
                s.speed_down,
                s.speed_up,
                s.downloaded,
                s.uploaded,
                s.status
            ])?;
        }
        WriteOp::HealthCheck { engine_id, check } => {
            tx.prepare_cached(
                "INSERT INTO health_checks (engine_id, ts, ok, source, latency_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                engine_id,
                check.ts.millis(),
                check.ok,
                check.source.as_str(),
                check.latency_ms,
                check.error
            ])?;
        }
        WriteOp::HealthTransition {
            engine_id,
            transition: t,
        } => {
            tx.prepare_cached(
                "INSERT INTO health_transitions (engine_id, ts, from_status, to_status, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                engine_id,
                t.ts.millis(),
                t.from.as_str(),
                t.to.as_str(),
                t.reason
            ])?;
        }
    }
    Ok(())
}

/// Keeps the newest rows of each history table per owner, looking only at
/// the owners written since the last trim. An owner not written to again
/// after a restart keeps at most what one trim interval added over its limit.
fn trim(
    conn: &mut Connection,
    retention: Retention,
    touched: &mut Touched,
) -> rusqlite::Result<()> {
    if touched.streams.is_empty() && touched.engines.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        // Everything of the owner at or below its (limit+1)-th newest row.
        let keep = |table: &str, column: &str, owner: &str| {
            tx.prepare(&format!(
                "DELETE FROM {table} WHERE {column} = {owner} AND id <= (
                    SELECT id FROM {table} WHERE {column} = {owner} ORDER BY id DESC LIMIT 1 OFFSET ?2)"
            ))
        };
        let mut stats = keep("stat_snapshots", "stream", STREAM_SEQ)?;
        for id in &touched.streams {
            stats.execute(params![id, retention.stats_per_stream as i64])?;
        }
        let mut checks = keep("health_checks", "engine_id", "?1")?;
        let mut transitions = keep("health_transitions", "engine_id", "?1")?;
        for id in &touched.engines {
            checks.execute(params![id, retention.health_per_engine as i64])?;
            transitions.execute(params![id, retention.health_per_engine as i64])?;
        }
    }
    tx.commit()?;
    touched.streams.clear();
    touched.engines.clear();
    Ok(())
}

/// Streams looked at per expiry batch (their snapshots are bounded by the
/// budget, not by this).
const EXPIRE_STREAMS_PER_BATCH: usize = 256;

/// One batch of the retention clean-up: the oldest ended streams that ended
/// before `cutoff` lose up to `budget` snapshot rows; those left with none
/// are removed. A stream is removed only after all its snapshots, so a
/// batch cut short by the budget leaves nothing orphaned.
fn expire(conn: &mut Connection, cutoff: Timestamp, budget: usize) -> rusqlite::Result<Expired> {
    let tx = conn.transaction()?;
    let mut expired = Expired::default();
    let found;
    {
        let mut oldest = tx.prepare_cached(
            "SELECT id FROM streams WHERE status = 'ended' AND ended_at < ?1
             ORDER BY ended_at LIMIT ?2",
        )?;
        let ids = oldest
            .query_map(
                params![cutoff.millis(), EXPIRE_STREAMS_PER_BATCH.min(budget) as i64],
                |r| r.get::<_, String>(0),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        found = ids.len();
        let mut snapshots = tx.prepare_cached(&format!(
            "DELETE FROM stat_snapshots WHERE id IN (
                SELECT id FROM stat_snapshots WHERE stream = {STREAM_SEQ} LIMIT ?2)"
        ))?;
        let mut stream = tx.prepare_cached("DELETE FROM streams WHERE id = ?1")?;
        let mut left = budget;
        for id in &ids {
            let removed = snapshots.execute(params![id, left as i64])?;
            expired.snapshots += removed;
            if removed == left {
                // The budget is spent; the stream may have more.
                left = 0;
                break;
            }
            left -= removed;
            expired.streams += stream.execute([id])?;
            if left == 0 {
                break;
            }
        }
        expired.done = left > 0 && found < EXPIRE_STREAMS_PER_BATCH.min(budget);
    }
    tx.commit()?;
    Ok(expired)
}

/// Returns up to `pages` free pages to the file system.
fn vacuum_step(conn: &Connection, pages: u32) -> rusqlite::Result<VacuumStep> {
    let free = |conn: &Connection| -> rusqlite::Result<u64> {
        let n: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        Ok(n.max(0) as u64)
    };
    let before = free(conn)?;
    if before > 0 {
        // A pragma with an argument: run it to its end.
        conn.pragma(None, "incremental_vacuum", pages, |_| Ok(()))?;
    }
    let left = free(conn)?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok(VacuumStep {
        freed_bytes: before.saturating_sub(left) * page_size.max(0) as u64,
        pages_left: left,
    })
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

fn load(
    conn: &Connection,
    retention: Retention,
    ended_streams_max: usize,
) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();

    let mut stmt = conn.prepare(
        "SELECT container_id, container_name, host, port, labels, runtime, first_seen, last_seen,
                health_status, last_health_check, health_since, consecutive_failures,
                last_health_error, last_latency_ms, last_stream_usage, streams_total,
                busy_ms_closed, busy_since
         FROM engines ORDER BY container_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let labels: String = r.get(4)?;
        let runtime: String = r.get(5)?;
        let status: String = r.get(8)?;
        Ok(Engine {
            container_id: r.get(0)?,
            container_name: r.get(1)?,
            host: r.get(2)?,
            port: r.get(3)?,
            labels: serde_json::from_str::<BTreeMap<String, String>>(&labels).unwrap_or_default(),
            runtime: RuntimeKind::parse(&runtime).unwrap_or(RuntimeKind::External),
            first_seen: Timestamp::from_millis(r.get(6)?),
            last_seen: Timestamp::from_millis(r.get(7)?),
            health: EngineHealth {
                status: HealthStatus::parse(&status).unwrap_or(HealthStatus::Unknown),
                last_check: ts(r.get(9)?),
                status_since: ts(r.get(10)?),
                consecutive_failures: r.get(11)?,
                last_error: r.get(12)?,
                last_latency_ms: r.get(13)?,
            },
            usage: EngineUsage {
                last_stream_usage: ts(r.get(14)?),
                streams_total: r.get::<_, i64>(15)?.max(0) as u64,
                busy_ms_closed: r.get(16)?,
                busy_since: ts(r.get(17)?),
            },
        })
    })?;
    for row in rows {
        loaded.engines.push(row?);
    }

    // Active streams all come back; of the ended ones only the newest.
    let mut stmt = conn.prepare(
        "SELECT id, key_type, key, container_id, playback_session_id, stat_url, command_url,
                is_live, started_at, ended_at, status, end_reason, failovers
         FROM streams WHERE status = 'started'
         UNION ALL
         SELECT * FROM (
            SELECT id, key_type, key, container_id, playback_session_id, stat_url, command_url,
                   is_live, started_at, ended_at, status, end_reason, failovers
            FROM streams WHERE status = 'ended' ORDER BY ended_at DESC LIMIT ?1)",
    )?;
    let rows = stmt.query_map([ended_streams_max as i64], |r| {
        let key_type: String = r.get(1)?;
        let status: String = r.get(10)?;
        let key_type = KeyType::parse(&key_type).unwrap_or(KeyType::ContentId);
        let key: String = r.get(2)?;
        Ok(Stream {
            id: r.get(0)?,
            play: crate::domain::PlayPaths::for_key(key_type, &key),
            key_type,
            key,
            container_id: r.get(3)?,
            playback_session_id: r.get(4)?,
            stat_url: r.get(5)?,
            command_url: r.get(6)?,
            is_live: r.get(7)?,
            started_at: Timestamp::from_millis(r.get(8)?),
            ended_at: ts(r.get(9)?),
            status: StreamStatus::parse(&status).unwrap_or(StreamStatus::Ended),
            end_reason: r.get(11)?,
            viewers: 0,
            viewers_by_kind: Default::default(),
            failovers: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
        })
    })?;
    for row in rows {
        loaded.streams.push(row?);
    }

    let mut stmt = conn.prepare(&format!(
        "SELECT ts, peers, speed_down, speed_up, downloaded, uploaded, status FROM (
            SELECT * FROM stat_snapshots WHERE stream = {STREAM_SEQ} ORDER BY id DESC LIMIT ?2)
         ORDER BY id"
    ))?;
    for stream in &loaded.streams {
        let rows = stmt.query_map(params![stream.id, retention.stats_per_stream as i64], |r| {
            Ok(StatSnapshot {
                ts: Timestamp::from_millis(r.get(0)?),
                peers: r.get(1)?,
                speed_down: r.get(2)?,
                speed_up: r.get(3)?,
                downloaded: r.get(4)?,
                uploaded: r.get(5)?,
                status: r.get(6)?,
            })
        })?;
        let history = rows.collect::<Result<VecDeque<_>, _>>()?;
        if !history.is_empty() {
            loaded.stats.insert(stream.id.clone(), history);
        }
    }

    let mut checks = conn.prepare(
        "SELECT ts, ok, source, latency_ms, error FROM (
            SELECT * FROM health_checks WHERE engine_id = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY id",
    )?;
    let mut transitions = conn.prepare(
        "SELECT ts, from_status, to_status, reason FROM (
            SELECT * FROM health_transitions WHERE engine_id = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY id",
    )?;
    let limit = retention.health_per_engine as i64;
    for engine in &loaded.engines {
        let id = &engine.container_id;
        let rows = checks.query_map(params![id, limit], |r| {
            let source: String = r.get(2)?;
            Ok(HealthCheck {
                ts: Timestamp::from_millis(r.get(0)?),
                ok: r.get(1)?,
                source: CheckSource::parse(&source).unwrap_or(CheckSource::Probe),
                latency_ms: r.get(3)?,
                error: r.get(4)?,
            })
        })?;
        loaded
            .checks
            .insert(id.clone(), rows.collect::<Result<_, _>>()?);
        let rows = transitions.query_map(params![id, limit], |r| {
            let from: String = r.get(1)?;
            let to: String = r.get(2)?;
            Ok(HealthTransition {
                ts: Timestamp::from_millis(r.get(0)?),
                from: HealthStatus::parse(&from).unwrap_or(HealthStatus::Unknown),
                to: HealthStatus::parse(&to).unwrap_or(HealthStatus::Unknown),
                reason: r.get(3)?,
            })
        })?;
        loaded
            .transitions
            .insert(id.clone(), rows.collect::<Result<_, _>>()?);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETENTION: Retention = Retention {
        stats_per_stream: 3,
        health_per_engine: 2,
    };

    fn engine(id: &str) -> Engine {
        let now = Timestamp::from_millis(1_000);
        Engine {
            container_id: id.into(),
            container_name: Some("engine-1".into()),
            host: "127.0.0.1".into(),
            port: 19001,
            labels: BTreeMap::from([("a".into(), "b".into())]),
            runtime: RuntimeKind::External,
            first_seen: now,
            last_seen: now,
            health: EngineHealth::default(),
            usage: EngineUsage {
                last_stream_usage: Some(now),
                streams_total: 4,
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_history_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/orch.db");
        let (store, loaded) = Store::open(&path, RETENTION, 10).unwrap();
        assert!(loaded.engines.is_empty());

        let mut ops = vec![
            WriteOp::UpsertEngine(Box::new(engine("e1"))),
            WriteOp::UpsertStream(Box::new(stream("s1", 5, None))),
        ];
        for i in 0..5 {
            ops.push(WriteOp::StatSnapshot {
                stream_id: "s1".into(),
                snapshot: StatSnapshot {
                    ts: Timestamp::from_millis(i),
                    peers: Some(i),
                    speed_down: None,
                    speed_up: None,
                    downloaded: None,
                    uploaded: None,
                    status: Some("dl".into()),
                },
            });
        }
        ops.push(WriteOp::UpsertStream(Box::new(Stream {
            id: "s1".into(),
            key_type: KeyType::Infohash,
            key: "abc".into(),
            container_id: "e1".into(),
            playback_session_id: None,
            stat_url: None,
            command_url: None,
            is_live: true,
            started_at: Timestamp::from_millis(5),
            ended_at: None,
            status: StreamStatus::Started,
            end_reason: None,
            viewers: 0,
            viewers_by_kind: Default::default(),
            failovers: Vec::new(),
            play: None,
        })));
        store.submit(ops).committed().await.unwrap();
        store.trim(RETENTION);
        store.flush().await;
        drop(store);

        let (_store, loaded) = Store::open(&path, RETENTION, 10).unwrap();
        assert_eq!(loaded.engines, vec![engine("e1")]);
        assert_eq!(loaded.streams.len(), 1);
        let peers: Vec<_> = loaded.stats["s1"].iter().map(|s| s.peers).collect();
        assert_eq!(peers, vec![Some(2), Some(3), Some(4)]);
    }

    fn stream(id: &str, started: i64, ended: Option<i64>) -> Stream {
        Stream {
            id: id.into(),
            key_type: KeyType::Infohash,
            key: id.into(),
            container_id: "e1".into(),
            playback_session_id: None,
            stat_url: None,
            command_url: None,
            is_live: true,
            started_at: Timestamp::from_millis(started),
            ended_at: ended.map(Timestamp::from_millis),
            status: if ended.is_some() {
                StreamStatus::Ended
            } else {
                StreamStatus::Started
            },
            end_reason: None,
            viewers: 0,
            viewers_by_kind: Default::default(),
            failovers: Vec::new(),
            play: None,
        }
    }

    fn snapshots(stream_id: &str, n: i64) -> Vec<WriteOp> {
        (0..n)
            .map(|i| WriteOp::StatSnapshot {
                stream_id: stream_id.into(),
                snapshot: StatSnapshot {
                    ts: Timestamp::from_millis(i),
                    peers: Some(i),
                    speed_down: Some(1000),
                    speed_up: Some(10),
                    downloaded: Some(i * 1000),
                    uploaded: Some(i),
                    status: Some("dl".into()),
                },
            })
            .collect()
    }

    fn count(path: &Path, sql: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let (store, _) = Store::open(&path, RETENTION, 10).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        // About 1 MiB of rows and 4 MiB of WAL: over SQLite's default
        // automatic checkpoint (1,000 pages), far below the writer's own
        // (16,384). Until a checkpoint, the file holds its first page only.
        store
            .submit(vec![WriteOp::UpsertStream(Box::new(stream("s", 0, None)))])
            .committed()
            .await
            .unwrap();
        for _ in 0..10 {
            store
                .submit(snapshots("s", 2_000))
                .committed()
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() < before + (512 << 10) {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes (from {before}): nothing checkpointed the WAL",
                size()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn expiry_removes_old_ended_streams_and_their_snapshots_in_small_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let (store, _) = Store::open(&path, RETENTION, 10).unwrap();
        let mut ops = Vec::new();
        for (id, started, ended) in [
            ("old-1", 100, Some(200)),
            ("old-2", 300, Some(400)),
            ("old-3", 500, Some(600)),
            ("recent", 700, Some(2_000)),
            // Started long ago and still playing: never expires.
            ("playing", 100, None),
        ] {
            ops.push(WriteOp::UpsertStream(Box::new(stream(id, started, ended))));
            ops.extend(snapshots(id, 3));
        }
        store.submit(ops).committed().await.unwrap();

        let cutoff = Timestamp::from_millis(1_000);
        let mut batches = Vec::new();
        loop {
            let batch = store.expire_batch(cutoff, 4).await.unwrap();
            batches.push(batch);
            if batch.done {
                break;
            }
            assert!(batches.len() < 10, "{batches:?}");
        }
        assert!(batches.iter().all(|b| b.snapshots <= 4), "{batches:?}");
        assert_eq!(batches.iter().map(|b| b.snapshots).sum::<usize>(), 9);
        assert_eq!(batches.iter().map(|b| b.streams).sum::<usize>(), 3);
        assert!(batches.len() >= 3, "{batches:?}");

        let (_store, loaded) = {
            drop(store);
            Store::open(&path, RETENTION, 10).unwrap()
        };
        let mut ids: Vec<_> = loaded.streams.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["playing", "recent"]);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM stat_snapshots"), 6);
        assert_eq!(
            count(
                &path,
                "SELECT COUNT(*) FROM stat_snapshots WHERE stream NOT IN (SELECT seq FROM streams)"
            ),
            0,
            "no snapshot outlives its stream"
        );
    }

    #[tokio::test]
    async fn a_version_3_database_keeps_its_snapshots_now_keyed_by_stream_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute_batch(
                "INSERT INTO streams (id, key_type, key, container_id, is_live, started_at, status)
                 VALUES ('a', 'infohash', 'k', 'e', 1, 1, 'started'),
                        ('b', 'infohash', 'k', 'e', 1, 2, 'started');
                 INSERT INTO stat_snapshots (stream_id, ts, peers) VALUES
                    ('a', 1, 1), ('b', 2, 2), ('a', 3, 3), ('gone', 4, 4), ('a', 5, 5);",
            )
            .unwrap();
        }
        let (store, loaded) = Store::open(&path, RETENTION, 10).unwrap();
        let peers = |stream: &str| -> Vec<Option<i64>> {
            loaded.stats[stream].iter().map(|s| s.peers).collect()
        };
        assert_eq!(peers("a"), [Some(1), Some(3), Some(5)]);
        assert_eq!(peers("b"), [Some(2)]);
        assert_eq!(
            count(
                &path,
                "SELECT COUNT(*) FROM pragma_table_info('stat_snapshots') WHERE name = 'stream_id'"
            ),
            0,
            "the id column is gone"
        );
        assert_eq!(
            count(&path, "SELECT COUNT(*) FROM stat_snapshots"),
            4,
            "the snapshot of no stream is left behind"
        );
        // New streams and snapshots after the migration.
        let mut ops = vec![WriteOp::UpsertStream(Box::new(stream("c", 6, None)))];
        ops.extend(snapshots("c", 2));
        ops.extend(snapshots("a", 1));
        store.submit(ops).committed().await.unwrap();
        drop(store);
        let (_store, loaded) = Store::open(&path, RETENTION, 10).unwrap();
        assert_eq!(loaded.stats["c"].len(), 2);
        assert_eq!(loaded.stats["a"].len(), 3, "at most stats_per_stream");
        assert_eq!(loaded.stats["a"].back().unwrap().peers, Some(0));
        assert_eq!(
            count(&path, "SELECT COUNT(DISTINCT seq) FROM streams"),
            3,
            "every stream has its own number"
        );
    }

    #[tokio::test]
    async fn trimming_keeps_the_newest_rows_of_each_owner_written_since_the_last_trim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let (store, _) = Store::open(&path, RETENTION, 10).unwrap();
        let mut ops = vec![
            WriteOp::UpsertStream(Box::new(stream("a", 0, None))),
            WriteOp::UpsertStream(Box::new(stream("b", 0, None))),
        ];
        ops.extend(snapshots("a", 6));
        ops.extend(snapshots("b", 2));
        for i in 0..5 {
            ops.push(WriteOp::HealthCheck {
                engine_id: "e1".into(),
                check: HealthCheck {
                    ts: Timestamp::from_millis(i),
                    ok: true,
                    source: CheckSource::Probe,
                    latency_ms: Some(1.0),
                    error: None,
                },
            });
        }
        store.submit(ops).committed().await.unwrap();
        store.trim(RETENTION);
        store.flush().await;
        let per = |sql: &str| count(&path, sql);
        assert_eq!(
            per("SELECT COUNT(*) FROM stat_snapshots WHERE stream = (SELECT seq FROM streams WHERE id = 'a')"),
            3
        );
        assert_eq!(
            per("SELECT MIN(peers) FROM stat_snapshots WHERE stream = (SELECT seq FROM streams WHERE id = 'a')"),
            3
        );
        assert_eq!(
            per("SELECT COUNT(*) FROM stat_snapshots WHERE stream = (SELECT seq FROM streams WHERE id = 'b')"),
            2
        );
        assert_eq!(per("SELECT COUNT(*) FROM health_checks"), 2);
    }

    #[tokio::test]
    async fn an_old_database_switches_to_incremental_vacuum_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        {
            // As the versions before incremental auto-vacuum created it.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch("CREATE TABLE t (x)").unwrap();
            let mode: i64 = conn
                .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, 0);
            conn.execute_batch("DROP TABLE t").unwrap();
        }
        let (store, _) = Store::open(&path, RETENTION, 10).unwrap();
        assert_eq!(count(&path, "PRAGMA auto_vacuum"), 2);

        let mut ops = Vec::new();
        for i in 0..40 {
            let id = format!("s{i}");
            ops.push(WriteOp::UpsertStream(Box::new(stream(&id, 1, Some(2)))));
            ops.extend(snapshots(&id, 100));
        }
        store.submit(ops).committed().await.unwrap();
        store.checkpoint().await;
        let full = std::fs::metadata(&path).unwrap().len();
        while !store
            .expire_batch(Timestamp::from_millis(10), 500)
            .await
            .unwrap()
            .done
        {}
        let mut freed = 0;
        loop {
            let step = store.vacuum_step(8).await.unwrap();
            freed += step.freed_bytes;
            if step.pages_left == 0 {
                break;
            }
        }
        store.checkpoint().await;
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(freed > 0);
        assert!(after < full / 2, "{full} -> {after}");
        let measure = store.measure(true).await.unwrap();
        assert_eq!(measure.main_bytes, after);
        assert_eq!(measure.free_bytes, 0);
        assert!(measure.rows.iter().all(|&(_, n)| n == 0), "{measure:?}");
    }
}
