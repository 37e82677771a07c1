//! HLS output of a shared session: its bytes, read once through a
//! [`Tap`], cut into segments of about the target duration, kept in a sliding
//! window of `window` segments in memory and served to every HLS viewer as
//! the same `Bytes`.
//!
//! # Cutting
//! Segments are cut on the *timing PID* (the PMT's first video stream, else its
//! first stream) at a packet that starts a PES with a PTS and, for video, has
//! random_access_indicator set (a keyframe), once the segment is at least the
//! target long. When the keyframe is preceded by a PAT (and PMT) with no
//! packet of the timing PID in between, as muxers write them, the cut goes
//! before that PAT; otherwise copies of the latest PAT and PMT are put first.
//! Either way every segment starts with PAT, PMT and a keyframe, so it decodes
//! alone. A stream without keyframe flags is cut at a unit start after
//! [`FORCE_CUT_TARGETS`] targets.
//!
//! # Timing
//! A segment's duration is the PTS distance between its keyframe and the next
//! segment's (90 kHz, wrap-safe), so `#EXTINF` matches what a demuxer
//! measures. A segment closed early (a failover, data lost, a jump in the
//! source's clock) lasts its largest PTS distance plus one frame.
//!
//! # Failover
//! The session marks the first chunk of a new engine's stream
//! ([`Chunk::splice`]): the segment being built ends there, the PSI is learnt
//! again, and the next segment (from the new source's first keyframe) carries
//! `#EXT-X-DISCONTINUITY`. The playlist goes on with the same media sequence;
//! `#EXT-X-DISCONTINUITY-SEQUENCE` counts the discontinuities that slid out.
//!
//! # Viewers
//! HLS has no connection to watch: a viewer is a token in its segment URLs,
//! alive while it fetches. [`HlsStream::active_viewers`] counts the tokens
//! seen within `viewer_timeout`; the control plane adds them to the session's
//! viewers, so a session with only HLS viewers lives (and ends) like one with
//! MPEG-TS players.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ring::Chunk;
use super::session::{Tap, Tapped};
use super::ts::{self, PACKET_SIZE};

const TICKS_PER_SECOND: u64 = 90_000;
/// A segment that found no keyframe for this many targets is cut at the next
/// unit start of its timing PID.
pub const FORCE_CUT_TARGETS: u64 = 3;
/// A segment is cut at the next unit start beyond this size, keyframe or not:
/// memory stays bounded whatever the stream.
const MAX_SEGMENT_BYTES: usize = 32 << 20;
/// A PTS step larger than this is a jump in the source's clock.
const MAX_PTS_STEP: u64 = 60 * TICKS_PER_SECOND;
/// Frame duration assumed until one is measured (40 ms, 25 fps).
const DEFAULT_FRAME: u64 = TICKS_PER_SECOND / 25;
/// A keyframe this close to the target (5 ms) counts as reaching it.
const CUT_TOLERANCE: u64 = TICKS_PER_SECOND / 200;
/// A viewer token that has not been used for this long is forgotten (after
/// `viewer_timeout` it no longer counts as a viewer, but can come back).
const TOKEN_KEEP: Duration = Duration::from_secs(600);

/// HLS settings.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    /// Segment duration aimed at (segments are cut at keyframes, so they last
    /// at least this, up to one keyframe interval more).
    pub target: Duration,
    /// Segments in the playlist (and in memory).
    pub window: usize,
    /// A viewer that fetched nothing for this long no longer counts.
    pub viewer_timeout: Duration,
    /// How long a first playlist request waits for the first segment.
    pub first_segment_wait: Duration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_secs(2),
            window: 6,
            viewer_timeout: Duration::from_secs(8),
            first_segment_wait: Duration::from_secs(30),
        }
    }
}

/// A finished segment, before it gets its sequence number.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut {
    pub data: Bytes,
    pub duration: Duration,
    pub discontinuity: bool,
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks * 1_000_000_000 / TICKS_PER_SECOND)
}

/// PTS distance from `from` to `to`, modulo the 33-bit wrap.
fn pts_distance(from: u64, to: u64) -> u64 {
    (to + ts::PTS_WRAP - from) % ts::PTS_WRAP
}

#[derive(Debug)]
struct Building {
    buf: BytesMut,
    start_pts: u64,
    /// Largest PTS distance from the start seen on the timing PID.
    span: u64,
    /// Offset in `buf` of the PAT that began the latest run of PSI, while no
    /// packet of the timing PID has followed it: where a cut may go.
    psi_at: Option<usize>,
    /// Offset in `buf` where the latest PES of the timing PID (a frame)
    /// starts, and its PTS distance from the start: a segment closed by a
    /// break ends before it, as that frame may have been cut off.
    unit_at: Option<usize>,
    unit_span: u64,
    discontinuity: bool,
}

impl Building {
    fn finish(self, span: u64) -> Cut {
        Cut {
            data: self.buf.freeze(),
            duration: ticks_to_duration(span),
            discontinuity: self.discontinuity,
        }
    }
}

/// Cuts a transport stream into segments; see the module docs.
#[derive(Debug)]
pub struct Segmenter {
    target: u64,
    pat: Option<Bytes>,
    pmt_pids: Vec<u16>,
    pmts: Vec<(u16, Bytes)>,
    timing_pid: Option<u16>,
    timing_is_video: bool,
    building: Option<Building>,
    /// A segment was begun since the start: a break is a discontinuity.
    started: bool,
    /// The next segment begins a discontinuity.
    discontinuity: bool,
    last_pts: Option<u64>,
    frame: u64,
    last_size: usize,
}

impl Segmenter {
    pub fn new(target: Duration) -> Self {
        Self {
            target: (target.as_nanos() * u128::from(TICKS_PER_SECOND) / 1_000_000_000) as u64,
            pat: None,
            pmt_pids: Vec::new(),
            pmts: Vec::new(),
            timing_pid: None,
            timing_is_video: false,
            building: None,
            started: false,
            discontinuity: false,
            last_pts: None,
            frame: DEFAULT_FRAME,
            last_size: 0,
        }
    }

    /// Feeds one ring chunk; finished segments are pushed onto `out`.
    pub fn push(&mut self, chunk: &Chunk, out: &mut Vec<Cut>) {
        if chunk.splice {
            self.break_here(out);
        }
        for p in chunk.data.chunks_exact(PACKET_SIZE) {
            self.packet(p, out);
        }
    }

    /// A new source begins or data was lost: the segment being built ends
    /// here, the PSI is learnt again, and the next segment starts a
    /// discontinuity at the next keyframe.
    pub fn break_here(&mut self, out: &mut Vec<Cut>) {
        if let Some(mut b) = self.building.take() {
            // The old source stopped somewhere in its last frame (and in the
            // audio around it): the segment ends where that frame began.
            // With nothing but the keyframe, which may be cut off itself,
            // there is no segment.
            if let Some(at) = b.unit_at {
                b.buf.truncate(at);
                let span = b.unit_span;
                out.push(b.finish(span));
            }
        }
        self.discontinuity = self.started;
        self.pat = None;
        self.pmt_pids.clear();
        self.pmts.clear();
        self.timing_pid = None;
        self.last_pts = None;
    }

    fn packet(&mut self, p: &[u8], out: &mut Vec<Cut>) {
        let pid = ts::pid(p);
        if pid == ts::PAT_PID {
            if ts::pusi(p) {
                self.learn_pat(p);
                if let Some(b) = &mut self.building {
                    b.psi_at.get_or_insert(b.buf.len());
                }
            }
            self.append(p);
            return;
        }
        if self.pmt_pids.contains(&pid) {
            if ts::pusi(p) {
                self.learn_pmt(pid, p);
            }
            self.append(p);
            return;
        }
        if Some(pid) != self.timing_pid {
            self.append(p);
            return;
        }
        let pts = ts::pes_pts(p);
        let key = pts.is_some()
            && (!self.timing_is_video
                || ts::adaptation_field(p).is_some_and(|af| af.random_access));
        if let Some(pts) = pts {
            self.note_pts(pts);
        }
        let Some(b) = &mut self.building else {
            // Waiting for the first keyframe (after the PSI): nothing before
            // it would decode.
            if let (true, Some(pts), true) = (key, pts, self.pat.is_some()) {
                self.begin(pts, p, None);
            }
            return;
        };
        let Some(pts) = pts else {
            b.psi_at = None;
            b.buf.extend_from_slice(p);
            return;
        };
        let span = pts_distance(b.start_pts, pts);
        if span > MAX_PTS_STEP {
            // The source's clock jumped: what is built ends, the rest is a
            // discontinuity.
            let b = self.building.take().expect("matched above");
            let span = b.span + self.frame;
            out.push(b.finish(span));
            self.discontinuity = true;
            if key {
                self.begin(pts, p, None);
            }
            return;
        }
        let due = (key && span + CUT_TOLERANCE >= self.target)
            || span >= FORCE_CUT_TARGETS * self.target
            || b.buf.len() >= MAX_SEGMENT_BYTES;
        if !due {
            b.span = b.span.max(span);
            b.psi_at = None;
            b.unit_at = Some(b.buf.len());
            b.unit_span = span;
            b.buf.extend_from_slice(p);
            return;
        }
        let mut b = self.building.take().expect("matched above");
        let tail = b.psi_at.map(|at| b.buf.split_off(at));
        self.last_size = b.buf.len();
        out.push(b.finish(span));
        self.begin(pts, p, tail);
    }

    /// Starts a segment at `key`, after `psi` (the PAT and PMT that preceded
    /// it in the stream) or else copies of the latest PAT and PMT.
    fn begin(&mut self, pts: u64, key: &[u8], psi: Option<BytesMut>) {
        let mut buf = psi.unwrap_or_else(|| {
            let mut buf = BytesMut::with_capacity(self.last_size + self.last_size / 4);
            for pkt in self.pat.iter().chain(self.pmts.iter().map(|(_, p)| p)) {
                buf.extend_from_slice(pkt);
            }
            buf
        });
        buf.extend_from_slice(key);
        self.building = Some(Building {
            buf,
            start_pts: pts,
            span: 0,
            psi_at: None,
            unit_at: None,
            unit_span: 0,
            discontinuity: std::mem::take(&mut self.discontinuity),
        });
        self.started = true;
    }

    fn append(&mut self, p: &[u8]) {
        if let Some(b) = &mut self.building {
            if b.buf.len() >= 2 * MAX_SEGMENT_BYTES {
                // The timing PID went silent (no PTS to cut on): drop what was
                // built rather than grow, and start again at a keyframe.
                self.building = None;
                self.discontinuity = true;
                return;
            }
            b.buf.extend_from_slice(p);
        }
    }

    fn note_pts(&mut self, pts: u64) {
        if let Some(last) = self.last_pts {
            let step = pts_distance(last, pts);
            if step > 0 && step < TICKS_PER_SECOND {
                self.frame = step;
            }
        }
        self.last_pts = Some(pts);
    }

    fn learn_pat(&mut self, p: &[u8]) {
        if !ts::pat_pmt_pids(p).eq(self.pmt_pids.iter().copied()) {
            self.pmt_pids = ts::pat_pmt_pids(p).collect();
            let listed = &self.pmt_pids;
            self.pmts.retain(|(pid, _)| listed.contains(pid));
        }
        self.pat = Some(Bytes::copy_from_slice(p));
    }

    fn learn_pmt(&mut self, pid: u16, p: &[u8]) {
        let packet = Bytes::copy_from_slice(p);
        match self.pmts.iter_mut().find(|(q, _)| *q == pid) {
            Some(slot) => slot.1 = packet,
            None => self.pmts.push((pid, packet)),
        }
        let streams = ts::pmt_streams(p);
        let video = streams
            .iter()
            .find(|(kind, _)| ts::is_video_stream_type(*kind));
        let timing = video.or(streams.first()).map(|(_, pid)| *pid);
        if timing.is_some() && timing != self.timing_pid {
            self.timing_pid = timing;
            self.timing_is_video = video.is_some();
            self.last_pts = None;
        }
    }
}

/// One segment of the window.
#[derive(Debug)]
pub struct Segment {
    pub seq: u64,
    pub data: Bytes,
    pub duration: Duration,
    pub discontinuity: bool,
}

#[derive(Debug, Default)]
struct Window {
    segments: VecDeque<Arc<Segment>>,
    next_seq: u64,
    /// Discontinuities that slid out of the window.
    discontinuity_seq: u64,
    /// `#EXT-X-TARGETDURATION`: the configured target, raised to the longest
    /// segment seen (rounded), never lowered.
    target_duration: u64,
    ended: bool,
}

/// What a segment request finds.
#[derive(Debug)]
pub enum Lookup {
    Found(Bytes),
    /// Older than the window's first segment.
    SlidOut {
        oldest: u64,
    },
    /// Not produced (yet).
    NotYet {
        newest: Option<u64>,
    },
}

#[derive(Debug)]
struct ViewerSeen {
    last: Instant,
    fingerprint: u64,
}

/// The HLS side of one session: the segment window and its viewers.
#[derive(Debug)]
pub struct HlsStream {
    config: HlsConfig,
    window: Mutex<Window>,
    /// The next sequence number; bumped by every segment, and once more at the end.
    produced: watch::Sender<u64>,
    viewers: Mutex<HashMap<String, ViewerSeen>>,
}

impl HlsStream {
    /// Starts segmenting what `tap` reads, in a task of its own that ends
    /// with the session.
    pub fn start(tap: Tap, config: HlsConfig) -> Arc<Self> {
        let stream = Arc::new(Self {
            window: Mutex::new(Window {
                target_duration: (config.target.as_secs_f64().round() as u64).max(1),
                ..Window::default()
            }),
            config,
            produced: watch::Sender::new(0),
            viewers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(stream.clone().run(tap));
        stream
    }

    async fn run(self: Arc<Self>, mut tap: Tap) {
        let mut segmenter = Segmenter::new(self.config.target);
        let mut cuts = Vec::new();
        loop {
            match tap.next().await {
                Tapped::Chunk(chunk) => segmenter.push(&chunk, &mut cuts),
                Tapped::Lagged => segmenter.break_here(&mut cuts),
                Tapped::End => break,
            }
            for cut in cuts.drain(..) {
                self.add(cut);
            }
        }
        self.window.lock().ended = true;
        self.produced.send_modify(|n| *n += 1);
    }

    fn add(&self, cut: Cut) {
        let next = {
            let mut w = self.window.lock();
            let seq = w.next_seq;
            w.next_seq += 1;
            w.target_duration = w
                .target_duration
                .max(cut.duration.as_secs_f64().round() as u64);
            w.segments.push_back(Arc::new(Segment {
                seq,
                data: cut.data,
                duration: cut.duration,
                discontinuity: cut.discontinuity,
            }));
            while w.segments.len() > self.config.window.max(1) {
                if let Some(old) = w.segments.pop_front() {
                    if old.discontinuity {
                        w.discontinuity_seq += 1;
                    }
                }
            }
            w.next_seq
        };
        self.produced.send_replace(next);
    }

    /// Whether the session behind it ended.
    pub fn is_ended(&self) -> bool {
        self.window.lock().ended
    }

    /// Waits until the window holds a segment or the stream ended, at most
    /// `first_segment_wait`. Answers whether there is a segment.
    pub async fn wait_first_segment(&self) -> bool {
        let mut rx = self.produced.subscribe();
        let wait = rx.wait_for(|n| *n > 0);
        let _ = tokio::time::timeout(self.config.first_segment_wait, wait).await;
        !self.window.lock().segments.is_empty()
    }

    /// The media playlist; segment URIs are `<seq>.ts`, relative to the
    /// playlist's own URL.
    pub fn playlist(&self) -> String {
        let w = self.window.lock();
        let mut out = String::with_capacity(128 + w.segments.len() * 48);
        let first = w.segments.front().map_or(w.next_seq, |s| s.seq);
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
            w.target_duration
        );
        if w.discontinuity_seq > 0 {
            let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", w.discontinuity_seq);
        }
        for s in &w.segments {
            if s.discontinuity {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = write!(
                out,
                "#EXTINF:{:.3},\n{}.ts\n",
                s.duration.as_secs_f64(),
                s.seq
            );
        }
        if w.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }

    /// Segment `seq`, shared (a reference count, not a copy).
    pub fn segment(&self, seq: u64) -> Lookup {
        let w = self.window.lock();
        match w.segments.front() {
            Some(first) if seq < first.seq => Lookup::SlidOut { oldest: first.seq },
            Some(first) => match w.segments.get((seq - first.seq) as usize) {
                Some(s) => Lookup::Found(s.data.clone()),
                None => Lookup::NotYet {
                    newest: w.segments.back().map(|s| s.seq),
                },
            },
            None if seq < w.next_seq => Lookup::SlidOut { oldest: w.next_seq },
            None => Lookup::NotYet { newest: None },
        }
    }

    /// Bytes held by the window.
    pub fn bytes(&self) -> usize {
        self.window
            .lock()
            .segments
            .iter()
            .map(|s| s.data.len())
            .sum()
    }

    /// A viewer token for a client: the live token of the same `fingerprint`
    /// (a player reloading the first URL), or a new one.
    pub fn add_viewer(&self, fingerprint: u64) -> String {
        let now = Instant::now();
        let mut viewers = self.viewers.lock();
        let reuse = viewers.iter_mut().find(|(_, v)| {
            v.fingerprint == fingerprint
                && now.saturating_duration_since(v.last) < self.config.viewer_timeout
        });
        if let Some((token, seen)) = reuse {
            seen.last = now;
            return token.clone();
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        viewers.insert(
            token.clone(),
            ViewerSeen {
                last: now,
                fingerprint,
            },
        );
        token
    }

    /// Records a fetch by `token`; false for a token this stream does not know.
    pub fn touch(&self, token: &str) -> bool {
        match self.viewers.lock().get_mut(token) {
            Some(seen) => {
                seen.last = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Viewers that fetched within `viewer_timeout`.
    pub fn active_viewers(&self) -> usize {
        let now = Instant::now();
        self.viewers
            .lock()
            .values()
            .filter(|v| now.saturating_duration_since(v.last) < self.config.viewer_timeout)
            .count()
    }

    /// Forgets tokens unused for a long while; answers them.
    pub fn forget_idle(&self) -> Vec<String> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.viewers.lock().retain(|token, v| {
            let keep = now.saturating_duration_since(v.last) < TOKEN_KEEP;
            if !keep {
                gone.push(token.clone());
            }
            keep
        });
        gone
    }

    /// Every token, for the cleanup when the session ends.
    pub fn tokens(&self) -> Vec<String> {
        self.viewers.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ts::testing::*;

    /// A video packet starting a PES with `pts`; a keyframe when `key`.
    fn pes(cc: u8, pts: u64, key: bool) -> [u8; PACKET_SIZE] {
        let mut p = video(cc, key.then_some(pts * 300), 9, u32::from(cc));
        p[1] |= 0x40;
        let at = if key { 12 } else { 4 };
        let header = pes_header(pts);
        p[at..at + header.len()].copy_from_slice(&header);
        p
    }

    fn chunk(packets: &[[u8; PACKET_SIZE]], splice: bool) -> Chunk {
        Chunk {
            offset: 0,
            data: packets.concat().into(),
            arrived: Instant::now(),
            media: Duration::ZERO,
            has_pat: false,
            has_random_access: false,
            splice,
        }
    }

    /// `seconds` of 25 fps video from `pts0`, a keyframe every second led by
    /// PAT and PMT (as ffmpeg writes it).
    fn stream(pts0: u64, seconds: u64) -> Vec<[u8; PACKET_SIZE]> {
        let mut out = Vec::new();
        for f in 0..seconds * 25 {
            let pts = pts0 + f * 3600;
            if f % 25 == 0 {
                out.push(pat(f as u8));
                out.push(pmt(f as u8));
            }
            out.push(pes(f as u8, pts, f % 25 == 0));
            out.push(video(f as u8, None, 9, 0));
        }
        out
    }

    fn pids(data: &[u8]) -> Vec<u16> {
        data.chunks_exact(PACKET_SIZE).map(ts::pid).collect()
    }

    #[tokio::test]
    async fn cuts_at_keyframes_before_their_psi_with_pts_durations() {
        let mut seg = Segmenter::new(Duration::from_secs(2));
        let mut out = Vec::new();
        // Joined mid-GOP: the first packets (before a PAT) are dropped.
        let mut packets = vec![video(0, None, 9, 0); 3];
        packets.extend(stream(900_000, 7));
        seg.push(&chunk(&packets, false), &mut out);
        assert_eq!(out.len(), 3, "0-2 s, 2-4 s, 4-6 s; 6-7 s still building");
        for cut in &out {
            assert_eq!(cut.duration, Duration::from_secs(2));
            assert!(!cut.discontinuity);
            // PAT, PMT, then the keyframe: each decodes alone.
            let pids = pids(&cut.data);
            assert_eq!(&pids[..3], &[ts::PAT_PID, PMT_PID, VIDEO_PID]);
            let key = &cut.data[2 * PACKET_SIZE..3 * PACKET_SIZE];
            assert!(ts::adaptation_field(key).unwrap().random_access);
            // The next segment's PAT is not left at the end of this one.
            assert_eq!(*pids.last().unwrap(), VIDEO_PID);
            assert_eq!(cut.data.len(), (2 * 2 + 2 * 50) * PACKET_SIZE);
        }
    }

    #[tokio::test]
    async fn a_splice_closes_the_segment_and_marks_the_next_one() {
        let mut seg = Segmenter::new(Duration::from_secs(2));
        let mut out = Vec::new();
        seg.push(&chunk(&stream(0, 3), false), &mut out);
        assert_eq!(out.len(), 1);
        // A new source with another clock, starting at its PAT.
        seg.push(&chunk(&stream(5_000_000, 5), true), &mut out);
        assert_eq!(out.len(), 4);
        // The 1 s built before the splice, but its last frame (which may be
        // cut off): 24 frames.
        assert_eq!(out[1].duration, Duration::from_millis(960));
        assert_eq!(out[1].data.len(), (2 + 24 * 2) * PACKET_SIZE);
        assert!(!out[1].discontinuity);
        assert!(out[2].discontinuity);
        assert_eq!(out[2].duration, Duration::from_secs(2));
        assert_eq!(&pids(&out[2].data)[..3], &[ts::PAT_PID, PMT_PID, VIDEO_PID]);
    }

    #[tokio::test]
    async fn keyframes_without_psi_before_them_get_copies_of_it() {
        let mut seg = Segmenter::new(Duration::from_secs(1));
        let mut out = Vec::new();
        let mut packets = vec![pat(0), pmt(0)];
        for f in 0..75u64 {
            packets.push(pes(f as u8, f * 3600, f % 25 == 0));
        }
        seg.push(&chunk(&packets, false), &mut out);
        assert_eq!(out.len(), 2);
        for cut in &out {
            assert_eq!(&pids(&cut.data)[..3], &[ts::PAT_PID, PMT_PID, VIDEO_PID]);
            assert_eq!(cut.data.len(), (2 + 25) * PACKET_SIZE);
        }
    }

    #[tokio::test]
    async fn the_window_slides_and_counts_discontinuities() {
        let hls = HlsStream {
            config: HlsConfig {
                window: 3,
                ..HlsConfig::default()
            },
            window: Mutex::new(Window {
                target_duration: 2,
                ..Window::default()
            }),
            produced: watch::Sender::new(0),
            viewers: Mutex::new(HashMap::new()),
        };
        for i in 0..5u8 {
            hls.add(Cut {
                data: Bytes::from(vec![i; 10]),
                duration: Duration::from_millis(2000 + u64::from(i) * 300),
                discontinuity: i == 1 || i == 3,
            });
        }
        let text = hls.playlist();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:3\n"), "{text}");
        assert!(
            text.ends_with("#EXTINF:2.600,\n2.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:2.900,\n3.ts\n#EXTINF:3.200,\n4.ts\n"),
            "{text}"
        );
        assert!(matches!(hls.segment(1), Lookup::SlidOut { oldest: 2 }));
        assert!(matches!(hls.segment(4), Lookup::Found(b) if b[0] == 4));
        assert!(matches!(hls.segment(5), Lookup::NotYet { newest: Some(4) }));
        assert_eq!(hls.bytes(), 30);

        let a = hls.add_viewer(1);
        assert_eq!(hls.add_viewer(1), a, "a reload of the same player");
        let b = hls.add_viewer(2);
        assert_ne!(a, b);
        assert_eq!(hls.active_viewers(), 2);
        assert!(hls.touch(&a));
        assert!(!hls.touch("nope"));
    }
}
