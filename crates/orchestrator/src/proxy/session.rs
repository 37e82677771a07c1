//! One shared session per content: an ingest task pulls MPEG-TS from an engine
//! (a [`Source`]) into a [`Ring`], viewers read the ring, and when the engine
//! stalls, ends, errors or is reported unhealthy the ingest moves to another
//! engine and splices its stream into the same ring, so viewers' connections
//! stay open across the failover.
//!
//! # Splice
//! The new source's bytes are dropped until its first PAT packet. From there,
//! for about a second of media time, the first packet of each PID that can
//! carry the flag gets discontinuity_indicator set: PAT and PMT packets are
//! rebuilt with a 2-byte adaptation field (their sections end in stuffing, so
//! they still fit); other PIDs get the flag on their first packet that has an
//! adaptation field (that is where the PCR and keyframe flags live, so the new
//! time base is always announced). Packets of a PID before that pass as they
//! are: their continuity counter jump reads as packet loss, which decoders ride
//! out until the next unit start.
//!
//! # Media time and headroom
//! Every chunk gets a *session media time*: advanced by the PCR deltas of the
//! source (the first PID that carries a PCR), or by arrival time for a source
//! without PCR, and re-based at a splice so it continues where the old source
//! stopped. With `headroom` > 0, a viewer joins that far behind the live edge
//! and is paced by its own clock on this timeline (a chunk is delivered when
//! its media time is reached), so during a failover gap it keeps draining its
//! reserve and sees nothing. The trade-off: the reserve shrinks by every gap
//! and only grows back when a source delivers faster than real time (engines
//! usually burst their buffer after a start); it also costs the viewer
//! `headroom` of extra latency, and `ring_bytes` must hold `headroom` of the
//! stream's bitrate, or the ring caps it. With headroom 0 viewers get bytes as
//! soon as they arrive, without pacing.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::ring::{Read, Ring};
use super::ts::{self, PACKET_SIZE};
use crate::time::Timestamp;

/// Identifies an engine to the control plane (whatever key it uses).
pub type EngineKey = String;

/// The bytes of one engine stream.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An opened engine stream.
pub struct Source {
    pub engine: EngineKey,
    pub stream: ByteStream,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Why no source could be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// Opens engine streams for one content; implemented by the control plane
/// (engine selection, reservation, the HTTP request to the engine).
pub trait SourceProvider: Send + Sync + 'static {
    /// Opens the content on an engine other than those in `exclude` (every
    /// engine that failed during this failover).
    fn open<'a>(
        &'a self,
        exclude: &'a [EngineKey],
    ) -> Pin<Box<dyn Future<Output = Result<Source, OpenError>> + Send + 'a>>;
}

/// Session tuning.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Byte budget of the ring (all viewers share it).
    pub ring_bytes: usize,
    /// No bytes for this long is a stall, hence a failover. Also how long a
    /// newly opened source may take to send its first bytes.
    pub stall_timeout: Duration,
    /// How long a failover may take, from the failure to the first byte of
    /// the new source, before the session ends.
    pub failover_timeout: Duration,
    /// How long the session's first open may take, from the first viewer's
    /// request to the first byte: at least `failover_timeout`, and longer
    /// when the engine may have to be started first (a container, and
    /// perhaps a VPN node before it).
    pub start_timeout: Duration,
    /// At most this many `open` calls per failover.
    pub max_failover_attempts: u32,
    /// How far behind the live edge viewers are served (see module docs).
    pub headroom: Duration,
    pub max_viewers: usize,
}

/// How far behind the live edge the ring keeps data beyond the headroom: the
/// join point (a PAT or keyframe within about a second) and some slack for
/// viewers a little behind.
const RETAIN_BEYOND_HEADROOM: Duration = Duration::from_secs(5);

impl SessionConfig {
    /// The media time the ring keeps: the headroom plus a margin. Memory per
    /// session is the smaller of this at the stream's rate and `ring_bytes`.
    pub fn retain(&self) -> Duration {
        self.headroom + RETAIN_BEYOND_HEADROOM
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ring_bytes: 16 << 20,
            stall_timeout: Duration::from_secs(5),
            failover_timeout: Duration::from_secs(15),
            start_timeout: Duration::from_secs(15),
            max_failover_attempts: 3,
            headroom: Duration::ZERO,
            max_viewers: 100,
        }
    }
}

/// Why a source was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No bytes for `stall_timeout`.
    Stalled,
    /// The stream ended.
    SourceEnded,
    /// The stream returned an error.
    SourceError(String),
    /// [`SessionHandle::fail_over`] was called.
    External(String),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stalled => f.write_str("stalled"),
            Self::SourceEnded => f.write_str("source ended"),
            Self::SourceError(e) => write!(f, "source error: {e}"),
            Self::External(r) => write!(f, "external: {r}"),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// [`SessionHandle::close`] was called, or every handle was dropped.
    Closed,
    /// A source failed and no other could take over in time.
    NoSource { failure: FailReason, error: String },
}

/// One completed failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Wall clock, when the new source sent its first bytes.
    pub at: Timestamp,
    pub from: EngineKey,
    pub to: EngineKey,
    pub reason: FailReason,
    /// Engines that were opened during this failover but sent nothing in time.
    pub also_failed: Vec<EngineKey>,
    /// From the last byte of the old source to the first byte of the new one.
    pub gap_ms: u64,
}

/// What the control plane is told about a session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Started { engine: EngineKey },
    FailedOver(Failover),
    Ended { reason: EndReason },
}

/// Why [`SessionHandle::subscribe`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("the session has max_viewers viewers")]
    Full,
    #[error("the session has ended")]
    Ended,
}

/// State shared by the handle, the ingest task and the viewers.
#[derive(Debug)]
struct Shared {
    ring: Ring,
    config: SessionConfig,
    engine: Mutex<EngineKey>,
    viewers: AtomicUsize,
    lagged: AtomicU64,
    ended: AtomicBool,
}

/// Owned by the handles; dropping the last one closes the session.
#[derive(Debug)]
struct HandleInner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    fail_tx: mpsc::UnboundedSender<String>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A running session. Cheap to clone; the session lives while a handle does.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    inner: Arc<HandleInner>,
}

impl SessionHandle {
    /// Opens the content (retrying like a failover, within
    /// `start_timeout`), waits for its first bytes and starts the ingest
    /// task. Events arrive on the returned receiver, `Started` first.
    pub async fn start(
        provider: Arc<dyn SourceProvider>,
        config: SessionConfig,
    ) -> Result<(SessionHandle, mpsc::UnboundedReceiver<SessionEvent>), OpenError> {
        let cancel = CancellationToken::new();
        let mut failed = Vec::new();
        let opened = match open_source(
            &*provider,
            &mut failed,
            &config,
            config.start_timeout.max(config.failover_timeout),
            &cancel,
        )
        .await
        {
            Opened::Ok(opened) => opened,
            Opened::Cancelled => return Err(OpenError("cancelled".into())),
            Opened::Failed(e) => return Err(OpenError(e)),
        };
        let shared = Arc::new(Shared {
            ring: Ring::new(config.ring_bytes, config.retain()),
            engine: Mutex::new(opened.source.engine.clone()),
            config,
            viewers: AtomicUsize::new(0),
            lagged: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        let (fail_tx, fail_rx) = mpsc::unbounded_channel();
        let _ = events.send(SessionEvent::Started {
            engine: opened.source.engine.clone(),
        });
        let mut ingest = Ingest {
            shared: shared.clone(),
            provider,
            cancel: cancel.clone(),
            fail_rx,
            events,
            packetizer: ts::Packetizer::new(),
            clock: MediaClock::default(),
            splice: None,
            pmt_pids: Vec::new(),
            runs: Vec::new(),
            psi: Vec::new(),
            last_byte: Instant::now(),
        };
        // The first bytes go in before anyone can subscribe, so that even the
        // first viewers get a PAT/PMT prefix.
        ingest.ingest(opened.first);
        tokio::spawn(ingest.run(opened.source));
        let handle = SessionHandle {
            inner: Arc::new(HandleInner {
                shared,
                cancel,
                fail_tx,
            }),
        };
        Ok((handle, events_rx))
    }

    /// A new viewer, starting near the live edge (`headroom` behind it) with
    /// the PAT and PMT first.
    pub fn subscribe(&self) -> Result<Viewer, SubscribeError> {
        let shared = &self.inner.shared;
        if shared.ended.load(Ordering::Acquire) {
            return Err(SubscribeError::Ended);
        }
        shared
            .viewers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.config.max_viewers).then_some(n + 1)
            })
            .map_err(|_| SubscribeError::Full)?;
        Ok(Viewer::new(shared.clone()))
    }

    /// Current number of viewers.
    pub fn viewer_count(&self) -> usize {
        self.inner.shared.viewers.load(Ordering::Acquire)
    }

    /// The engine the session currently reads (or last read).
    pub fn engine(&self) -> EngineKey {
        self.inner.shared.engine.lock().clone()
    }

    /// Moves the session to another engine (the health monitor found this one
    /// unhealthy). Ignored while a failover is already under way.
    pub fn fail_over(&self, reason: impl Into<String>) {
        let _ = self.inner.fail_tx.send(reason.into());
    }

    /// Ends the session: the ingest stops and viewers get EOF at once.
    pub fn close(&self) {
        self.inner.cancel.cancel();
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.inner.shared.ended.load(Ordering::Acquire)
    }

    /// Bytes held in the ring (bounded by `ring_bytes`).
    pub fn ring_bytes(&self) -> usize {
        self.inner.shared.ring.bytes()
    }

    /// How many times a viewer fell behind the ring and was moved forward.
    pub fn lagged(&self) -> u64 {
        self.inner.shared.lagged.load(Ordering::Relaxed)
    }

    /// A reader of the session's chunks as they are, from the oldest one the
    /// ring still holds, for the HLS segmenter. It is not a viewer (it does
    /// not count, pace, or keep the session alive: viewers of its output are
    /// counted by the control plane).
    pub fn tap(&self) -> Tap {
        let shared = self.inner.shared.clone();
        Tap {
            changed: shared.ring.watch(),
            cursor: shared.ring.oldest(),
            shared,
        }
    }
}

/// What a [`Tap`] reads next.
#[derive(Debug)]
pub enum Tapped {
    Chunk(super::ring::Chunk),
    /// The tap fell behind the ring and skipped to the oldest chunk kept:
    /// data was lost in between.
    Lagged,
    /// The session ended.
    End,
}

/// See [`SessionHandle::tap`].
#[derive(Debug)]
pub struct Tap {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    cursor: u64,
}

impl Tap {
    /// The next chunk, waiting for it.
    pub async fn next(&mut self) -> Tapped {
        loop {
            self.changed.borrow_and_update();
            match self.shared.ring.read(self.cursor) {
                Read::Chunk(chunk) => {
                    self.cursor = chunk.end();
                    return Tapped::Chunk(chunk);
                }
                Read::Lagged => {
                    self.cursor = self.shared.ring.oldest();
                    return Tapped::Lagged;
                }
                Read::Empty { closed: false } => {
                    if self.changed.changed().await.is_err() {
                        return Tapped::End;
                    }
                }
                Read::Empty { closed: true } | Read::Aborted => return Tapped::End,
            }
        }
    }
}

/// Longest chunk put in the ring: big engine reads are cut (without copying)
/// so that eviction, joins and pacing stay fine-grained.
const MAX_CHUNK: usize = 128 * PACKET_SIZE;
/// How long after a splice the discontinuity flag is still put on PIDs that
/// have not had it yet.
const SPLICE_MARK_WINDOW: Duration = Duration::from_secs(1);
/// A PCR step longer than this is a jump in the source's clock, not elapsed time.
const MAX_PCR_STEP: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

struct OpenedSource {
    source: Source,
    first: Bytes,
    /// Engines opened on the way that sent nothing in time.
    also_failed: Vec<EngineKey>,
}

enum Opened {
    Ok(OpenedSource),
    Cancelled,
    Failed(String),
}

/// Opens a source not in `failed` and waits for its first bytes: at most
/// `max_failover_attempts` opens with a short backoff, all within
/// `budget`. Engines that open but send nothing join `failed`.
async fn open_source(
    provider: &dyn SourceProvider,
    failed: &mut Vec<EngineKey>,
    config: &SessionConfig,
    budget: Duration,
    cancel: &CancellationToken,
) -> Opened {
    let deadline = Instant::now() + budget;
    let mut also_failed = Vec::new();
    let mut last_error = String::from("no attempt made");
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..config.max_failover_attempts {
        if attempt > 0 {
            tokio::select! {
                _ = cancel.cancelled() => return Opened::Cancelled,
                _ = sleep_until((Instant::now() + backoff).min(deadline)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if Instant::now() >= deadline {
            break;
        }
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Opened::Cancelled,
            _ = sleep_until(deadline) => {
                last_error = "timed out opening a source".into();
                break;
            }
            opened = provider.open(failed) => opened,
        };
        let mut source = match opened {
            Ok(source) => source,
            Err(e) => {
                last_error = e.0;
                continue;
            }
        };
        let first_by = (Instant::now() + config.stall_timeout).min(deadline);
        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => return Opened::Cancelled,
                _ = sleep_until(first_by) => break "sent nothing in time".to_string(),
                item = source.stream.next() => match item {
                    Some(Ok(first)) if first.is_empty() => continue,
                    Some(Ok(first)) => {
                        return Opened::Ok(OpenedSource { source, first, also_failed });
                    }
                    Some(Err(e)) => break format!("failed before sending: {e}"),
                    None => break "ended before sending".to_string(),
                },
            }
        };
        last_error = format!("{}: {outcome}", source.engine);
        also_failed.push(source.engine.clone());
        failed.push(source.engine);
    }
    Opened::Failed(last_error)
}

/// The session media timeline; see the module docs.
#[derive(Debug, Default)]
struct MediaClock {
    /// Media time of the last byte ingested.
    now: Duration,
    /// The PID whose PCR drives the clock (the first seen in the source).
    pcr_pid: Option<u16>,
    last_pcr: Option<u64>,
    last_arrival: Option<Instant>,
}

impl MediaClock {
    fn pcr(&mut self, pid: u16, pcr: u64) {
        if *self.pcr_pid.get_or_insert(pid) != pid {
            return;
        }
        if let Some(last) = self.last_pcr {
            let ticks = (pcr + ts::PCR_WRAP - last) % ts::PCR_WRAP;
            let step = Duration::from_nanos(ticks * 1000 / 27);
            // A backwards or huge step is the source's clock jumping:
            // the timeline carries on from where it is.
            if step <= MAX_PCR_STEP {
                self.now += step;
            }
        }
        self.last_pcr = Some(pcr);
    }

    /// Media time at the end of a chunk that arrived at `arrived`, after its
    /// PCRs went through [`MediaClock::pcr`].
    fn chunk_end(&mut self, arrived: Instant) -> Duration {
        if self.pcr_pid.is_none() {
            if let Some(prev) = self.last_arrival {
                self.now += arrived.saturating_duration_since(prev);
            }
        }
        self.last_arrival = Some(arrived);
        self.now
    }

    /// A new source: its clock starts where the old one stopped.
    fn rebase(&mut self) {
        *self = Self {
            now: self.now,
            ..Self::default()
        };
    }
}

/// A set of PIDs (13 bits) without allocation.
#[derive(Debug)]
struct PidSet([u64; 128]);

impl PidSet {
    fn insert(&mut self, pid: u16) -> bool {
        let (word, bit) = (usize::from(pid >> 6) & 127, 1u64 << (pid & 63));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    fn contains(&self, pid: u16) -> bool {
        self.0[usize::from(pid >> 6) & 127] & (1u64 << (pid & 63)) != 0
    }
}

#[derive(Debug)]
struct Splice {
    waiting_for_pat: bool,
    /// The first chunk of the new source is yet to be pushed.
    first_chunk: bool,
    /// PIDs whose discontinuity is already marked.
    marked: PidSet,
    /// Media time after which marking stops.
    until: Duration,
}

enum Pumped {
    Cancelled,
    Failed(FailReason),
}

struct Ingest {
    shared: Arc<Shared>,
    provider: Arc<dyn SourceProvider>,
    cancel: CancellationToken,
    fail_rx: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedSender<SessionEvent>,
    packetizer: ts::Packetizer,
    clock: MediaClock,
    splice: Option<Splice>,
    pmt_pids: Vec<u16>,
    /// Reused buffers, so steady-state ingest does not allocate.
    runs: Vec<Bytes>,
    psi: Vec<(u16, Bytes)>,
    last_byte: Instant,
}

impl Ingest {
    async fn run(mut self, mut source: Source) {
        let mut first = None;
        let end = loop {
            let reason = match self.pump(&mut source, first.take()).await {
                Pumped::Cancelled => break EndReason::Closed,
                Pumped::Failed(reason) => reason,
            };
            tracing::warn!(engine = %source.engine, %reason, "proxy source failed, failing over");
            // Excluded for this failover only: once it has recovered (the
            // health monitor says so), a later failover may come back to it;
            // a list kept for the whole session would leave a long session
            // with no engine after as many failovers as there are engines.
            let mut failed = vec![source.engine.clone()];
            let last_byte = self.last_byte;
            let config = &self.shared.config;
            match open_source(
                &*self.provider,
                &mut failed,
                config,
                config.failover_timeout,
                &self.cancel,
            )
            .await
            {
                Opened::Ok(opened) => {
                    let gap = Instant::now().saturating_duration_since(last_byte);
                    let _ = self.events.send(SessionEvent::FailedOver(Failover {
                        at: Timestamp::now(),
                        from: std::mem::take(&mut source.engine),
                        to: opened.source.engine.clone(),
                        reason,
                        also_failed: opened.also_failed,
                        gap_ms: u64::try_from(gap.as_millis()).unwrap_or(u64::MAX),
                    }));
                    *self.shared.engine.lock() = opened.source.engine.clone();
                    source = opened.source;
                    first = Some(opened.first);
                    self.begin_splice();
                    // Requests made against the old engine are moot now.
                    while self.fail_rx.try_recv().is_ok() {}
                }
                Opened::Cancelled => break EndReason::Closed,
                Opened::Failed(error) => {
                    break EndReason::NoSource {
                        failure: reason,
                        error,
                    }
                }
            }
        };
        // Closing drops viewers at once; running out of sources lets them
        // play what is left (their reserve, with headroom) and then EOF.
        self.shared.ended.store(true, Ordering::Release);
        self.shared.ring.close(end != EndReason::Closed);
        let _ = self.events.send(SessionEvent::Ended { reason: end });
    }

    /// Reads `source` into the ring until it fails or the session is closed.
    async fn pump(&mut self, source: &mut Source, first: Option<Bytes>) -> Pumped {
        if let Some(first) = first {
            self.ingest(first);
        }
        let stall = self.shared.config.stall_timeout;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Pumped::Cancelled,
                Some(reason) = self.fail_rx.recv() => {
                    return Pumped::Failed(FailReason::External(reason));
                }
                _ = sleep_until(self.last_byte + stall) => return Pumped::Failed(FailReason::Stalled),
                item = source.stream.next() => match item {
                    Some(Ok(bytes)) => {
                        if !bytes.is_empty() {
                            self.ingest(bytes);
                        }
                    }
                    Some(Err(e)) => return Pumped::Failed(FailReason::SourceError(e.to_string())),
                    None => return Pumped::Failed(FailReason::SourceEnded),
                },
            }
        }
    }

    fn begin_splice(&mut self) {
        // A torn packet of the old source must not be glued to the new one.
        self.packetizer = ts::Packetizer::new();
        self.clock.rebase();
        self.splice = Some(Splice {
            waiting_for_pat: true,
            first_chunk: true,
            marked: PidSet([0; 128]),
            until: self.clock.now + SPLICE_MARK_WINDOW,
        });
    }

    fn ingest(&mut self, bytes: Bytes) {
        let now = Instant::now();
        self.last_byte = now;
        let mut runs = std::mem::take(&mut self.runs);
        self.packetizer.push(bytes, &mut runs);
        for mut run in runs.drain(..) {
            while !run.is_empty() {
                let piece = run.split_to(run.len().min(MAX_CHUNK));
                self.chunk(piece, now);
            }
        }
        self.runs = runs;
    }

    /// One run of whole packets: splice handling, PSI and PCR, into the ring.
    fn chunk(&mut self, mut data: Bytes, arrived: Instant) {
        let mut splice_starts = false;
        if let Some(splice) = &mut self.splice {
            if splice.waiting_for_pat {
                let Some(at) = data
                    .chunks_exact(PACKET_SIZE)
                    .position(|p| ts::pid(p) == ts::PAT_PID && ts::pusi(p))
                else {
                    return; // the new source has not reached a PAT yet
                };
                data.advance(at * PACKET_SIZE);
                splice.waiting_for_pat = false;
            }
            splice_starts = std::mem::take(&mut splice.first_chunk);
            data = self.mark_discontinuities(data);
        }

        self.psi.clear();
        let mut random_access = false;
        for (i, p) in data.chunks_exact(PACKET_SIZE).enumerate() {
            let pid = ts::pid(p);
            if ts::pusi(p) {
                if pid == ts::PAT_PID {
                    self.learn_pat(p);
                    self.psi
                        .push((pid, data.slice(i * PACKET_SIZE..(i + 1) * PACKET_SIZE)));
                } else if self.pmt_pids.contains(&pid) {
                    self.psi
                        .push((pid, data.slice(i * PACKET_SIZE..(i + 1) * PACKET_SIZE)));
                }
            }
            if let Some(af) = ts::adaptation_field(p) {
                random_access |= af.random_access;
                if let Some(pcr) = af.pcr {
                    self.clock.pcr(pid, pcr);
                }
            }
        }
        let media = self.clock.chunk_end(arrived);
        if self.splice.as_ref().is_some_and(|s| media > s.until) {
            self.splice = None;
        }
        self.shared.ring.push(
            data,
            arrived,
            media,
            random_access,
            &self.psi,
            splice_starts,
        );
    }

    fn learn_pat(&mut self, pat: &[u8]) {
        if !ts::pat_pmt_pids(pat).eq(self.pmt_pids.iter().copied()) {
            self.pmt_pids.clear();
            self.pmt_pids.extend(ts::pat_pmt_pids(pat));
        }
    }

    /// Sets the discontinuity flag on the first markable packet of each PID
    /// (see module docs). Copies the chunk only when it has one to mark.
    fn mark_discontinuities(&mut self, data: Bytes) -> Bytes {
        let Some(splice) = &mut self.splice else {
            return data;
        };
        let mut copy: Option<BytesMut> = None;
        for i in 0..data.len() / PACKET_SIZE {
            let range = i * PACKET_SIZE..(i + 1) * PACKET_SIZE;
            let p = &data[range.clone()];
            let pid = ts::pid(p);
            if splice.marked.contains(pid) {
                continue;
            }
            if pid == ts::PAT_PID && ts::pusi(p) {
                // Learn the new source's PMT PIDs before meeting its PMT.
                if !ts::pat_pmt_pids(p).eq(self.pmt_pids.iter().copied()) {
                    self.pmt_pids.clear();
                    self.pmt_pids.extend(ts::pat_pmt_pids(p));
                }
            }
            let psi = pid == ts::PAT_PID || self.pmt_pids.contains(&pid);
            let markable = if psi {
                ts::pusi(p)
            } else {
                ts::adaptation_field(p).is_some()
            };
            if !markable {
                continue;
            }
            let buf = copy.get_or_insert_with(|| BytesMut::from(&data[..]));
            // A PSI packet without room stays unmarked; it is not retried.
            ts::mark_discontinuity(&mut buf[range], psi);
            splice.marked.insert(pid);
        }
        copy.map_or(data, BytesMut::freeze)
    }
}

/// One viewer's stream of the session's bytes; see [`SessionHandle::subscribe`].
/// Dropping it frees its slot at once.
pub struct Viewer {
    stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    lagged: Arc<AtomicU64>,
}

impl fmt::Debug for Viewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viewer")
            .field("lagged", &self.lagged())
            .finish_non_exhaustive()
    }
}

impl Viewer {
    fn new(shared: Arc<Shared>) -> Self {
        let lagged = Arc::new(AtomicU64::new(0));
        let mut reader = Reader {
            changed: shared.ring.watch(),
            prefix: Vec::new().into_iter(),
            cursor: 0,
            pace: None,
            starved: false,
            lagged: lagged.clone(),
            shared,
        };
        reader.join();
        let stream = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((Ok(item), reader))
        });
        Self {
            stream: stream.boxed(),
            lagged,
        }
    }

    /// How many times this viewer fell behind the ring and was moved forward.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Stream for Viewer {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// A viewer's delivery clock: media time `media` at wall time `wall`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    wall: Instant,
    media: Duration,
}

impl Pace {
    fn clock(&self, now: Instant) -> Duration {
        self.media + now.saturating_duration_since(self.wall)
    }
}

/// The state behind a [`Viewer`]: a cursor, not data.
struct Reader {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    prefix: std::vec::IntoIter<Bytes>,
    cursor: u64,
    /// Only with headroom.
    pace: Option<Pace>,
    /// The viewer caught up with the live edge and waited for data.
    starved: bool,
    lagged: Arc<AtomicU64>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Reader {
    /// Starts (again) where a new viewer starts. A viewer that lagged behind
    /// the ring has lost data anyway, so it restarts like a new one, at a
    /// PAT/keyframe near its headroom point with a fresh PAT/PMT, rather than
    /// at the oldest chunk, where it would be the first to be overrun again.
    fn join(&mut self) {
        let headroom = self.shared.config.headroom;
        let join = self.shared.ring.join(headroom);
        self.prefix = join.prefix.into_iter();
        self.cursor = join.cursor;
        self.pace = match join.media {
            Some(media) if !headroom.is_zero() => Some(Pace {
                wall: Instant::now(),
                media,
            }),
            _ => None,
        };
        self.starved = false;
    }

    async fn next(&mut self) -> Option<Bytes> {
        let headroom = self.shared.config.headroom;
        loop {
            if let Some(psi) = self.prefix.next() {
                return Some(psi);
            }
            // Mark the current version seen before looking, so a push after
            // the look wakes `changed()` below.
            self.changed.borrow_and_update();
            match self.shared.ring.read(self.cursor) {
                Read::Chunk(chunk) => {
                    if !headroom.is_zero() {
                        self.wait_until_due(chunk.media).await;
                    }
                    self.cursor = chunk.end();
                    return Some(chunk.data);
                }
                Read::Lagged => {
                    self.lagged.fetch_add(1, Ordering::Relaxed);
                    self.shared.lagged.fetch_add(1, Ordering::Relaxed);
                    self.join();
                }
                Read::Empty { closed: false } => {
                    self.starved = true;
                    if self.changed.changed().await.is_err() {
                        return None;
                    }
                }
                Read::Empty { closed: true } | Read::Aborted => return None,
            }
        }
    }

    /// Paces a headroom viewer: waits until its clock reaches `media`.
    async fn wait_until_due(&mut self, media: Duration) {
        let now = Instant::now();
        let pace = self.pace.get_or_insert(Pace { wall: now, media });
        // The clock must not run on while there was nothing to deliver, or
        // the viewer would burst through the next data and have no reserve
        // left: after waiting at the live edge, it restarts from this chunk.
        if std::mem::take(&mut self.starved) && pace.clock(now) > media {
            *pace = Pace { wall: now, media };
        }
        let ahead = media.saturating_sub(pace.clock(now));
        if ahead > self.shared.config.headroom + MAX_PCR_STEP {
            // Not a plausible timeline step: do not hold the viewer hostage.
            *pace = Pace { wall: now, media };
        } else if !ahead.is_zero() {
            tokio::time::sleep(ahead).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ts::testing::*;

    const CHUNK: Duration = Duration::from_millis(100);
    const PACKETS_PER_CHUNK: usize = 12;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[derive(Clone, Copy)]
    enum End {
        Stall,
        Eof,
        Error,
    }

    /// A live engine stream: a 100 ms chunk every 100 ms, each a PCR/keyframe
    /// video packet and 9 more (tagged `tag`, numbered by `seq`), led by the
    /// PAT and PMT, except for the first `lead_in` chunks, which have none.
    fn live(tag: u8, chunks: usize, lead_in: usize, end: End) -> ByteStream {
        let pcr0 = u64::from(tag) * 1000 * ts::PCR_HZ;
        futures::stream::unfold(0usize, move |i| async move {
            if i > 0 {
                tokio::time::sleep(CHUNK).await;
            }
            if i == chunks {
                match end {
                    End::Stall => futures::future::pending::<()>().await,
                    End::Eof => return None,
                    End::Error => return Some((Err(io::Error::other("boom")), i + 1)),
                }
            }
            if i > chunks {
                return None;
            }
            let mut out = Vec::with_capacity(PACKETS_PER_CHUNK * PACKET_SIZE);
            if i >= lead_in {
                out.extend_from_slice(&pat(i as u8));
                out.extend_from_slice(&pmt(i as u8));
            }
            for k in 0..10u32 {
                let seq = i as u32 * 10 + k;
                let pcr = (k == 0).then(|| pcr0 + i as u64 * ts::PCR_HZ / 10);
                out.extend_from_slice(&video(seq as u8, pcr, tag, seq));
            }
            Some((Ok(Bytes::from(out)), i + 1))
        })
        .boxed()
    }

    /// Engines handed out in order, skipping excluded ones; records every
    /// `exclude` list it is called with. Opens take `open_delay`, except the
    /// first one (nothing excluded yet).
    struct Engines {
        sources: Mutex<Vec<(EngineKey, Option<ByteStream>)>>,
        open_delay: Duration,
        excludes: Mutex<Vec<Vec<EngineKey>>>,
    }

    impl Engines {
        fn new(sources: Vec<(&str, ByteStream)>, open_delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                sources: Mutex::new(
                    sources
                        .into_iter()
                        .map(|(k, s)| (k.to_string(), Some(s)))
                        .collect(),
                ),
                open_delay,
                excludes: Mutex::new(Vec::new()),
            })
        }
    }

    impl SourceProvider for Engines {
        fn open<'a>(
            &'a self,
            exclude: &'a [EngineKey],
        ) -> Pin<Box<dyn Future<Output = Result<Source, OpenError>> + Send + 'a>> {
            Box::pin(async move {
                self.excludes.lock().push(exclude.to_vec());
                if !exclude.is_empty() {
                    tokio::time::sleep(self.open_delay).await;
                }
                let mut sources = self.sources.lock();
                let (engine, stream) = sources
                    .iter_mut()
                    .find(|(k, s)| s.is_some() && !exclude.contains(k))
                    .ok_or_else(|| OpenError("no engine left".into()))?;
                Ok(Source {
                    engine: engine.clone(),
                    stream: stream.take().expect("checked above"),
                })
            })
        }
    }

    fn config() -> SessionConfig {
        SessionConfig {
            ring_bytes: 1 << 20,
            stall_timeout: ms(1000),
            failover_timeout: ms(3000),
            start_timeout: ms(3000),
            max_failover_attempts: 2,
            headroom: Duration::ZERO,
            max_viewers: 100,
        }
    }

    /// Everything a viewer gets until EOF; an error fails the test.
    async fn drain(mut viewer: Viewer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(item) = viewer.next().await {
            out.extend_from_slice(&item.expect("viewers never see an error"));
        }
        assert_eq!(out.len() % PACKET_SIZE, 0, "EOF on a packet boundary");
        out
    }

    fn packets(bytes: &[u8]) -> Vec<&[u8]> {
        bytes.chunks_exact(PACKET_SIZE).collect()
    }

    /// (tag, seq) of the video packets.
    fn video_ids(bytes: &[u8]) -> Vec<(u8, u32)> {
        packets(bytes).into_iter().filter_map(video_id).collect()
    }

    fn seqs(ids: &[(u8, u32)], tag: u8) -> Vec<u32> {
        ids.iter().filter(|i| i.0 == tag).map(|i| i.1).collect()
    }

    async fn events_until_end(rx: &mut mpsc::UnboundedReceiver<SessionEvent>) -> Vec<SessionEvent> {
        let mut all = Vec::new();
        while let Some(event) = rx.recv().await {
            let end = matches!(event, SessionEvent::Ended { .. });
            all.push(event);
            if end {
                break;
            }
        }
        all
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_viewers_receive_identical_bytes() {
        let engines = Engines::new(vec![("A", live(1, 30, 0, End::Eof))], ms(0));
        let (session, mut events) = SessionHandle::start(engines, config()).await.unwrap();
        let viewers: Vec<Viewer> = (0..50).map(|_| session.subscribe().unwrap()).collect();
        assert_eq!(session.viewer_count(), 50);

        let outs = futures::future::join_all(viewers.into_iter().map(drain)).await;
        assert!(outs.iter().all(|o| *o == outs[0]));
        assert_eq!(seqs(&video_ids(&outs[0]), 1), (0..300).collect::<Vec<_>>());
        assert_eq!(session.viewer_count(), 0);

        let events = events_until_end(&mut events).await;
        assert_eq!(events[0], SessionEvent::Started { engine: "A".into() });
        assert!(matches!(
            &events[1],
            SessionEvent::Ended {
                reason: EndReason::NoSource {
                    failure: FailReason::SourceEnded,
                    ..
                }
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_viewer_gets_pat_then_pmt_first() {
        let engines = Engines::new(vec![("A", live(1, 1000, 0, End::Stall))], ms(0));
        let (session, mut events) = SessionHandle::start(engines, config()).await.unwrap();
        tokio::time::sleep(ms(2050)).await;
        let mut viewer = session.subscribe().unwrap();
        let first = viewer.next().await.unwrap().unwrap();
        let second = viewer.next().await.unwrap().unwrap();
        let third = viewer.next().await.unwrap().unwrap();
        assert_eq!(ts::pid(&first), ts::PAT_PID);
        assert_eq!(ts::pid(&second), PMT_PID);
        // Then the newest chunk, from its start.
        assert_eq!(ts::pid(&third), ts::PAT_PID);
        assert_eq!(seqs(&video_ids(&third), 1)[0], 200);

        session.close();
        assert!(viewer.next().await.is_none(), "close: a clean EOF");
        let events = events_until_end(&mut events).await;
        assert_eq!(
            events.last(),
            Some(&SessionEvent::Ended {
                reason: EndReason::Closed
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_viewer_is_moved_forward_and_the_ring_stays_bounded() {
        let budget = 20 * PACKETS_PER_CHUNK * PACKET_SIZE;
        let engines = Engines::new(vec![("A", live(1, 100, 0, End::Eof))], ms(0));
        let cfg = SessionConfig {
            ring_bytes: budget,
            ..config()
        };
        let (session, _events) = SessionHandle::start(engines, cfg).await.unwrap();
        let mut slow = session.subscribe().unwrap();
        let fast = tokio::spawn(drain(session.subscribe().unwrap()));
        assert_eq!(ts::pid(&slow.next().await.unwrap().unwrap()), ts::PAT_PID);

        for _ in 0..12 {
            tokio::time::sleep(ms(1000)).await;
            assert!(session.ring_bytes() <= budget);
        }
        let fast = fast.await.unwrap();
        assert_eq!(seqs(&video_ids(&fast), 1), (0..1000).collect::<Vec<_>>());

        // The slow viewer finishes its old prefix, then restarts at the live
        // edge with a fresh PAT/PMT.
        let rest = drain(slow_take(&mut slow).await).await;
        assert_eq!(slow.lagged(), 1);
        assert_eq!(session.lagged(), 1);
        let pids: Vec<u16> = packets(&rest).iter().map(|p| ts::pid(p)).collect();
        assert_eq!(&pids[..3], &[PMT_PID, ts::PAT_PID, PMT_PID]);
        assert_eq!(seqs(&video_ids(&rest), 1), (990..1000).collect::<Vec<_>>());
    }

    /// Moves a viewer out of a `&mut`, for `drain`.
    async fn slow_take(viewer: &mut Viewer) -> Viewer {
        let lagged = viewer.lagged.clone();
        let stream = std::mem::replace(&mut viewer.stream, futures::stream::empty().boxed());
        Viewer { stream, lagged }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_fails_over_and_splices_with_a_discontinuity() {
        let engines = Engines::new(
            vec![
                ("A", live(1, 20, 0, End::Stall)),
                // B's first three chunks come before its first PAT.
                ("B", live(2, 30, 3, End::Eof)),
            ],
            ms(200),
        );
        let (session, mut events) = SessionHandle::start(engines.clone(), config())
            .await
            .unwrap();
        let out = drain(session.subscribe().unwrap()).await;

        let ids = video_ids(&out);
        assert_eq!(seqs(&ids, 1), (0..200).collect::<Vec<_>>());
        assert_eq!(
            seqs(&ids, 2),
            (30..300).collect::<Vec<_>>(),
            "B from its first PAT"
        );
        let pkts = packets(&out);
        let last_a = pkts
            .iter()
            .rposition(|p| video_id(p).is_some_and(|id| id.0 == 1))
            .unwrap();
        let pat = pkts[last_a + 1];
        assert_eq!(ts::pid(pat), ts::PAT_PID);
        assert!(ts::adaptation_field(pat).unwrap().discontinuity);
        assert_eq!(ts::pat_pmt_pids(pat).collect::<Vec<_>>(), vec![PMT_PID]);
        let pmt = pkts[last_a + 2];
        assert_eq!(ts::pid(pmt), PMT_PID);
        assert!(ts::adaptation_field(pmt).unwrap().discontinuity);
        let first_b = pkts[last_a + 3];
        assert_eq!(video_id(first_b), Some((2, 30)));
        assert!(ts::adaptation_field(first_b).unwrap().discontinuity);
        // Only the first packet of each PID is marked.
        let marked = pkts
            .iter()
            .filter(|p| ts::adaptation_field(p).is_some_and(|af| af.discontinuity))
            .count();
        assert_eq!(marked, 3);

        let events = events_until_end(&mut events).await;
        let SessionEvent::FailedOver(failover) = &events[1] else {
            panic!("expected a failover: {events:?}")
        };
        assert_eq!((failover.from.as_str(), failover.to.as_str()), ("A", "B"));
        assert_eq!(failover.reason, FailReason::Stalled);
        // Last byte of A, 1 s of stall, 200 ms to open B, whose first bytes come at once.
        assert_eq!(failover.gap_ms, 1200);
        assert_eq!(engines.excludes.lock()[1], vec!["A".to_string()]);
    }

    async fn next_failover(
        events: &mut mpsc::UnboundedReceiver<SessionEvent>,
    ) -> (EngineKey, EngineKey, FailReason) {
        match events.recv().await {
            Some(SessionEvent::FailedOver(f)) => (f.from, f.to, f.reason),
            other => panic!("expected a failover, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn source_error_eof_and_external_trigger_fail_over() {
        let engines = Engines::new(
            vec![
                ("A", live(1, 5, 0, End::Error)),
                ("B", live(2, 5, 0, End::Eof)),
                ("C", live(3, 100, 0, End::Stall)),
                ("D", live(4, 100, 0, End::Stall)),
            ],
            ms(50),
        );
        let (session, mut events) = SessionHandle::start(engines.clone(), config())
            .await
            .unwrap();
        let viewer = tokio::spawn(drain(session.subscribe().unwrap()));
        assert!(matches!(
            events.recv().await,
            Some(SessionEvent::Started { .. })
        ));
        assert_eq!(
            next_failover(&mut events).await,
            (
                "A".into(),
                "B".into(),
                FailReason::SourceError("boom".into())
            )
        );
        assert_eq!(
            next_failover(&mut events).await,
            ("B".into(), "C".into(), FailReason::SourceEnded)
        );
        session.fail_over("unhealthy");
        assert_eq!(
            next_failover(&mut events).await,
            (
                "C".into(),
                "D".into(),
                FailReason::External("unhealthy".into())
            )
        );
        assert_eq!(session.engine(), "D");
        let excludes = engines.excludes.lock().clone();
        // Each failover excludes the engine that just failed, not every
        // engine that ever failed: a long session may come back to one that
        // recovered.
        assert_eq!(excludes[1..], [vec!["A"], vec!["B"], vec!["C"]]);

        session.close();
        let out = viewer.await.unwrap();
        let ids = video_ids(&out);
        for tag in 1..=3 {
            assert!(!seqs(&ids, tag).is_empty(), "viewer saw engine {tag}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_source_in_time_ends_viewers_cleanly() {
        let engines = Engines::new(vec![("A", live(1, 10, 0, End::Stall))], ms(5000));
        let (session, mut events) = SessionHandle::start(engines, config()).await.unwrap();
        let begin = Instant::now();
        let out = drain(session.subscribe().unwrap()).await;
        assert_eq!(seqs(&video_ids(&out), 1), (0..100).collect::<Vec<_>>());
        // 0.9 s of data, 1 s of stall, and a failover that may take 3 s
        // (opening another engine would take 5).
        assert!(
            begin.elapsed() <= ms(900 + 1000 + 3000),
            "{:?}",
            begin.elapsed()
        );

        let events = events_until_end(&mut events).await;
        assert!(matches!(
            &events[1],
            SessionEvent::Ended {
                reason: EndReason::NoSource {
                    failure: FailReason::Stalled,
                    ..
                }
            }
        ));
        assert!(session.is_ended());
        assert_eq!(session.subscribe().unwrap_err(), SubscribeError::Ended);
    }

    #[tokio::test(start_paused = true)]
    async fn headroom_hides_a_failover_gap() {
        let engines = Engines::new(
            vec![
                ("A", live(1, 100, 0, End::Stall)),
                ("B", live(2, 100, 0, End::Stall)),
            ],
            ms(1000),
        );
        let cfg = SessionConfig {
            headroom: ms(5000),
            ..config()
        };
        // A runs for 10 s.
        let (session, mut events) = SessionHandle::start(engines, cfg).await.unwrap();
        tokio::time::sleep(ms(6000)).await;
        let mut viewer = session.subscribe().unwrap();
        let until = Instant::now() + ms(14_000);
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut out = Vec::new();
        while Instant::now() < until {
            let item = viewer.next().await.unwrap().unwrap();
            worst = worst.max(last.elapsed());
            last = Instant::now();
            out.extend_from_slice(&item);
        }
        let SessionEvent::FailedOver(failover) =
            events.recv().await.and(events.recv().await).unwrap()
        else {
            panic!("expected a failover")
        };
        assert_eq!(failover.gap_ms, 2000);
        assert!(worst <= ms(500), "the viewer waited {worst:?}");
        let ids = video_ids(&out);
        assert!(!seqs(&ids, 2).is_empty(), "the viewer crossed the splice");
        // It joined 5 s behind the live edge (at 6 s, so around chunk 10).
        assert!(seqs(&ids, 1)[0] <= 110, "{:?}", &ids[..3]);
    }

    /// A pool with no engine free: the first open starts one, which takes
    /// `boot` (a container, perhaps a VPN node first).
    struct BootsFirst {
        engines: Arc<Engines>,
        boot: Duration,
    }

    impl SourceProvider for BootsFirst {
        fn open<'a>(
            &'a self,
            exclude: &'a [EngineKey],
        ) -> Pin<Box<dyn Future<Output = Result<Source, OpenError>> + Send + 'a>> {
            Box::pin(async move {
                tokio::time::sleep(self.boot).await;
                self.engines.open(exclude).await
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_viewer_waits_for_an_engine_to_start_longer_than_a_failover_may_take() {
        let boot = ms(8000);
        let slow = |start_timeout| {
            let provider = Arc::new(BootsFirst {
                engines: Engines::new(vec![("A", live(1, 100, 0, End::Eof))], ms(0)),
                boot,
            });
            let cfg = SessionConfig {
                start_timeout,
                ..config()
            };
            SessionHandle::start(provider, cfg)
        };
        // failover_timeout is 3 s: a start held to it gives up.
        let started = Instant::now();
        let Err(refused) = slow(ms(3000)).await else {
            panic!("a source within 3 s")
        };
        assert!(refused.0.contains("timed out"), "{}", refused.0);
        assert_eq!(started.elapsed(), ms(3000));
        // With a start budget that covers the boot, the viewer is served.
        let started = Instant::now();
        let (session, _events) = slow(ms(30_000)).await.expect("started");
        assert!(started.elapsed() >= boot);
        assert_eq!(session.engine(), "A");
    }

    #[tokio::test(start_paused = true)]
    async fn viewers_are_counted_limited_and_freed_on_drop() {
        let engines = Engines::new(vec![("A", live(1, 1000, 0, End::Stall))], ms(0));
        let cfg = SessionConfig {
            max_viewers: 3,
            ..config()
        };
        let (session, mut events) = SessionHandle::start(engines, cfg).await.unwrap();
        let a = session.subscribe().unwrap();
        let b = session.subscribe().unwrap();
        let c = session.subscribe().unwrap();
        assert_eq!(session.viewer_count(), 3);
        assert_eq!(session.subscribe().unwrap_err(), SubscribeError::Full);
        drop(b);
        assert_eq!(session.viewer_count(), 2);
        let d = session.subscribe().unwrap();
        assert_eq!(session.viewer_count(), 3);
        drop((a, c, d));
        assert_eq!(session.viewer_count(), 0);

        // Dropping the last handle closes the session.
        drop(session);
        let events = events_until_end(&mut events).await;
        assert_eq!(
            events.last(),
            Some(&SessionEvent::Ended {
                reason: EndReason::Closed
            })
        );
    }
}
