//! An endless MPEG-TS body: null packets at a live stream's pace.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use tokio::time::{interval, MissedTickBehavior};

use crate::engine::Engine;

const PACKET_LEN: usize = 188;
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

/// Which session a stream belongs to. A stream that opened its own session (a plain
/// `/ace/getstream?id=...`) closes it when the client goes away, as the engine does.
struct SessionGuard {
    engine: Arc<Engine>,
    infohash: String,
    session: String,
    owned: bool,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.owned {
            self.engine.close_session(&self.infohash, &self.session);
        }
    }
}

/// Streams until the session is stopped or the client disconnects. While the engine is
/// hung or starved no data is sent, but the connection stays open, as with a real engine.
pub fn stream(engine: Arc<Engine>, infohash: String, session: String, owned: bool) -> Response {
    let guard = SessionGuard {
        engine,
        infohash,
        session,
        owned,
    };
    let mut ticks = interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let packets = futures::stream::unfold((guard, ticks), |(guard, mut ticks)| async move {
        loop {
            ticks.tick().await;
            if !guard.engine.has_session(&guard.infohash, &guard.session) {
                return None;
            }
            if guard.engine.mode().flows() {
                return Some((Ok::<_, Infallible>(chunk()), (guard, ticks)));
            }
        }
    });
    ([(CONTENT_TYPE, "video/mp2t")], Body::from_stream(packets)).into_response()
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
