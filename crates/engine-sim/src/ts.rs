//! Endless MPEG-TS bodies at a live stream's pace: the `--ts-file` broadcast (see
//! tsloop.rs), or null packets without one.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use tokio::time::{interval, MissedTickBehavior};

use crate::engine::Engine;
use crate::tsloop::{TsLoop, PACKET_LEN};

/// 348 packets = 65 424 bytes, about 64 KiB per tick: ~5 Mbit/s, an HD live stream.
const PACKETS_PER_CHUNK: usize = 348;
const TICK: Duration = Duration::from_millis(100);

/// One chunk of null packets (PID 0x1FFF, payload only), built once and shared.
fn chunk() -> Bytes {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    CHUNK
        .get_or_init(|| {
            let mut packet = [0xFF_u8; PACKET_LEN];
            packet[..4].copy_from_slice(&[0x47, 0x1F, 0xFF, 0x10]);
            Bytes::from(packet.repeat(PACKETS_PER_CHUNK))
        })
        .clone()
}

/// Ticks of a stream served from `--ts-file`: short, so the pace is smooth and a client
/// is never more than a tick behind the live position.
const LOOP_TICK: Duration = Duration::from_millis(40);

/// One stream body. It counts as open while it exists; a stream that opened its own
/// session (a plain `/ace/getstream?id=...`) closes it when the client goes away, as the
/// engine does.
struct StreamGuard {
    engine: Arc<Engine>,
    infohash: String,
    session: String,
    owned: bool,
}

impl StreamGuard {
    fn new(engine: Arc<Engine>, infohash: String, session: String, owned: bool) -> StreamGuard {
        engine.stream_opened();
        StreamGuard {
            engine,
            infohash,
            session,
            owned,
        }
    }

    /// Whether the stream goes on: false once its session was stopped or forgotten.
    fn alive(&self) -> bool {
        self.engine.has_session(&self.infohash, &self.session)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.engine.stream_closed();
        if self.owned {
            self.engine.close_session(&self.infohash, &self.session);
        }
    }
}

/// Streams until the session is stopped or the client disconnects. While the engine is
/// hung or starved no data is sent, but the connection stays open, as with a real engine.
/// With `--ts-file` the body is the looped broadcast, otherwise null packets.
pub fn stream(engine: Arc<Engine>, infohash: String, session: String, owned: bool) -> Response {
    let ts_loop = engine.ts_loop.clone();
    let guard = StreamGuard::new(engine, infohash, session, owned);
    let body = match ts_loop {
        Some(ts_loop) => Body::from_stream(broadcast(guard, ts_loop)),
        None => Body::from_stream(null_packets(guard)),
    };
    ([(CONTENT_TYPE, "video/mp2t")], body).into_response()
}

fn null_packets(guard: StreamGuard) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let mut ticks = interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    futures::stream::unfold((guard, ticks), |(guard, mut ticks)| async move {
        loop {
            ticks.tick().await;
            if !guard.alive() {
                return None;
            }
            if guard.engine.mode().flows() {
                return Some((Ok(chunk()), (guard, ticks)));
            }
        }
    })
}

/// Where a broadcast stream stands.
#[derive(Clone, Copy)]
enum Cursor {
    /// Nothing sent yet: start at an entry point, so the first bytes are decodable.
    New,
    /// Data stopped flowing (hang, starve): carry on at the live position, skipping what
    /// was missed, as an engine that unfreezes does.
    Stalled,
    /// The next packet to send, in packets since the Unix epoch.
    At(u64),
}

fn broadcast(
    guard: StreamGuard,
    ts_loop: Arc<TsLoop>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let mut ticks = interval(LOOP_TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A client that could not keep up (or the backlog before the live position) is sent
    // at most a second per tick, which bounds the size of one chunk.
    let max_packets = ts_loop.packets_per_second().max(1);
    let state = (guard, ts_loop, ticks, Cursor::New);
    futures::stream::unfold(
        state,
        move |(guard, ts_loop, mut ticks, mut cursor)| async move {
            loop {
                ticks.tick().await;
                if !guard.alive() {
                    return None;
                }
                if !guard.engine.mode().flows() {
                    if let Cursor::At(_) = cursor {
                        cursor = Cursor::Stalled;
                    }
                    continue;
                }
                let live = ts_loop.live_packet(SystemTime::now());
                let from = match cursor {
                    Cursor::New => ts_loop.entry_at_or_before(live),
                    Cursor::Stalled => live,
                    Cursor::At(at) => at,
                };
                let to = live.min(from + max_packets);
                cursor = Cursor::At(from.max(to));
                if to > from {
                    let chunk = ts_loop.chunk(from, to);
                    return Some((Ok(chunk), (guard, ts_loop, ticks, cursor)));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_is_whole_ts_packets() {
        let c = chunk();
        assert_eq!(c.len() % PACKET_LEN, 0);
        assert!(c
            .chunks(PACKET_LEN)
            .all(|p| p[0] == 0x47 && p[1] & 0x1F == 0x1F && p[2] == 0xFF));
    }
}
