//! The little MPEG-TS (ISO/IEC 13818-1) the proxy needs: find packet sync in an
//! arbitrary byte stream, read the packet header and adaptation field, read the
//! PAT, and mark a discontinuity at a splice.
//!
//! Written here rather than taken from a crate: the readers on crates.io
//! (`mpeg2ts-reader`, `mpeg2ts`) are read-only views or owned decoders, while the
//! splice has to *rewrite* packets in place; with the writer needing the same
//! byte layout anyway, a dependency would have saved a few dozen lines and added
//! a demux framework we do not use. Everything here works on `&[u8]` /
//! `&mut [u8]` borrowed from `bytes::Bytes`, without allocating.

use bytes::{Buf, Bytes, BytesMut};

/// Every transport stream packet is this long.
pub const PACKET_SIZE: usize = 188;
/// The first byte of every packet.
pub const SYNC_BYTE: u8 = 0x47;
/// The PID that carries the Program Association Table.
pub const PAT_PID: u16 = 0x0000;
/// The PCR counts a 27 MHz clock in 33 bits of 90 kHz base times 300 plus a 9-bit extension.
pub const PCR_HZ: u64 = 27_000_000;
/// PCR values wrap at this many 27 MHz ticks (about 26.5 hours).
pub const PCR_WRAP: u64 = (1 << 33) * 300;

/// How many consecutive sync bytes, one packet apart, make us trust an alignment.
const SYNC_RUN: usize = 3;

/// The first offset in `buf` where [`SYNC_RUN`] sync bytes sit one packet apart,
/// or `None` when there is none (yet): resync after garbage or a torn packet.
pub fn find_sync(buf: &[u8]) -> Option<usize> {
    let span = (SYNC_RUN - 1) * PACKET_SIZE;
    if buf.len() <= span {
        return None;
    }
    (0..buf.len() - span).find(|&i| (0..SYNC_RUN).all(|k| buf[i + k * PACKET_SIZE] == SYNC_BYTE))
}

/// The packet's PID.
pub fn pid(pkt: &[u8]) -> u16 {
    (u16::from(pkt[1] & 0x1f) << 8) | u16::from(pkt[2])
}

/// payload_unit_start_indicator: a PES packet or PSI section starts in this packet.
pub fn pusi(pkt: &[u8]) -> bool {
    pkt[1] & 0x40 != 0
}

fn adaptation_field_control(pkt: &[u8]) -> u8 {
    (pkt[3] >> 4) & 0b11
}

/// The fields of an adaptation field the proxy cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdaptationField {
    pub discontinuity: bool,
    pub random_access: bool,
    /// Program clock reference in 27 MHz ticks (`base * 300 + extension`).
    pub pcr: Option<u64>,
}

/// The adaptation field of `pkt`, if it has one with at least its flags byte.
pub fn adaptation_field(pkt: &[u8]) -> Option<AdaptationField> {
    if adaptation_field_control(pkt) & 0b10 == 0 {
        return None;
    }
    let len = usize::from(pkt[4]);
    if len == 0 || 5 + len > PACKET_SIZE {
        return None;
    }
    let flags = pkt[5];
    let pcr = (flags & 0x10 != 0 && len >= 7).then(|| {
        let b = &pkt[6..12];
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7);
        let ext = (u64::from(b[4] & 1) << 8) | u64::from(b[5]);
        base * 300 + ext
    });
    Some(AdaptationField {
        discontinuity: flags & 0x80 != 0,
        random_access: flags & 0x40 != 0,
        pcr,
    })
}

/// Offset of the payload within the packet, if the packet carries one.
fn payload_start(pkt: &[u8]) -> Option<usize> {
    let afc = adaptation_field_control(pkt);
    if afc & 0b01 == 0 {
        return None;
    }
    let start = if afc & 0b10 != 0 {
        5 + usize::from(pkt[4])
    } else {
        4
    };
    (start < PACKET_SIZE).then_some(start)
}

/// The packet's payload, if any.
pub fn payload(pkt: &[u8]) -> Option<&[u8]> {
    payload_start(pkt).map(|start| &pkt[start..PACKET_SIZE])
}

/// The PMT PIDs announced by a PAT packet (program 0, the network PID, skipped).
/// Empty unless `pkt` starts a PAT section that fits in this one packet, which is
/// what every AceStream engine sends.
pub fn pat_pmt_pids(pkt: &[u8]) -> impl Iterator<Item = u16> + '_ {
    pat_entries(pkt)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter(|e| u16::from_be_bytes([e[0], e[1]]) != 0)
        .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
}

fn pat_entries(pkt: &[u8]) -> Option<&[u8]> {
    if pid(pkt) != PAT_PID || !pusi(pkt) {
        return None;
    }
    let payload = payload(pkt)?;
    let section = payload.get(1 + usize::from(*payload.first()?)..)?;
    if *section.first()? != 0x00 {
        return None; // not a program_association_section
    }
    let section_length =
        (usize::from(*section.get(1)? & 0x0f) << 8) | usize::from(*section.get(2)?);
    // Entries follow the 8-byte header and precede the 4-byte CRC.
    section.get(8..(3 + section_length).checked_sub(4)?)
}

/// The elementary streams a PMT packet announces, as `(stream_type, pid)`.
/// Empty unless `pkt` starts a PMT section that fits in this one packet (the
/// case for every stream with a handful of tracks).
pub fn pmt_streams(pkt: &[u8]) -> Vec<(u8, u16)> {
    pmt_streams_inner(pkt).unwrap_or_default()
}

fn pmt_streams_inner(pkt: &[u8]) -> Option<Vec<(u8, u16)>> {
    if !pusi(pkt) {
        return None;
    }
    let payload = payload(pkt)?;
    let section = payload.get(1 + usize::from(*payload.first()?)..)?;
    if *section.first()? != 0x02 {
        return None; // not a TS_program_map_section
    }
    let section_length =
        (usize::from(*section.get(1)? & 0x0f) << 8) | usize::from(*section.get(2)?);
    let end = (3 + section_length).checked_sub(4)?; // before the CRC
    let program_info_length =
        (usize::from(*section.get(10)? & 0x0f) << 8) | usize::from(*section.get(11)?);
    let mut pos = 12 + program_info_length;
    let mut out = Vec::new();
    while pos + 5 <= end {
        let entry = section.get(pos..pos + 5)?;
        let pid = (u16::from(entry[1] & 0x1f) << 8) | u16::from(entry[2]);
        out.push((entry[0], pid));
        pos += 5 + ((usize::from(entry[3] & 0x0f) << 8) | usize::from(entry[4]));
    }
    Some(out)
}

/// Whether a PMT stream_type is video (MPEG-1/2, MPEG-4 part 2, H.264, HEVC, VVC).
pub fn is_video_stream_type(stream_type: u8) -> bool {
    matches!(stream_type, 0x01 | 0x02 | 0x10 | 0x1b | 0x24 | 0x33)
}

/// The PTS (90 kHz ticks, 33 bits) of the PES packet that starts in `pkt`,
/// if it starts one and carries a PTS.
pub fn pes_pts(pkt: &[u8]) -> Option<u64> {
    if !pusi(pkt) {
        return None;
    }
    let pes = payload(pkt)?;
    if pes.len() < 14 || pes[..3] != [0, 0, 1] || pes[7] & 0x80 == 0 {
        return None;
    }
    let b = &pes[9..14];
    Some(
        (u64::from(b[0] & 0x0e) << 29)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] & 0xfe) << 14)
            | (u64::from(b[3]) << 7)
            | (u64::from(b[4]) >> 1),
    )
}

/// PTS and DTS values wrap at this many 90 kHz ticks (about 26.5 hours).
pub const PTS_WRAP: u64 = 1 << 33;

/// How many 0xFF stuffing bytes end a PSI packet that starts a section, or
/// `None` when a section runs past this packet (no stuffing to take).
fn psi_stuffing(pkt: &[u8]) -> Option<usize> {
    if !pusi(pkt) {
        return None;
    }
    let payload = payload(pkt)?;
    let mut pos = 1 + usize::from(*payload.first()?);
    // Walk the sections; a table_id of 0xFF starts the stuffing.
    while pos < payload.len() && payload[pos] != 0xFF {
        let header = payload.get(pos..pos + 3)?;
        let section_length = (usize::from(header[1] & 0x0f) << 8) | usize::from(header[2]);
        pos += 3 + section_length;
    }
    let stuffing = payload.get(pos..)?;
    stuffing
        .iter()
        .all(|&b| b == 0xFF)
        .then_some(stuffing.len())
}

/// Sets discontinuity_indicator in `pkt`, in place. A packet with an adaptation
/// field just gets the flag. A packet without one (or with an empty one) has
/// no room, unless it is a PSI packet (`psi`: PAT or PMT) whose section ends in
/// 0xFF stuffing: then its payload moves two bytes along, giving up stuffing,
/// to make room for a 2-byte adaptation field carrying the flag. Returns
/// whether the flag is now set.
pub fn mark_discontinuity(pkt: &mut [u8], psi: bool) -> bool {
    let afc = adaptation_field_control(pkt);
    let needed = if afc & 0b10 != 0 {
        if pkt[4] >= 1 {
            pkt[5] |= 0x80;
            return true;
        }
        1 // an empty adaptation field: only the flags byte is missing
    } else {
        2
    };
    let room = if psi { psi_stuffing(pkt) } else { None };
    if room.unwrap_or(0) < needed {
        return false;
    }
    let Some(start) = payload_start(pkt) else {
        return false;
    };
    // Header (4) + length (1) + flags (1) = 6; the payload loses `needed`
    // bytes of trailing stuffing.
    pkt.copy_within(start..start + (PACKET_SIZE - 6), 6);
    pkt[3] = (pkt[3] & 0xcf) | 0x30;
    pkt[4] = 1;
    pkt[5] = 0x80;
    true
}

/// Cuts an arbitrary byte stream into runs of whole packets, carrying a
/// partial packet over to the next input and resyncing after garbage.
///
/// Aligned input is passed on without copying (a `Bytes` slice of it); only a
/// packet torn across two reads, or bytes around a loss of sync, are copied.
#[derive(Debug, Default)]
pub struct Packetizer {
    carry: BytesMut,
    synced: bool,
    skipped: u64,
}

impl Packetizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes discarded so far while looking for sync.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Feeds `input`; every run of whole packets is pushed onto `out`.
    pub fn push(&mut self, mut input: Bytes, out: &mut Vec<Bytes>) {
        loop {
            if !self.synced {
                self.carry.extend_from_slice(&input);
                match find_sync(&self.carry) {
                    Some(at) => {
                        self.skipped += at as u64;
                        self.carry.advance(at);
                        self.synced = true;
                        input = self.carry.split().freeze();
                    }
                    None => {
                        // Keep only what could still start a sync run.
                        let keep = (SYNC_RUN - 1) * PACKET_SIZE;
                        let excess = self.carry.len().saturating_sub(keep);
                        self.skipped += excess as u64;
                        self.carry.advance(excess);
                        return;
                    }
                }
            }
            if !self.carry.is_empty() {
                let take = (PACKET_SIZE - self.carry.len()).min(input.len());
                self.carry.extend_from_slice(&input[..take]);
                input.advance(take);
                if self.carry.len() < PACKET_SIZE {
                    return;
                }
                // carry[0] was checked when the partial packet was kept.
                out.push(self.carry.split().freeze());
            }
            let whole = input
                .chunks_exact(PACKET_SIZE)
                .take_while(|p| p[0] == SYNC_BYTE)
                .count();
            if whole > 0 {
                out.push(input.split_to(whole * PACKET_SIZE));
            }
            if input.is_empty() {
                return;
            }
            if input.len() < PACKET_SIZE && input[0] == SYNC_BYTE {
                self.carry.extend_from_slice(&input);
                return;
            }
            // A packet does not start where it should: sync is lost from here.
            self.synced = false;
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Hand-built packets for the proxy's tests.
    use super::*;

    pub const PMT_PID: u16 = 0x1000;
    pub const VIDEO_PID: u16 = 0x0100;

    /// The start of a video PES header carrying `pts` (33 bits, PTS only).
    pub fn pes_header(pts: u64) -> [u8; 14] {
        [
            0,
            0,
            1,
            0xe0,
            0,
            0,
            0x80,
            0x80,
            5,
            0x21 | ((pts >> 29) as u8 & 0x0e),
            (pts >> 22) as u8,
            ((pts >> 14) as u8 & 0xfe) | 1,
            (pts >> 7) as u8,
            ((pts << 1) as u8) | 1,
        ]
    }

    fn header(pid: u16, pusi: bool, afc: u8, cc: u8) -> [u8; PACKET_SIZE] {
        let mut p = [0xFFu8; PACKET_SIZE];
        p[0] = SYNC_BYTE;
        p[1] = (u8::from(pusi) << 6) | ((pid >> 8) as u8 & 0x1f);
        p[2] = pid as u8;
        p[3] = (afc << 4) | (cc & 0x0f);
        p
    }

    fn psi(pid: u16, cc: u8, section: &[u8]) -> [u8; PACKET_SIZE] {
        let mut p = header(pid, true, 0b01, cc);
        p[4] = 0; // pointer_field
        p[5..5 + section.len()].copy_from_slice(section);
        p
    }

    /// A PAT announcing program 1 on [`PMT_PID`] (the CRC is not checked by anyone).
    pub fn pat(cc: u8) -> [u8; PACKET_SIZE] {
        let pmt = PMT_PID.to_be_bytes();
        psi(
            PAT_PID,
            cc,
            &[
                0x00,
                0xb0,
                13,
                0x00,
                0x01,
                0xc1,
                0x00,
                0x00, // header, length 13
                0x00,
                0x01,
                0xe0 | pmt[0],
                pmt[1], // program 1 -> PMT PID
                0,
                0,
                0,
                0, // CRC
            ],
        )
    }

    /// A PMT with one H.264 stream on [`VIDEO_PID`], which also carries the PCR.
    pub fn pmt(cc: u8) -> [u8; PACKET_SIZE] {
        let v = VIDEO_PID.to_be_bytes();
        psi(
            PMT_PID,
            cc,
            &[
                0x02,
                0xb0,
                18,
                0x00,
                0x01,
                0xc1,
                0x00,
                0x00, // header, length 18
                0xe0 | v[0],
                v[1],
                0xf0,
                0x00, // PCR PID, no program info
                0x1b,
                0xe0 | v[0],
                v[1],
                0xf0,
                0x00, // H.264 on VIDEO_PID
                0,
                0,
                0,
                0, // CRC
            ],
        )
    }

    /// A video packet with `tag` and `seq` at the start of its payload, so tests
    /// can tell packets apart; with `pcr`, it carries that PCR and is a random
    /// access point.
    pub fn video(cc: u8, pcr: Option<u64>, tag: u8, seq: u32) -> [u8; PACKET_SIZE] {
        let mut p;
        let at = if let Some(pcr) = pcr {
            p = header(VIDEO_PID, true, 0b11, cc);
            p[4] = 7;
            p[5] = 0x50; // random_access + PCR
            let (base, ext) = (pcr / 300, pcr % 300);
            p[6] = (base >> 25) as u8;
            p[7] = (base >> 17) as u8;
            p[8] = (base >> 9) as u8;
            p[9] = (base >> 1) as u8;
            p[10] = ((base as u8 & 1) << 7) | 0x7e | (ext >> 8) as u8;
            p[11] = ext as u8;
            12
        } else {
            p = header(VIDEO_PID, false, 0b01, cc);
            4
        };
        p[at] = tag;
        p[at + 1..at + 5].copy_from_slice(&seq.to_be_bytes());
        p
    }

    /// The (tag, seq) a [`video`] packet carries.
    pub fn video_id(pkt: &[u8]) -> Option<(u8, u32)> {
        if pid(pkt) != VIDEO_PID {
            return None;
        }
        let pl = payload(pkt)?;
        Some((pl[0], u32::from_be_bytes([pl[1], pl[2], pl[3], pl[4]])))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn header_fields() {
        let p = video(3, Some(27_000_000 * 5 + 123), 1, 9);
        assert_eq!(pid(&p), VIDEO_PID);
        assert!(pusi(&p));
        let af = adaptation_field(&p).unwrap();
        assert_eq!(af.pcr, Some(27_000_000 * 5 + 123));
        assert!(af.random_access);
        assert!(!af.discontinuity);
        assert_eq!(video_id(&p), Some((1, 9)));

        let p = video(4, None, 1, 10);
        assert!(!pusi(&p));
        assert_eq!(adaptation_field(&p), None);
        assert_eq!(video_id(&p), Some((1, 10)));
    }

    #[test]
    fn pat_lists_pmt_pids() {
        assert_eq!(pat_pmt_pids(&pat(0)).collect::<Vec<_>>(), vec![PMT_PID]);
        assert_eq!(pat_pmt_pids(&pmt(0)).count(), 0);
        assert_eq!(pat_pmt_pids(&video(0, None, 0, 0)).count(), 0);
    }

    #[test]
    fn pmt_lists_its_streams() {
        assert_eq!(pmt_streams(&pmt(0)), vec![(0x1b, VIDEO_PID)]);
        assert!(pmt_streams(&pat(0)).is_empty());
        assert!(is_video_stream_type(0x1b));
        assert!(!is_video_stream_type(0x0f), "AAC is audio");
    }

    #[test]
    fn reads_the_pts_of_a_pes_start() {
        let mut p = video(0, None, 0, 0);
        p[1] |= 0x40; // payload_unit_start
        let pts: u64 = (1 << 32) + 123_456;
        let pes = pes_header(pts);
        p[4..4 + pes.len()].copy_from_slice(&pes);
        assert_eq!(pes_pts(&p), Some(pts));
        assert_eq!(pes_pts(&video(0, None, 0, 0)), None);
    }

    #[test]
    fn marks_psi_by_inserting_an_adaptation_field() {
        for (mut p, is_pat) in [(pat(5), true), (pmt(5), false)] {
            let before = p;
            assert!(mark_discontinuity(&mut p, true));
            let af = adaptation_field(&p).unwrap();
            assert!(af.discontinuity);
            assert_eq!(pid(&p), pid(&before));
            assert_eq!(p[3] & 0x0f, 5, "continuity counter kept");
            // The section is intact, only two stuffing bytes are gone.
            assert_eq!(payload(&p).unwrap(), &payload(&before).unwrap()[..182]);
            if is_pat {
                assert_eq!(pat_pmt_pids(&p).collect::<Vec<_>>(), vec![PMT_PID]);
            }
        }
    }

    #[test]
    fn marks_packets_with_an_adaptation_field_in_place() {
        let mut p = video(0, Some(1000), 0, 0);
        let before = p;
        assert!(mark_discontinuity(&mut p, false));
        assert!(adaptation_field(&p).unwrap().discontinuity);
        assert_eq!(adaptation_field(&p).unwrap().pcr, Some(1000));
        assert_eq!(p[6..], before[6..]);
        // No adaptation field and not PSI: no room.
        let mut p = video(0, None, 0, 0);
        assert!(!mark_discontinuity(&mut p, false));
        // A PSI packet whose section fills it: no stuffing to take.
        let mut p = pat(0);
        p[5 + 16..].fill(0);
        p[7] = 183 - 3; // section_length runs to the end of the packet
        assert!(!mark_discontinuity(&mut p, true));
    }

    #[test]
    fn finds_sync_after_garbage() {
        let mut buf = vec![0x47, 1, 2, 0x47, 9];
        for cc in 0..3 {
            buf.extend_from_slice(&video(cc, None, 0, 0));
        }
        assert_eq!(find_sync(&buf), Some(5));
        assert_eq!(find_sync(&buf[..5 + 2 * PACKET_SIZE]), None);
    }

    fn packets(n: u32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| video(i as u8, None, 7, i))
            .collect::<Vec<_>>()
    }

    fn ids(out: &[Bytes]) -> Vec<u32> {
        out.iter()
            .flat_map(|b| b.chunks_exact(PACKET_SIZE))
            .filter_map(|p| video_id(p).map(|(_, seq)| seq))
            .collect()
    }

    #[test]
    fn packetizer_carries_partial_packets_across_reads() {
        let data = packets(10);
        let mut pk = Packetizer::new();
        let mut out = Vec::new();
        // Leading garbage, then reads of awkward sizes.
        pk.push(Bytes::from_static(&[1, 2, 3]), &mut out);
        for piece in data.chunks(100) {
            pk.push(Bytes::copy_from_slice(piece), &mut out);
        }
        assert!(out.iter().all(|b| b.len() % PACKET_SIZE == 0));
        assert_eq!(ids(&out), (0..10).collect::<Vec<_>>());
        assert_eq!(pk.skipped(), 3);
    }

    #[test]
    fn packetizer_passes_aligned_input_without_copying() {
        let data = Bytes::from(packets(4));
        let mut pk = Packetizer::new();
        let mut out = Vec::new();
        pk.push(data.clone(), &mut out);
        pk.push(data.clone(), &mut out);
        // The second read is aligned: it comes out as a slice of the input itself.
        assert_eq!(out.last().unwrap().as_ptr(), data.as_ptr());
        assert_eq!(ids(&out), vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn packetizer_resyncs_after_a_torn_packet() {
        let mut data = packets(3);
        data.extend_from_slice(&[0x47; 50]); // half a packet
        data.extend_from_slice(&packets(5));
        let mut pk = Packetizer::new();
        let mut out = Vec::new();
        pk.push(Bytes::from(data), &mut out);
        pk.push(Bytes::new(), &mut out);
        let got = ids(&out);
        // The three packets before the tear and, after resync, the last five
        // (at most the one holding the torn bytes is lost).
        assert_eq!(&got[..3], &[0, 1, 2]);
        assert!(got.ends_with(&[1, 2, 3, 4]), "{got:?}");
    }
}
