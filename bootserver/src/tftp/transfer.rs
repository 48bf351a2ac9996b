//! The sender side of one read transfer, as a state machine without I/O.
//!
//! It is fed what happens (a datagram from the client, a timeout) and answers with a [`Step`];
//! the packets to put on the wire are then in [`Transfer::outgoing`]. File data is pulled from
//! any [`Read`] strictly in order: blocks not yet acknowledged stay built in their buffers, so a
//! retransmission never reads the file again and netascii needs no seeking.

use std::collections::VecDeque;
use std::io::Read;
use std::time::Duration;

use super::packet::{self, ErrorCode, Packet, ParseError, DATA_HEADER};

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send [`Transfer::outgoing`], then wait up to [`Transfer::timeout`] for the next packet.
    Send,
    /// Nothing to send; keep waiting with the timer already running.
    Wait,
    /// The datagram was dropped; keep waiting.
    Ignored(Dropped),
    /// The last block is acknowledged.
    Done,
    /// Send [`Transfer::outgoing`] (an ERROR) and stop.
    Abort(String),
    /// Stop without sending anything.
    Failed(String),
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    Malformed(ParseError),
    /// An ACK outside the window in flight (late or bogus).
    StaleAck(u16),
    /// A packet type a sender never expects (DATA, a request, OACK).
    Unexpected(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The OACK is out; waiting for ACK 0.
    Oack,
    Data,
    Finished,
}

/// Timing and window parameters of a transfer.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub blksize: u16,
    pub windowsize: u16,
    /// First retransmission timeout; it doubles on each retry up to `max_timeout`.
    pub timeout: Duration,
    pub max_timeout: Duration,
    /// Retransmissions before giving up.
    pub retries: u32,
    /// Retransmissions before the client's first ACK, when `retries` does not apply yet:
    /// until the client has answered, its address may be forged, and each retransmission
    /// would go to whoever the forger named.
    pub retries_before_ack: u32,
}

pub struct Transfer<R> {
    reader: R,
    p: Params,
    phase: Phase,
    /// OACK or ERROR waiting to be (re)sent.
    control: Vec<u8>,
    /// Built DATA packets of the window in flight, oldest first.
    window: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// Index (from 1, never wrapping) of the last acknowledged block.
    acked: u64,
    /// Index of the final, short block once it is read.
    last: Option<u64>,
    retry: u32,
    /// The client acknowledged something: its address is real.
    answered: bool,
    /// A duplicate ACK already caused a resend since the last progress.
    resent_on_duplicate: bool,
    bytes: u64,
}

impl<R: Read> Transfer<R> {
    /// A transfer that opens with `oack` when options were accepted, else with DATA 1.
    pub fn new(reader: R, p: Params, oack: Option<Vec<u8>>) -> Self {
        let windowsize = p.windowsize.max(1);
        let (phase, control) = match oack {
            Some(o) => (Phase::Oack, o),
            None => (Phase::Data, Vec::new()),
        };
        Transfer {
            reader,
            p: Params { windowsize, ..p },
            phase,
            control,
            window: VecDeque::with_capacity(windowsize as usize),
            spare: Vec::new(),
            acked: 0,
            last: None,
            retry: 0,
            answered: false,
            resent_on_duplicate: false,
            bytes: 0,
        }
    }

    /// The first step: send the OACK or the first window.
    pub fn start(&mut self) -> Step {
        match self.phase {
            Phase::Oack => Step::Send,
            _ => self.fill(),
        }
    }

    /// Payload bytes the client has acknowledged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How long to wait for an answer to what was just sent.
    pub fn timeout(&self) -> Duration {
        let t = self.p.timeout.saturating_mul(1u32 << self.retry.min(16));
        t.min(self.p.max_timeout.max(self.p.timeout))
    }

    /// The datagrams to send after [`Step::Send`] or [`Step::Abort`].
    pub fn outgoing(&self) -> impl Iterator<Item = &[u8]> {
        let control = (!self.control.is_empty()).then_some(self.control.as_slice());
        let data = if control.is_none() { self.window.len() } else { 0 };
        control.into_iter().chain(self.window.iter().take(data).map(Vec::as_slice))
    }

    pub fn on_timeout(&mut self) -> Step {
        if self.phase == Phase::Finished {
            return Step::Wait;
        }
        self.retry += 1;
        let retries = if self.answered { self.p.retries } else { self.p.retries_before_ack.min(self.p.retries) };
        if self.retry > retries {
            let what = match self.phase {
                Phase::Oack => "the OACK".to_string(),
                _ => format!("block {}", self.acked + 1),
            };
            self.phase = Phase::Finished;
            let first = if self.answered { "" } else { " (the client never answered; its address may be forged)" };
            return Step::Failed(format!("no answer to {what} after {retries} retries{first}"));
        }
        Step::Send
    }

    pub fn on_packet(&mut self, datagram: &[u8]) -> Step {
        if self.phase == Phase::Finished {
            return Step::Wait;
        }
        let pkt = match packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => return Step::Ignored(Dropped::Malformed(e)),
        };
        match pkt {
            Packet::Ack(n) => self.on_ack(n),
            Packet::Error { code, message } => {
                self.phase = Phase::Finished;
                Step::Failed(format!(
                    "client sent error {code}: {}",
                    String::from_utf8_lossy(message).trim()
                ))
            }
            Packet::Rrq(_) => Step::Ignored(Dropped::Unexpected(packet::OP_RRQ)),
            Packet::Wrq(_) => Step::Ignored(Dropped::Unexpected(packet::OP_WRQ)),
            Packet::Data { .. } => Step::Ignored(Dropped::Unexpected(packet::OP_DATA)),
            Packet::Oack(_) => Step::Ignored(Dropped::Unexpected(packet::OP_OACK)),
        }
    }

    fn on_ack(&mut self, n: u16) -> Step {
        if self.phase == Phase::Oack {
            if n != 0 {
                return Step::Ignored(Dropped::StaleAck(n));
            }
            self.phase = Phase::Data;
            self.control.clear();
            self.retry = 0;
            self.answered = true;
            return self.fill();
        }
        // Block numbers wrap past 65535 to 0; the distance from the last ACK places it.
        let ahead = n.wrapping_sub(self.acked as u16) as usize;
        if ahead == 0 {
            // A repeated ACK. Answering each with a resend is the sorcerer's apprentice bug;
            // in a window it is how a client reports a lost first block, so one resend per
            // window in flight is allowed, which cannot multiply.
            if self.p.windowsize > 1 && !self.resent_on_duplicate && !self.window.is_empty() {
                self.resent_on_duplicate = true;
                return Step::Send;
            }
            return Step::Wait;
        }
        if ahead > self.window.len() {
            return Step::Ignored(Dropped::StaleAck(n));
        }
        for buf in self.window.drain(..ahead) {
            self.bytes += (buf.len() - DATA_HEADER) as u64;
            self.spare.push(buf);
        }
        self.acked += ahead as u64;
        self.retry = 0;
        self.answered = true;
        self.resent_on_duplicate = false;
        if Some(self.acked) == self.last {
            self.phase = Phase::Finished;
            return Step::Done;
        }
        // A partial ACK lands here too: the rest of the window is resent from acked + 1.
        self.fill()
    }

    /// Tops the window up with new blocks and asks for it to be sent.
    fn fill(&mut self) -> Step {
        let blksize = self.p.blksize as usize;
        while self.window.len() < self.p.windowsize as usize && self.last.is_none() {
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.resize(DATA_HEADER + blksize, 0);
            let n = match read_full(&mut self.reader, &mut buf[DATA_HEADER..]) {
                Ok(n) => n,
                Err(e) => {
                    self.phase = Phase::Finished;
                    packet::error(&mut self.control, ErrorCode::NotDefined, "read error");
                    return Step::Abort(format!("reading block {}: {e}", self.next_index()));
                }
            };
            buf.truncate(DATA_HEADER + n);
            let index = self.next_index();
            // The header always fits: the buffer holds DATA_HEADER bytes at least.
            let _ = packet::data_header(&mut buf, index as u16);
            if n < blksize {
                self.last = Some(index);
            }
            self.window.push_back(buf);
        }
        Step::Send
    }

    fn next_index(&self) -> u64 {
        self.acked + self.window.len() as u64 + 1
    }
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::ack;

    fn params(blksize: u16, windowsize: u16) -> Params {
        Params {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            retries: 3,
            retries_before_ack: 3,
        }
    }

    fn ack_pkt(n: u16) -> Vec<u8> {
        let mut v = Vec::new();
        ack(&mut v, n);
        v
    }

    /// (block number, payload) of each outgoing DATA packet.
    fn sent<R: Read>(t: &Transfer<R>) -> Vec<(u16, Vec<u8>)> {
        t.outgoing()
            .map(|p| match packet::parse(p) {
                Ok(Packet::Data { block, data }) => (block, data.to_vec()),
                other => panic!("not DATA: {other:?}"),
            })
            .collect()
    }

    fn blocks<R: Read>(t: &Transfer<R>) -> Vec<u16> {
        sent(t).into_iter().map(|(b, _)| b).collect()
    }

    #[test]
    fn lock_step_without_options() {
        let data: Vec<u8> = (0..1100u32).map(|i| i as u8).collect();
        let mut t = Transfer::new(&data[..], params(512, 1), None);
        assert_eq!(t.start(), Step::Send);
        assert_eq!(sent(&t), [(1, data[..512].to_vec())]);
        assert_eq!(t.on_packet(&ack_pkt(1)), Step::Send);
        assert_eq!(sent(&t), [(2, data[512..1024].to_vec())]);
        // A duplicate ACK 1 must not trigger a resend (sorcerer's apprentice).
        assert_eq!(t.on_packet(&ack_pkt(1)), Step::Wait);
        assert_eq!(t.on_packet(&ack_pkt(2)), Step::Send);
        assert_eq!(sent(&t), [(3, data[1024..].to_vec())]);
        assert_eq!(t.on_packet(&ack_pkt(3)), Step::Done);
        assert_eq!(t.bytes(), 1100);
    }

    #[test]
    fn exact_multiple_ends_with_empty_block() {
        let data = vec![7u8; 1024];
        let mut t = Transfer::new(&data[..], params(512, 4), None);
        t.start();
        assert_eq!(blocks(&t), [1, 2, 3]);
        assert_eq!(sent(&t)[2].1.len(), 0);
        assert_eq!(t.on_packet(&ack_pkt(3)), Step::Done);
        let mut empty = Transfer::new(&[][..], params(512, 1), None);
        empty.start();
        assert_eq!(sent(&empty), [(1, vec![])]);
        assert_eq!(empty.on_packet(&ack_pkt(1)), Step::Done);
    }

    #[test]
    fn oack_then_ack_zero() {
        let data = vec![1u8; 20];
        let oack = b"\0\x06blksize\x008\0".to_vec();
        let mut t = Transfer::new(&data[..], params(8, 1), Some(oack.clone()));
        assert_eq!(t.start(), Step::Send);
        assert_eq!(t.outgoing().collect::<Vec<_>>(), [&oack[..]]);
        // Timeout resends the OACK.
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(t.outgoing().collect::<Vec<_>>(), [&oack[..]]);
        assert_eq!(t.on_packet(&ack_pkt(5)), Step::Ignored(Dropped::StaleAck(5)));
        assert_eq!(t.on_packet(&ack_pkt(0)), Step::Send);
        assert_eq!(blocks(&t), [1]);
        assert_eq!(t.on_packet(&ack_pkt(1)), Step::Send);
        assert_eq!(t.on_packet(&ack_pkt(2)), Step::Send);
        assert_eq!(sent(&t), [(3, vec![1u8; 4])]);
        assert_eq!(t.on_packet(&ack_pkt(3)), Step::Done);
    }

    #[test]
    fn client_error_after_oack_ends_transfer() {
        let mut t = Transfer::new(&b"x"[..], params(8, 1), Some(b"\0\x06tsize\x001\0".to_vec()));
        t.start();
        let step = t.on_packet(b"\0\x05\0\x08option refused\0");
        assert!(matches!(step, Step::Failed(m) if m.contains("error 8")));
        assert_eq!(t.on_packet(&ack_pkt(0)), Step::Wait);
    }

    #[test]
    fn window_partial_ack_resends_from_acked_plus_one() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut t = Transfer::new(&data[..], params(8, 4), None);
        t.start();
        assert_eq!(blocks(&t), [1, 2, 3, 4]);
        // Client got 1 and 2 only.
        assert_eq!(t.on_packet(&ack_pkt(2)), Step::Send);
        assert_eq!(sent(&t), [
            (3, data[16..24].to_vec()),
            (4, data[24..32].to_vec()),
            (5, data[32..40].to_vec()),
            (6, data[40..48].to_vec()),
        ]);
        // Duplicate ACK 2 (first block of the window lost): one resend, then no more.
        assert_eq!(t.on_packet(&ack_pkt(2)), Step::Send);
        assert_eq!(blocks(&t), [3, 4, 5, 6]);
        assert_eq!(t.on_packet(&ack_pkt(2)), Step::Wait);
        // A timeout resends the whole window.
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(blocks(&t), [3, 4, 5, 6]);
        // An ACK beyond the window and an old one are ignored.
        assert_eq!(t.on_packet(&ack_pkt(9)), Step::Ignored(Dropped::StaleAck(9)));
        assert_eq!(t.on_packet(&ack_pkt(1)), Step::Ignored(Dropped::StaleAck(1)));
        assert_eq!(t.on_packet(&ack_pkt(6)), Step::Send);
        assert_eq!(blocks(&t), [7, 8, 9, 10]);
        assert_eq!(t.on_packet(&ack_pkt(10)), Step::Send);
        assert_eq!(blocks(&t), [11, 12, 13]);
        assert_eq!(sent(&t)[2].1, data[96..].to_vec());
        assert_eq!(t.on_packet(&ack_pkt(13)), Step::Done);
        assert_eq!(t.bytes(), 100);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        // 65537 full blocks of 8 bytes and a short one.
        let len = 8 * 65_537 + 3;
        let data: Vec<u8> = (0..len).map(|i| (i / 8) as u8).collect();
        let mut t = Transfer::new(&data[..], params(8, 16), None);
        let mut step = t.start();
        let mut expect: u64 = 1;
        let mut got = Vec::new();
        while step == Step::Send {
            let out = sent(&t);
            for (b, d) in &out {
                assert_eq!(*b, expect as u16);
                expect += 1;
                got.extend_from_slice(d);
            }
            step = t.on_packet(&ack_pkt(out.last().unwrap().0));
        }
        assert_eq!(step, Step::Done);
        assert_eq!(expect, 65_539, "blocks 1..=65538");
        assert_eq!(got, data);
    }

    #[test]
    fn rollover_partial_ack_across_wrap() {
        let data = vec![0u8; 8 * 65_540];
        let mut t = Transfer::new(&data[..], params(8, 4), None);
        t.start();
        // Walk to the window 65533..=65536.
        let mut last = 4u16;
        while last != 65_532 {
            t.on_packet(&ack_pkt(last));
            last = *blocks(&t).last().unwrap();
        }
        t.on_packet(&ack_pkt(65_532));
        assert_eq!(blocks(&t), [65_533, 65_534, 65_535, 0]);
        t.on_packet(&ack_pkt(65_535));
        assert_eq!(blocks(&t), [0, 1, 2, 3]);
        t.on_packet(&ack_pkt(0));
        assert_eq!(blocks(&t), [1, 2, 3, 4]);
    }

    #[test]
    fn retries_back_off_then_give_up() {
        let mut t = Transfer::new(&[0u8; 10][..], params(512, 1), None);
        t.start();
        assert_eq!(t.timeout(), Duration::from_secs(1));
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(t.timeout(), Duration::from_secs(2));
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(t.timeout(), Duration::from_secs(4));
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(t.timeout(), Duration::from_secs(8));
        assert!(matches!(t.on_timeout(), Step::Failed(_)));
        // Progress resets the backoff.
        let mut t = Transfer::new(&[0u8; 600][..], params(512, 1), None);
        t.start();
        t.on_timeout();
        t.on_packet(&ack_pkt(1));
        assert_eq!(t.timeout(), Duration::from_secs(1));
    }

    #[test]
    fn a_client_that_never_answered_gets_fewer_retransmissions() {
        let p = Params { retries_before_ack: 1, ..params(512, 4) };
        // No options: the first window once, then once more, then silence.
        let mut t = Transfer::new(&[0u8; 5000][..], p, None);
        assert_eq!(t.start(), Step::Send);
        assert_eq!(t.on_timeout(), Step::Send);
        assert!(matches!(t.on_timeout(), Step::Failed(m) if m.contains("may be forged")));
        // The same for an OACK, and the window is never sent at all.
        let mut t = Transfer::new(&[0u8; 5000][..], p, Some(b"\0\x06tsize\x005000\0".to_vec()));
        t.start();
        assert_eq!(t.outgoing().count(), 1);
        assert_eq!(t.on_timeout(), Step::Send);
        assert_eq!(t.outgoing().count(), 1);
        assert!(matches!(t.on_timeout(), Step::Failed(m) if m.contains("OACK after 1 retries")));
        // Once the client answered, the full count applies, from the next block on.
        let mut t = Transfer::new(&[0u8; 5000][..], p, None);
        t.start();
        t.on_packet(&ack_pkt(2));
        for _ in 0..3 {
            assert_eq!(t.on_timeout(), Step::Send);
        }
        assert!(matches!(t.on_timeout(), Step::Failed(m) if !m.contains("forged")));
        // None means none: the first send is the only one.
        let mut t = Transfer::new(&[0u8; 10][..], Params { retries_before_ack: 0, ..p }, None);
        t.start();
        assert!(matches!(t.on_timeout(), Step::Failed(_)));
    }

    #[test]
    fn malformed_and_unexpected_packets_are_dropped() {
        let mut t = Transfer::new(&[0u8; 10][..], params(512, 1), None);
        t.start();
        assert_eq!(t.on_packet(b"\0"), Step::Ignored(Dropped::Malformed(ParseError::NoOpcode(1))));
        assert_eq!(t.on_packet(b"\0\x04\0"), Step::Ignored(Dropped::Malformed(ParseError::Truncated("ACK"))));
        assert_eq!(t.on_packet(b"\0\x03\0\x01x"), Step::Ignored(Dropped::Unexpected(packet::OP_DATA)));
        assert_eq!(t.on_packet(b"\0\x01f\0octet\0"), Step::Ignored(Dropped::Unexpected(packet::OP_RRQ)));
        assert_eq!(t.on_packet(&ack_pkt(1)), Step::Done);
    }

    #[test]
    fn read_error_aborts_with_tftp_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let mut t = Transfer::new(Broken, params(512, 1), None);
        assert!(matches!(t.start(), Step::Abort(m) if m.contains("disk on fire")));
        let out: Vec<_> = t.outgoing().collect();
        assert_eq!(out, [b"\0\x05\0\0read error\0".as_slice()]);
    }

    #[test]
    fn netascii_source_changes_block_contents() {
        let text = b"line one\nline two\r\n".to_vec();
        let reader = crate::tftp::netascii::Netascii::new(&text[..]);
        let mut t = Transfer::new(reader, params(512, 1), None);
        t.start();
        assert_eq!(sent(&t), [(1, b"line one\r\nline two\r\0\r\n".to_vec())]);
    }
}
