//! A recorded MPEG-TS file replayed as an endless live broadcast.
//!
//! The broadcast is a pure function of the wall clock: at Unix time `t` the live position
//! is `t * byte_rate` bytes into an endless repetition of the file. Every emulated engine,
//! in any process, is therefore at the same place at the same instant, and a client that
//! moves from one engine to another jumps only a little, as with real live TV.
//!
//! Each repetition ("loop") gets its timestamps and continuity counters shifted so the
//! output reads as one continuous programme: PCR, PTS and DTS advance by the loop's
//! duration per loop, and every PID's continuity counter carries on across the wrap.
//! Everything needed for that is found once at load time (which packets hold a PCR, PTS
//! or DTS, and where), so serving a stretch of the broadcast is a copy plus a few byte
//! patches, and the same stretch is byte-identical whichever engine serves it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use axum::body::Bytes;

pub const PACKET_LEN: usize = 188;
const SYNC: u8 = 0x47;
const PAT_PID: u16 = 0;
const NULL_PID: u16 = 0x1FFF;
/// PTS, DTS and the PCR base count 90 kHz ticks modulo 2^33.
const TIMESTAMP_MODULUS: u64 = 1 << 33;
/// The full PCR (base * 300 + extension) counts 27 MHz ticks.
const PCR_MODULUS: u64 = TIMESTAMP_MODULUS * 300;
const HZ_90K: u64 = 90_000;

/// What must be patched in one packet of the file when it is replayed in a later loop.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct PacketMeta {
    /// Packets of this PID that carry payload in one loop, mod 16: a loop moves the PID's
    /// continuity counter on by that much. 0 for null packets, which have no counter.
    cc_step: u8,
    /// The packet carries a PCR (always at bytes 6..12).
    pcr: bool,
    /// Offsets of the 5-byte PTS and DTS fields in the packet; 0 = none.
    pts: u8,
    dts: u8,
}

/// Where the loop's duration (and so its byte rate) came from, for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateSource {
    /// Measured from the first and last PCR of the PCR PID and the bytes between them.
    Pcr,
    /// The file has no usable PCRs; `--ts-bitrate` was taken instead.
    Flag,
}

pub struct TsLoop {
    data: Bytes,
    meta: Vec<PacketMeta>,
    /// Packet indexes where a new client may start: a PAT (then the PMT) shortly before a
    /// video keyframe, so that the first bytes a client gets are decodable. Sorted, never
    /// empty.
    entries: Vec<usize>,
    /// Length of one loop in 90 kHz ticks. The byte rate is `data.len()` per this.
    duration_90k: u64,
    pub rate_source: RateSource,
}

impl fmt::Debug for TsLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsLoop")
            .field("packets", &self.meta.len())
            .field("entries", &self.entries.len())
            .field("duration_90k", &self.duration_90k)
            .field("rate_source", &self.rate_source)
            .finish()
    }
}

impl TsLoop {
    /// Reads and checks an MPEG-TS file; `fallback_bitrate` (bits/s) is used when the file
    /// holds no PCRs to measure its rate from.
    pub fn load(path: &Path, fallback_bitrate: u64) -> anyhow::Result<TsLoop> {
        let data = std::fs::read(path).context("cannot read it")?;
        TsLoop::parse(data, fallback_bitrate)
    }

    pub fn parse(data: Vec<u8>, fallback_bitrate: u64) -> anyhow::Result<TsLoop> {
        ensure!(!data.is_empty(), "the file is empty");
        ensure!(
            data.len().is_multiple_of(PACKET_LEN),
            "{} bytes is not a whole number of {PACKET_LEN}-byte TS packets ({} bytes left over)",
            data.len(),
            data.len() % PACKET_LEN
        );
        if let Some(bad) = data.chunks_exact(PACKET_LEN).position(|p| p[0] != SYNC) {
            bail!(
                "packet {bad} (byte {}) does not start with the 0x47 sync byte: not MPEG-TS",
                bad * PACKET_LEN
            );
        }

        let packets = data.len() / PACKET_LEN;
        let mut meta = vec![PacketMeta::default(); packets];
        let mut payload_counts = vec![0u32; 8192];
        let mut pats = Vec::new();
        let mut keyframes = Vec::new();
        // (packet index, 27 MHz PCR) of the first and last PCR of the PCR PID.
        let mut pcr_pid = None;
        let mut first_pcr = None;
        let mut last_pcr = None;
        // Per PID with timestamps: (first, second to last, last) decoding
        // time, DTS when the PES has one, else PTS.
        let mut tracks: HashMap<u16, (u64, u64, u64)> = HashMap::new();

        for (index, packet) in data.chunks_exact(PACKET_LEN).enumerate() {
            let header = Header::parse(packet);
            let m = &mut meta[index];
            if header.pid == PAT_PID && header.unit_start {
                pats.push(index);
            }
            if header.has_payload && header.pid != NULL_PID {
                payload_counts[usize::from(header.pid)] += 1;
            }
            if let Some(pcr) = header.pcr(packet) {
                m.pcr = true;
                if *pcr_pid.get_or_insert(header.pid) == header.pid {
                    first_pcr.get_or_insert((index, pcr));
                    last_pcr = Some((index, pcr));
                }
            }
            if let Some(pes) = header.pes(packet) {
                m.pts = pes.pts;
                m.dts = pes.dts;
                let field = usize::from(if pes.dts != 0 { pes.dts } else { pes.pts });
                if field != 0 {
                    let t = read_timestamp(&packet[field..field + 5]);
                    tracks
                        .entry(header.pid)
                        .and_modify(|(_, prev, last)| (*prev, *last) = (*last, t))
                        .or_insert((t, t, t));
                }
                // Video PES (stream ids 0xE0..=0xEF) flagged random-access: a keyframe.
                if pes.video && header.random_access {
                    keyframes.push(index);
                }
            }
        }
        ensure!(
            !pats.is_empty(),
            "no PAT (PID 0): a player could not find the programme"
        );
        for (packet, m) in data.chunks_exact(PACKET_LEN).zip(&mut meta) {
            let pid = Header::parse(packet).pid;
            if pid != NULL_PID {
                m.cc_step = (payload_counts[usize::from(pid)] % 16) as u8;
            }
        }

        // Start clients at the last PAT before each keyframe: PAT, PMT, then a picture
        // that decodes on its own. A file without flagged keyframes gets every PAT.
        let mut entries: Vec<usize> = keyframes
            .iter()
            .filter_map(|&k| pats[..pats.partition_point(|&p| p <= k)].last().copied())
            .collect();
        entries.dedup();
        if entries.is_empty() {
            entries = pats;
        }

        let bytes = data.len() as u128;
        let measured = match (first_pcr, last_pcr) {
            (Some((i0, p0)), Some((i1, p1))) if i1 > i0 => {
                let ticks_27m = (p1 + PCR_MODULUS - p0) % PCR_MODULUS;
                let between = ((i1 - i0) * PACKET_LEN) as u128;
                // duration = bytes / (between / ticks), in 90 kHz (27 MHz / 300) ticks.
                Some((bytes * u128::from(ticks_27m) + between * 150) / (between * 300))
            }
            _ => None,
        };
        let (duration_90k, rate_source) = match measured {
            Some(d) if d > 0 => (d, RateSource::Pcr),
            _ => {
                ensure!(
                    fallback_bitrate > 0,
                    "the fallback bitrate must be positive"
                );
                let bits = bytes * 8 * u128::from(HZ_90K);
                (bits / u128::from(fallback_bitrate), RateSource::Flag)
            }
        };
        let duration_90k = u64::try_from(duration_90k)
            .ok()
            .filter(|&d| d > 0 && d < TIMESTAMP_MODULUS)
            .context("the file's bitrate gives a loop shorter than a tick or longer than 26 h")?;
        let duration_90k = cover_every_track(duration_90k, tracks.values().copied());

        Ok(TsLoop {
            data: Bytes::from(data),
            meta,
            entries,
            duration_90k,
            rate_source,
        })
    }

    pub fn packets(&self) -> u64 {
        self.meta.len() as u64
    }

    /// Bits per second of the broadcast.
    pub fn bitrate(&self) -> u64 {
        (self.data.len() as u128 * 8 * u128::from(HZ_90K) / u128::from(self.duration_90k)) as u64
    }

    pub fn loop_duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.duration_90k * 1_000_000_000 / HZ_90K)
    }

    /// Packets per second, rounded up: a bound for how much one chunk may hold.
    pub fn packets_per_second(&self) -> u64 {
        (self.packets() * HZ_90K).div_ceil(self.duration_90k)
    }

    /// The live position at `now`, in packets since the Unix epoch (across all loops).
    pub fn live_packet(&self, now: SystemTime) -> u64 {
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // packets = seconds * packets_per_loop / loop_seconds, exactly, in integers, so
        // that every process computes the same position.
        let packets = nanos * u128::from(self.packets()) * u128::from(HZ_90K)
            / (u128::from(self.duration_90k) * 1_000_000_000);
        packets as u64
    }

    /// Where a new client starts: the last entry point at or before `live` (possibly in
    /// the previous loop).
    pub fn entry_at_or_before(&self, live: u64) -> u64 {
        let n = self.packets();
        let (loop_index, index) = (live / n, (live % n) as usize);
        match self.entries.partition_point(|&e| e <= index) {
            0 => {
                let last = *self.entries.last().expect("entries are never empty") as u64;
                // Before the first entry of loop 0 there is nowhere earlier to go.
                loop_index.checked_sub(1).map_or(live, |l| l * n + last)
            }
            i => loop_index * n + self.entries[i - 1] as u64,
        }
    }

    /// The broadcast's packets `from..to` (positions as from `live_packet`), patched for
    /// the loops they belong to.
    pub fn chunk(&self, from: u64, to: u64) -> Bytes {
        let n = self.packets();
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize * PACKET_LEN);
        let mut at = from;
        while at < to {
            let loop_index = at / n;
            let start = (at % n) as usize;
            let end = (start as u64 + (to - at)).min(n) as usize;
            let base = out.len();
            out.extend_from_slice(&self.data[start * PACKET_LEN..end * PACKET_LEN]);
            self.patch(&mut out[base..], start, loop_index);
            at += (end - start) as u64;
        }
        Bytes::from(out)
    }

    /// Shifts timestamps and continuity counters of `packets` (file packets from index
    /// `first` on) into loop `loop_index`.
    fn patch(&self, packets: &mut [u8], first: usize, loop_index: u64) {
        let shift = (u128::from(loop_index) * u128::from(self.duration_90k)
            % u128::from(TIMESTAMP_MODULUS)) as u64;
        let cc_loops = (loop_index % 16) as u8;
        for (packet, m) in packets
            .chunks_exact_mut(PACKET_LEN)
            .zip(&self.meta[first..])
        {
            // Every packet of the PID moves, with payload or not: a packet without payload
            // repeats the previous counter, which has moved too.
            if m.cc_step != 0 && cc_loops != 0 {
                let cc = (packet[3] & 0x0F) + m.cc_step * cc_loops;
                packet[3] = (packet[3] & 0xF0) | (cc & 0x0F);
            }
            if shift == 0 {
                continue;
            }
            if m.pcr {
                shift_pcr(&mut packet[6..12], shift);
            }
            for offset in [m.pts, m.dts] {
                if offset != 0 {
                    let at = usize::from(offset);
                    shift_timestamp(&mut packet[at..at + 5], shift);
                }
            }
        }
    }
}

/// The loop's length, lengthened when a track runs past it. Files often
/// hold a few milliseconds more audio than video; shifted by the bytes'
/// duration alone, the next loop's first audio frame would come before the
/// last one ended and its timestamps would step back (players and ffmpeg
/// report non-monotonic DTS). Each track needs its span plus its last
/// frame's duration. By at most a tenth: beyond, the file's timestamps are
/// not to be trusted (a jump, a wrap) and the bytes' duration stands.
fn cover_every_track(duration_90k: u64, tracks: impl Iterator<Item = (u64, u64, u64)>) -> u64 {
    let since = |from: u64, to: u64| (to + TIMESTAMP_MODULUS - from) % TIMESTAMP_MODULUS;
    let needed = tracks
        .map(|(first, prev, last)| since(first, last) + since(prev, last))
        .max()
        .unwrap_or(0);
    if needed > duration_90k && needed <= duration_90k + duration_90k / 10 {
        needed
    } else {
        duration_90k
    }
}

/// The fields of a TS packet header that matter here.
struct Header {
    pid: u16,
    unit_start: bool,
    has_payload: bool,
    random_access: bool,
    /// Adaptation field length byte present and flags readable.
    af_flags: Option<u8>,
    /// Where the payload starts; None if there is none or the header is malformed.
    payload: Option<usize>,
}

impl Header {
    fn parse(packet: &[u8]) -> Header {
        let pid = (u16::from(packet[1] & 0x1F) << 8) | u16::from(packet[2]);
        let unit_start = packet[1] & 0x40 != 0;
        let control = (packet[3] >> 4) & 0x3;
        let has_af = control & 0x2 != 0;
        let has_payload = control & 0x1 != 0;
        let af_len = if has_af {
            1 + usize::from(packet[4])
        } else {
            0
        };
        let af_flags = (has_af && packet[4] > 0).then(|| packet[5]);
        let payload_start = 4 + af_len;
        Header {
            pid,
            unit_start,
            has_payload,
            random_access: af_flags.is_some_and(|f| f & 0x40 != 0),
            af_flags,
            payload: (has_payload && payload_start < PACKET_LEN).then_some(payload_start),
        }
    }

    /// The PCR in 27 MHz ticks, if the adaptation field carries one.
    fn pcr(&self, packet: &[u8]) -> Option<u64> {
        let flags = self.af_flags?;
        // PCR flag, and an adaptation field long enough to hold it.
        (flags & 0x10 != 0 && packet[4] >= 7).then(|| read_pcr(&packet[6..12]))
    }

    /// The PES header starting in this packet, if any.
    fn pes(&self, packet: &[u8]) -> Option<Pes> {
        let p = self
            .payload
            .filter(|_| self.unit_start && self.pid != NULL_PID)?;
        let pes = &packet[p..];
        if pes.len() < 9 || pes[..3] != [0, 0, 1] {
            return None; // PSI, or a header we cannot see whole
        }
        let stream_id = pes[3];
        // These streams have no optional PES header (ISO 13818-1, 2.4.3.7).
        if matches!(
            stream_id,
            0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
        ) || pes[6] & 0xC0 != 0x80
        {
            return None;
        }
        let flags = pes[7] >> 6;
        let field = |at: usize| (p + at + 5 <= PACKET_LEN).then_some((p + at) as u8);
        Some(Pes {
            video: (0xE0..=0xEF).contains(&stream_id),
            pts: if flags & 0b10 != 0 { field(9) } else { None }.unwrap_or(0),
            dts: if flags == 0b11 { field(14) } else { None }.unwrap_or(0),
        })
    }
}

struct Pes {
    video: bool,
    pts: u8,
    dts: u8,
}

/// PCR: 33-bit base (90 kHz), 6 reserved bits, 9-bit extension (27 MHz remainder).
fn read_pcr(b: &[u8]) -> u64 {
    let ext = (u64::from(b[4] & 1) << 8) | u64::from(b[5]);
    read_pcr_base(b) * 300 + ext
}

fn read_pcr_base(b: &[u8]) -> u64 {
    (u64::from(b[0]) << 25)
        | (u64::from(b[1]) << 17)
        | (u64::from(b[2]) << 9)
        | (u64::from(b[3]) << 1)
        | (u64::from(b[4]) >> 7)
}

/// Adds `shift` (90 kHz) to a PCR's base, keeping the reserved bits and the extension.
fn shift_pcr(b: &mut [u8], shift: u64) {
    let base = (read_pcr_base(b) + shift) % TIMESTAMP_MODULUS;
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = ((base as u8 & 1) << 7) | (b[4] & 0x7F);
}

/// PTS/DTS: 4-bit prefix, then 33 bits in pieces of 3, 15 and 15, each ending in a
/// marker bit.
fn read_timestamp(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1 & 0x07) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

fn shift_timestamp(b: &mut [u8], shift: u64) {
    let ts = (read_timestamp(b) + shift) % TIMESTAMP_MODULUS;
    b[0] = (b[0] & 0xF0) | ((ts >> 29) as u8 & 0x0E) | 1;
    b[1] = (ts >> 22) as u8;
    b[2] = ((ts >> 14) as u8 & 0xFE) | 1;
    b[3] = (ts >> 7) as u8;
    b[4] = ((ts << 1) as u8) | 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A packet of `pid` with counter `cc`, optionally a PCR and a PES start with PTS/DTS.
    fn packet(pid: u16, cc: u8, pcr: Option<u64>, pes: Option<(u8, u64, Option<u64>)>) -> Vec<u8> {
        let mut p = vec![0xFF; PACKET_LEN];
        p[0] = SYNC;
        p[1] = (pid >> 8) as u8 | if pes.is_some() || pid == 0 { 0x40 } else { 0 };
        p[2] = pid as u8;
        let mut at = 4;
        if let Some(pcr) = pcr {
            p[3] = 0x30 | cc;
            p[4] = 7;
            p[5] = 0x10
                | if pes.is_some_and(|s| s.0 >= 0xE0) {
                    0x40
                } else {
                    0
                };
            p[6..12].fill(0);
            p[10] = 0x7E; // reserved bits
            let (base, ext) = (pcr / 300, pcr % 300);
            p[6] = (base >> 25) as u8;
            p[7] = (base >> 17) as u8;
            p[8] = (base >> 9) as u8;
            p[9] = (base >> 1) as u8;
            p[10] |= ((base as u8 & 1) << 7) | (ext >> 8) as u8;
            p[11] = ext as u8;
            at = 12;
        } else {
            p[3] = 0x10 | cc;
        }
        if let Some((sid, pts, dts)) = pes {
            let flags = if dts.is_some() { 0xC0 } else { 0x80 };
            p[at..at + 9].copy_from_slice(&[0, 0, 1, sid, 0, 0, 0x80, flags, 10]);
            // Prefixes '0010' (PTS only), '0011' (PTS then DTS) and '0001' (DTS).
            let field = |prefix: u8, value: u64| {
                let mut b = [prefix << 4, 0, 0, 0, 0];
                shift_timestamp(&mut b, value);
                b
            };
            let prefix = if dts.is_some() { 0b0011 } else { 0b0010 };
            p[at + 9..at + 14].copy_from_slice(&field(prefix, pts));
            if let Some(dts) = dts {
                p[at + 14..at + 19].copy_from_slice(&field(0b0001, dts));
            }
        }
        p
    }

    /// 10 packets: PAT, video keyframe with PCR, PTS and DTS, video, audio, a second PCR
    /// five packets after the first, null, video, audio.
    fn sample() -> Vec<u8> {
        let mut data = Vec::new();
        data.extend(packet(0, 0, None, None));
        data.extend(packet(
            0x100,
            0,
            Some(900_000 * 300),
            Some((0xE0, 1000, Some(900))),
        ));
        for i in 1..4 {
            data.extend(packet(0x100, i, None, None));
        }
        data.extend(packet(0x101, 0, None, Some((0xC0, 2000, None))));
        data.extend(packet(0x100, 4, Some((900_000 + 9_000) * 300 + 7), None));
        data.extend(packet(0x1FFF, 0, None, None));
        data.extend(packet(0x100, 5, None, None));
        data.extend(packet(0x101, 1, None, None));
        data
    }

    #[test]
    fn rejects_what_is_not_ts() {
        assert!(TsLoop::parse(Vec::new(), 1).is_err());
        assert!(TsLoop::parse(vec![SYNC; 200], 1).is_err());
        let mut bad = sample();
        bad[188 * 3] = 0;
        let err = TsLoop::parse(bad, 1).unwrap_err().to_string();
        assert!(err.contains("packet 3"), "{err}");
        let no_pat = packet(0x100, 0, None, None);
        assert!(TsLoop::parse(no_pat, 1).is_err());
    }

    #[test]
    fn finds_pcrs_timestamps_and_keyframe_entries() {
        let ts = TsLoop::parse(sample(), 1).unwrap();
        assert_eq!(ts.rate_source, RateSource::Pcr);
        // 9000 ticks (0.1 s) over 5 packets: 10 packets last 0.2 s.
        assert_eq!(ts.duration_90k, 18_000);
        assert_eq!(ts.entries, vec![0]);
        let m = ts.meta[1];
        assert!(m.pcr);
        assert_eq!((m.pts, m.dts), (12 + 9, 12 + 14));
        assert_eq!(ts.meta[5].pts, 4 + 9);
        // PID 0x100 has 6 payload packets per loop, 0x101 two, the PAT one.
        assert_eq!(ts.meta[2].cc_step, 6);
        assert_eq!(ts.meta[9].cc_step, 2);
        assert_eq!(ts.meta[0].cc_step, 1);
        assert_eq!(ts.meta[7].cc_step, 0);
    }

    #[test]
    fn fallback_bitrate_without_pcr() {
        let data = packet(0, 0, None, None).repeat(100);
        let ts = TsLoop::parse(data, 188 * 8 * 100).unwrap();
        assert_eq!(ts.rate_source, RateSource::Flag);
        assert_eq!(ts.loop_duration(), Duration::from_secs(1));
        assert_eq!(ts.bitrate(), 188 * 8 * 100);
    }

    #[test]
    fn later_loops_shift_timestamps_and_counters() {
        let ts = TsLoop::parse(sample(), 1).unwrap();
        let n = ts.packets();
        let loop0 = ts.chunk(0, n);
        assert_eq!(&loop0[..], &sample()[..], "loop 0 is the file as is");
        let three = ts.chunk(3 * n, 4 * n);
        let shift = 3 * 18_000;
        let pkt = |i: usize| &three[i * PACKET_LEN..(i + 1) * PACKET_LEN];
        assert_eq!(read_pcr(&pkt(1)[6..12]), (900_000 + shift) * 300);
        assert_eq!(read_pcr(&pkt(6)[6..12]), (909_000 + shift) * 300 + 7);
        assert_eq!(pkt(1)[10] & 0x7E, 0x7E, "reserved bits kept");
        assert_eq!(read_timestamp(&pkt(1)[21..26]), 1000 + shift);
        assert_eq!(read_timestamp(&pkt(1)[26..31]), 900 + shift);
        assert_eq!(pkt(1)[21] & 0xF1, 0x31, "PTS prefix and marker kept");
        assert_eq!(read_timestamp(&pkt(5)[13..18]), 2000 + shift);
        assert_eq!(pkt(2)[3] & 0x0F, (1 + 3 * 6) % 16);
        assert_eq!(pkt(9)[3] & 0x0F, 1 + 3 * 2);
        assert_eq!(pkt(7)[3] & 0x0F, 0, "null packets untouched");
        // Continuity across a wrap: the last video counter of loop 2 plus one.
        let wrap = ts.chunk(3 * n - 2, 3 * n + 2);
        let (last, next) = (wrap[3] & 0x0F, wrap[3 * PACKET_LEN + 3] & 0x0F);
        assert_eq!((last + 1) % 16, next);
        // A chunk across the wrap equals the two loops' pieces.
        let mut pieces = ts.chunk(2 * n + 5, 3 * n).to_vec();
        pieces.extend_from_slice(&ts.chunk(3 * n, 3 * n + 5));
        assert_eq!(&ts.chunk(2 * n + 5, 3 * n + 5)[..], &pieces[..]);
    }

    #[test]
    fn a_track_longer_than_the_loop_lengthens_it_so_time_never_steps_back() {
        // The sample's 10 packets last 18,000 ticks by their PCRs; its audio
        // has frames at 2,000 and 11,450: the second ends at 20,900, past
        // the loop's end at 20,000 (it started at 2,000).
        let mut data = sample();
        data[188 * 9..].copy_from_slice(&packet(0x101, 1, None, Some((0xC0, 11_450, None))));
        let ts = TsLoop::parse(data, 1).unwrap();
        assert_eq!(ts.duration_90k, 18_900);
        let n = ts.packets();
        let two = ts.chunk(0, 2 * n);
        let pts = |i: usize| read_timestamp(&two[i * PACKET_LEN + 13..i * PACKET_LEN + 18]);
        let (last_of_loop_0, first_of_loop_1) = (pts(9), pts(10 + 5));
        assert_eq!(last_of_loop_0, 11_450);
        assert_eq!(
            first_of_loop_1 - last_of_loop_0,
            9_450,
            "one frame's duration between the loops, as inside them"
        );
        // Timestamps that jump far past the bytes' duration are not followed.
        let mut jumpy = sample();
        jumpy[188 * 9..].copy_from_slice(&packet(0x101, 1, None, Some((0xC0, 900_000, None))));
        assert_eq!(TsLoop::parse(jumpy, 1).unwrap().duration_90k, 18_000);
    }

    #[test]
    fn timestamps_wrap_at_33_bits() {
        let mut b = [0u8; 5];
        shift_timestamp(&mut b, TIMESTAMP_MODULUS - 10);
        shift_timestamp(&mut b, 25);
        assert_eq!(read_timestamp(&b), 15);
        let mut pcr = [0, 0, 0, 0, 0x7F, 0xFF];
        shift_pcr(&mut pcr, TIMESTAMP_MODULUS - 1);
        shift_pcr(&mut pcr, 3);
        assert_eq!(read_pcr(&pcr), 2 * 300 + 0x1FF);
    }

    #[test]
    fn live_position_follows_the_wall_clock() {
        let ts = TsLoop::parse(sample(), 1).unwrap(); // 10 packets per 0.2 s
        let at = |secs: u64, millis: u64| {
            ts.live_packet(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(1, 0), 50);
        assert_eq!(at(1_700_000_000, 0), 1_700_000_000 * 50);
        assert_eq!(at(1, 500) - at(1, 0), 25);
        assert_eq!(ts.packets_per_second(), 50);
        // Entry points: the PAT at packet 0 of this loop.
        assert_eq!(ts.entry_at_or_before(55), 50);
        assert_eq!(ts.entry_at_or_before(50), 50);
        assert_eq!(ts.entry_at_or_before(3), 0);
    }
}
