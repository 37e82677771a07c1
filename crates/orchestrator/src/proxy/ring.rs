//! A bounded ring of chunks shared by one writer (the session's ingest) and any
//! number of readers (viewers).
//!
//! Each chunk is a `Bytes` of whole 188-byte packets at a monotonically
//! increasing byte offset. A reader is only a cursor (`u64` offset): reading
//! hands it a clone of the chunk's `Bytes` (a reference count, no copy), so a
//! viewer costs O(1) memory whatever its lag, and the ring's memory is bounded
//! by its byte budget alone. The writer never waits for readers: the oldest
//! chunks are dropped when the budget is exceeded, and a reader whose cursor
//! fell behind them is told so ([`Read::Lagged`]) and rejoins.
//!
//! The lock is a `parking_lot::Mutex` held only to push or pop a chunk or
//! clone one out; readers wait on a `watch` channel, outside the lock.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ts;

/// How far back from its target position a joining reader may start so that
/// it begins at a PAT or a random-access (keyframe) packet.
const JOIN_LOOKBACK: Duration = Duration::from_secs(1);

/// One run of whole packets in the ring.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Byte offset of the chunk's first byte in the session's output.
    pub offset: u64,
    pub data: Bytes,
    /// When the chunk's bytes arrived from the engine.
    pub arrived: Instant,
    /// Session media time at the end of the chunk (see `session`): continuous
    /// across failovers, it is what headroom viewers are paced by.
    pub media: Duration,
    /// The chunk contains a PAT packet.
    pub has_pat: bool,
    /// The chunk contains a packet with random_access_indicator set.
    pub has_random_access: bool,
    /// The chunk is the first of a new source after a failover (it starts
    /// with that source's first PAT): the HLS segmenter starts a new
    /// segment, marked as a discontinuity, here.
    pub splice: bool,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    fn good_start(&self) -> bool {
        self.has_pat || self.has_random_access
    }
}

/// What a reader finds at its cursor.
#[derive(Debug)]
pub enum Read {
    /// The chunk that starts at the cursor.
    Chunk(Chunk),
    /// The cursor is older than the oldest chunk kept: the reader must rejoin.
    Lagged,
    /// Nothing new yet; `closed` when nothing more will come.
    Empty { closed: bool },
    /// The ring was closed without draining: stop now.
    Aborted,
}

/// Where a new (or lagged) reader starts.
#[derive(Debug)]
pub struct Join {
    /// The latest PAT and PMT packets, to be sent before anything else so the
    /// player can decode from the first chunk on.
    pub prefix: Vec<Bytes>,
    pub cursor: u64,
    /// Media time of the chunk at `cursor`, `None` when the ring is empty.
    pub media: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Open,
    /// Readers get what is left, then the end.
    Drain,
    /// Readers stop at once.
    Abort,
}

#[derive(Debug)]
struct State {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// Offset of the next byte to be written.
    end: u64,
    pat: Option<Bytes>,
    /// The latest PMT packet of each PMT PID the latest PAT announces.
    pmts: Vec<(u16, Bytes)>,
    closed: Closed,
    /// Chunks dropped by the budget.
    evicted: u64,
}

/// The shared ring; see the module docs.
#[derive(Debug)]
pub struct Ring {
    state: Mutex<State>,
    budget: usize,
    /// Chunks further than this behind the newest (in media time) are
    /// dropped even under the budget: no viewer joins that far back, so
    /// keeping them would only cost memory (sessions × budget).
    retain: Duration,
    /// Carries the write offset; readers wait on it for new data or closing.
    changed: watch::Sender<u64>,
}

impl Ring {
    /// A ring that keeps at most `budget` bytes of chunks, and none more than
    /// `retain` of media time behind the newest (always at least the newest
    /// chunk, even when it alone is larger).
    pub fn new(budget: usize, retain: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                bytes: 0,
                end: 0,
                pat: None,
                pmts: Vec::new(),
                closed: Closed::Open,
                evicted: 0,
            }),
            budget,
            retain,
            changed: watch::Sender::new(0),
        }
    }

    /// Appends a chunk at the write offset and wakes readers. `psi` holds the
    /// PAT and PMT packets found in it, in order, as `(pid, packet)`: they
    /// become the prefix new readers get. Returns the chunk's offset.
    pub fn push(
        &self,
        data: Bytes,
        arrived: Instant,
        media: Duration,
        has_random_access: bool,
        psi: &[(u16, Bytes)],
        splice: bool,
    ) -> u64 {
        let offset;
        {
            let mut st = self.state.lock();
            offset = st.end;
            for (pid, pkt) in psi {
                if *pid == ts::PAT_PID {
                    // Forget PMTs the new PAT no longer announces.
                    st.pmts
                        .retain(|(p, _)| ts::pat_pmt_pids(pkt).any(|q| q == *p));
                    st.pat = Some(pkt.clone());
                } else if let Some(slot) = st.pmts.iter_mut().find(|(p, _)| p == pid) {
                    slot.1 = pkt.clone();
                } else {
                    st.pmts.push((*pid, pkt.clone()));
                }
            }
            st.end += data.len() as u64;
            st.bytes += data.len();
            st.chunks.push_back(Chunk {
                offset,
                data,
                arrived,
                media,
                has_pat: psi.iter().any(|(pid, _)| *pid == ts::PAT_PID),
                has_random_access,
                splice,
            });
            let oldest_kept = media.saturating_sub(self.retain);
            while st.chunks.len() > 1
                && (st.bytes > self.budget
                    || st.chunks.front().is_some_and(|c| c.media < oldest_kept))
            {
                if let Some(old) = st.chunks.pop_front() {
                    st.bytes -= old.data.len();
                    st.evicted += 1;
                }
            }
        }
        self.changed.send_replace(offset);
        offset
    }

    /// The chunk at `cursor` (a chunk boundary handed out by [`Ring::join`]
    /// or a previous read).
    pub fn read(&self, cursor: u64) -> Read {
        let st = self.state.lock();
        if st.closed == Closed::Abort {
            return Read::Aborted;
        }
        match st.chunks.front() {
            Some(front) if cursor < front.offset => return Read::Lagged,
            _ => {}
        }
        if cursor >= st.end {
            return Read::Empty {
                closed: st.closed != Closed::Open,
            };
        }
        let idx = st.chunks.partition_point(|c| c.offset < cursor);
        match st.chunks.get(idx) {
            Some(chunk) => Read::Chunk(chunk.clone()),
            // Not a chunk boundary: cannot happen with cursors from this ring;
            // treat like a lag so the reader lands on a boundary again.
            None => Read::Lagged,
        }
    }

    /// Where a reader starts: `headroom` of media time behind the live edge
    /// (or at the oldest chunk when the ring holds less), moved back by up to
    /// [`JOIN_LOOKBACK`] to the latest chunk holding a PAT or a random-access
    /// packet, so the player can start decoding soon; plus the PAT/PMT prefix.
    pub fn join(&self, headroom: Duration) -> Join {
        let st = self.state.lock();
        let prefix = st
            .pat
            .iter()
            .chain(st.pmts.iter().map(|(_, p)| p))
            .cloned()
            .collect();
        let Some(live) = st.chunks.back() else {
            return Join {
                prefix,
                cursor: st.end,
                media: None,
            };
        };
        let target = if headroom.is_zero() {
            st.chunks.len() - 1
        } else {
            let at = live.media.saturating_sub(headroom);
            st.chunks
                .partition_point(|c| c.media <= at)
                .saturating_sub(1)
        };
        let floor = st.chunks[target].media.saturating_sub(JOIN_LOOKBACK);
        let start = (0..=target)
            .rev()
            .take_while(|&i| st.chunks[i].media >= floor)
            .find(|&i| st.chunks[i].good_start())
            .unwrap_or(target);
        let chunk = &st.chunks[start];
        Join {
            prefix,
            cursor: chunk.offset,
            media: Some(chunk.media),
        }
    }

    /// The offset of the oldest chunk kept (the write offset when empty): where
    /// a reader that wants everything still held starts.
    pub fn oldest(&self) -> u64 {
        let st = self.state.lock();
        st.chunks.front().map_or(st.end, |c| c.offset)
    }

    /// Ends the ring: with `drain`, readers first get what is left.
    pub fn close(&self, drain: bool) {
        {
            let mut st = self.state.lock();
            // An abort wins over a drain, never the other way round.
            if st.closed != Closed::Abort {
                st.closed = if drain { Closed::Drain } else { Closed::Abort };
            }
        }
        self.changed.send_modify(|_| {});
    }

    /// A receiver that wakes when a chunk is pushed or the ring closes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Bytes currently held (never above the budget, save a single oversized chunk).
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Media time at the live edge.
    pub fn live_media(&self) -> Option<Duration> {
        self.state.lock().chunks.back().map(|c| c.media)
    }

    /// Chunks dropped so far to stay within the budget.
    pub fn evicted(&self) -> u64 {
        self.state.lock().evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ts::testing::*;
    use crate::proxy::ts::PACKET_SIZE;

    fn chunk(n: u32, tag: u8) -> Bytes {
        (0..n)
            .flat_map(|i| video(i as u8, None, tag, i))
            .collect::<Vec<_>>()
            .into()
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn chunks_older_than_the_retention_go_even_under_the_budget() {
        // A large budget, 2 s of retention: memory follows what viewers use.
        let ring = Ring::new(1 << 30, Duration::from_secs(2));
        let now = Instant::now();
        for second in 0..10u64 {
            ring.push(
                chunk(4, 1),
                now,
                Duration::from_secs(second),
                false,
                &[],
                false,
            );
        }
        // Media 7, 8 and 9 s are within 2 s of the newest (9 s).
        assert_eq!(ring.bytes(), 3 * 4 * PACKET_SIZE);
        assert_eq!(ring.evicted(), 7);
    }

    #[tokio::test]
    async fn readers_share_chunks_and_lag_past_the_budget() {
        let ring = Ring::new(10 * PACKET_SIZE, Duration::from_secs(3600));
        let now = Instant::now();
        let a = chunk(4, 1);
        ring.push(a.clone(), now, ms(0), false, &[], false);
        let Read::Chunk(got) = ring.read(0) else {
            panic!("expected a chunk")
        };
        assert_eq!(got.data.as_ptr(), a.as_ptr(), "no copy per reader");
        assert!(matches!(
            ring.read(got.end()),
            Read::Empty { closed: false }
        ));

        ring.push(chunk(4, 2), now, ms(10), false, &[], false);
        ring.push(chunk(4, 3), now, ms(20), false, &[], false);
        // 12 packets > 10: the first chunk is gone.
        assert_eq!(ring.bytes(), 8 * PACKET_SIZE);
        assert_eq!(ring.evicted(), 1);
        assert!(matches!(ring.read(0), Read::Lagged));
        let j = ring.join(Duration::ZERO);
        assert_eq!(j.cursor, 8 * PACKET_SIZE as u64, "the newest chunk");
    }

    #[tokio::test]
    async fn join_prefers_a_recent_pat_and_hands_out_psi_first() {
        let ring = Ring::new(1 << 20, Duration::from_secs(3600));
        let now = Instant::now();
        let pat = Bytes::copy_from_slice(&pat(0));
        let pmt = Bytes::copy_from_slice(&pmt(0));
        ring.push(chunk(2, 0), now, ms(0), false, &[], false);
        let with_pat = ring.push(
            chunk(2, 1),
            now,
            ms(100),
            false,
            &[(0, pat.clone()), (PMT_PID, pmt.clone())],
            false,
        );
        ring.push(chunk(2, 2), now, ms(200), false, &[], false);
        let newest = ring.push(chunk(2, 3), now, ms(300), false, &[], false);
        let j = ring.join(Duration::ZERO);
        assert_eq!(j.cursor, with_pat);
        assert_eq!(j.prefix, vec![pat.clone(), pmt.clone()]);

        // More than a second later the PAT is too old to go back to.
        let late = ring.push(chunk(2, 4), now, ms(1500), false, &[], false);
        assert_eq!(ring.join(Duration::ZERO).cursor, late);
        assert!(late > newest);

        // With headroom: the chunk that far behind the live edge.
        let j = ring.join(ms(1300));
        assert_eq!(j.cursor, with_pat);
        assert_eq!(j.media, Some(ms(100)));
    }

    #[tokio::test]
    async fn close_drains_or_aborts() {
        let ring = Ring::new(1 << 20, Duration::from_secs(3600));
        ring.push(chunk(1, 0), Instant::now(), ms(0), false, &[], false);
        let mut rx = ring.watch();
        rx.borrow_and_update();
        ring.close(true);
        assert!(rx.has_changed().unwrap());
        assert!(matches!(ring.read(0), Read::Chunk(_)));
        assert!(matches!(
            ring.read(PACKET_SIZE as u64),
            Read::Empty { closed: true }
        ));
        ring.close(false);
        assert!(matches!(ring.read(0), Read::Aborted));
        ring.close(true);
        assert!(matches!(ring.read(0), Read::Aborted));
    }
}
