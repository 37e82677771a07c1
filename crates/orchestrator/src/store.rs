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
//! in-memory registry needs); after that memory is the read model.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use rusqlite::{params, Connection, Transaction};
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
];

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
        configure(&conn)?;
        migrate(&mut conn)?;
        let loaded = load(&conn, retention, ended_streams_max)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let unsaved = Arc::new(AtomicUsize::new(0));
        let writer_depth = depth.clone();
        let writer_unsaved = unsaved.clone();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_depth, &writer_unsaved))
            .map_err(StoreError::Thread)?;
        let dropped = Arc::new(AtomicU64::new(0));
        Ok((
            Store {
                jobs,
                depth,
                dropped,
                unsaved,
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
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "database migrated");
    }
    Ok(())
}

fn writer_loop(
    mut conn: Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    depth: &AtomicUsize,
    unsaved: &AtomicUsize,
) {
    // Batches whose commit failed, oldest first. Their changes are already in
    // memory, so they are written again, ahead of newer ones, with the next
    // commit: memory and disk converge as soon as the database takes writes.
    let mut dirty: VecDeque<Vec<WriteOp>> = VecDeque::new();
    let mut dirty_ops = 0usize;
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
        if !writes.is_empty() || !dirty.is_empty() {
            let retried = dirty.len();
            let result = apply_all(&mut conn, dirty.iter().chain(writes.iter()))
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
        for job in others {
            match job {
                Job::Trim { retention } => {
                    if let Err(error) = trim(&conn, retention) {
                        tracing::warn!(%error, "trimming history tables failed");
                    }
                }
                Job::Flush { ack } => {
                    let _ = ack.send(());
                }
                Job::Write { .. } => {}
            }
        }
    }
    // Every sender is gone: checkpoint so the next start finds a compact file.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

fn apply_all<'a>(
    conn: &mut Connection,
    batches: impl Iterator<Item = &'a Vec<WriteOp>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in batches.flatten() {
        apply(&tx, op)?;
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
                    failovers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
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
                "INSERT INTO stat_snapshots (stream_id, ts, peers, speed_down, speed_up,
                    downloaded, uploaded, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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

/// Keeps the newest rows of each history table per owner.
fn trim(conn: &Connection, retention: Retention) -> rusqlite::Result<()> {
    let keep = |table: &str, owner: &str, limit: usize| -> rusqlite::Result<usize> {
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE id IN (
                    SELECT id FROM (
                        SELECT id, ROW_NUMBER() OVER (PARTITION BY {owner} ORDER BY id DESC) AS rn
                        FROM {table})
                    WHERE rn > ?1)"
            ),
            [limit as i64],
        )
    };
    keep("stat_snapshots", "stream_id", retention.stats_per_stream)?;
    keep("health_checks", "engine_id", retention.health_per_engine)?;
    keep(
        "health_transitions",
        "engine_id",
        retention.health_per_engine,
    )?;
    Ok(())
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

    let mut stmt = conn.prepare(
        "SELECT ts, peers, speed_down, speed_up, downloaded, uploaded, status FROM (
            SELECT * FROM stat_snapshots WHERE stream_id = ?1 ORDER BY id DESC LIMIT ?2)
         ORDER BY id",
    )?;
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

        let mut ops = vec![WriteOp::UpsertEngine(Box::new(engine("e1")))];
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
}
