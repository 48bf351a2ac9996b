//! TFTP packets (RFC 1350, options of RFC 2347) parsed from and written to byte slices.
//!
//! Parsing borrows from the datagram (no copies, no allocation) and returns a typed error for
//! anything malformed; it never panics, whatever the input. Writing goes into a caller's buffer
//! so the data path can build every packet in place.

use std::fmt;

/// Largest DATA payload RFC 2348 allows (65535 minus IP and UDP headers and the 4-byte TFTP one).
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// The block size when no option says otherwise.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Bytes before the payload of a DATA packet.
pub const DATA_HEADER: usize = 4;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Error codes of RFC 1350 and RFC 2347.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

/// Transfer mode of a request. RFC 1350's `mail` is obsolete and refused by this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
    Mail,
}

impl Mode {
    fn parse(raw: &[u8]) -> Option<Mode> {
        if raw.eq_ignore_ascii_case(b"octet") {
            Some(Mode::Octet)
        } else if raw.eq_ignore_ascii_case(b"netascii") {
            Some(Mode::Netascii)
        } else if raw.eq_ignore_ascii_case(b"mail") {
            Some(Mode::Mail)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet is {0} bytes, too short for an opcode")]
    NoOpcode(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0} packet is truncated")]
    Truncated(&'static str),
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("trailing bytes after the ERROR message")]
    Trailing,
}

/// A read or write request: file name, mode and the raw options that follow.
#[derive(Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a [u8],
    pub mode: Mode,
    /// NUL-terminated name/value pairs, already checked to be well formed.
    options: &'a [u8],
}

impl<'a> Request<'a> {
    /// The options in the order the client sent them.
    pub fn options(&self) -> Options<'a> {
        Options { rest: self.options }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("filename", &String::from_utf8_lossy(self.filename))
            .field("mode", &self.mode)
            .field("options", &self.options().collect::<Vec<_>>())
            .finish()
    }
}

/// One option of a request or OACK. Names are case-insensitive (RFC 2347).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TftpOption<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

impl TftpOption<'_> {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value as a decimal number, if it is one.
    pub fn number(&self) -> Option<u64> {
        if self.value.is_empty() || self.value.len() > 19 {
            return None;
        }
        std::str::from_utf8(self.value).ok()?.parse().ok()
    }
}

impl fmt::Debug for TftpOption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", String::from_utf8_lossy(self.name), String::from_utf8_lossy(self.value))
    }
}

/// Iterator over options that [`split_options`] has validated.
#[derive(Clone)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Options<'a> {
    type Item = TftpOption<'a>;

    fn next(&mut self) -> Option<TftpOption<'a>> {
        let (name, rest) = take_cstr(self.rest)?;
        let (value, rest) = take_cstr(rest)?;
        self.rest = rest;
        Some(TftpOption { name, value })
    }
}

/// A parsed packet, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: u16, message: &'a [u8] },
    Oack(Options<'a>),
}

impl Packet<'_> {
    /// The packet type as RFC 1350 names it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Rrq(_) => "RRQ",
            Packet::Wrq(_) => "WRQ",
            Packet::Data { .. } => "DATA",
            Packet::Ack(_) => "ACK",
            Packet::Error { .. } => "ERROR",
            Packet::Oack(_) => "OACK",
        }
    }
}

impl PartialEq for Options<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.rest == other.rest
    }
}
impl Eq for Options<'_> {}
impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

fn cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    take_cstr(buf).ok_or(ParseError::Unterminated(what))
}

/// Checks that `buf` is a sequence of NUL-terminated name/value pairs and returns it whole.
fn split_options(buf: &[u8]) -> Result<Options<'_>, ParseError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let (name, after) = cstr(rest, "option name")?;
        let (_, after) = take_cstr(after).ok_or_else(|| {
            ParseError::OptionWithoutValue(String::from_utf8_lossy(name).into_owned())
        })?;
        rest = after;
    }
    Ok(Options { rest: buf })
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

fn request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = cstr(body, "file name")?;
    let (mode, rest) = cstr(rest, "mode")?;
    let mode = Mode::parse(mode)
        .ok_or_else(|| ParseError::UnknownMode(String::from_utf8_lossy(mode).into_owned()))?;
    let options = split_options(rest)?;
    Ok(Request { filename, mode, options: options.rest })
}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    let op = u16_at(buf, 0).ok_or(ParseError::NoOpcode(buf.len()))?;
    let body = &buf[2..];
    match op {
        OP_RRQ => Ok(Packet::Rrq(request(body)?)),
        OP_WRQ => Ok(Packet::Wrq(request(body)?)),
        OP_DATA => {
            let block = u16_at(buf, 2).ok_or(ParseError::Truncated("DATA"))?;
            Ok(Packet::Data { block, data: &buf[4..] })
        }
        OP_ACK => Ok(Packet::Ack(u16_at(buf, 2).ok_or(ParseError::Truncated("ACK"))?)),
        OP_ERROR => {
            let code = u16_at(buf, 2).ok_or(ParseError::Truncated("ERROR"))?;
            // Some peers omit the terminating NUL; accept the message up to the end then.
            let (message, rest) = take_cstr(&buf[4..]).unwrap_or((&buf[4..], &[]));
            if !rest.is_empty() {
                return Err(ParseError::Trailing);
            }
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack(split_options(body)?)),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

/// A buffer too small for the packet being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer too small for the packet")]
pub struct NoRoom;

/// Appends packets to a byte vector. Used for the rare packets (requests, OACK, ERROR, ACK);
/// DATA is written in place with [`data_header`].
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>, op: u16) -> Self {
        out.clear();
        out.extend_from_slice(&op.to_be_bytes());
        Writer { out }
    }

    pub fn u16(self, v: u16) -> Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A NUL-terminated string. NUL bytes inside it would end it early, so they are dropped.
    pub fn cstr(self, s: &[u8]) -> Self {
        self.out.extend(s.iter().copied().filter(|&b| b != 0));
        self.out.push(0);
        self
    }

    pub fn option(self, name: &str, value: impl fmt::Display) -> Self {
        self.cstr(name.as_bytes()).cstr(value.to_string().as_bytes())
    }
}

/// Writes an ERROR packet.
pub fn error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    Writer::new(out, OP_ERROR).u16(code as u16).cstr(message.as_bytes());
}

/// Writes an ACK packet.
pub fn ack(out: &mut Vec<u8>, block: u16) {
    Writer::new(out, OP_ACK).u16(block);
}

/// Writes a request with options.
pub fn request_packet(out: &mut Vec<u8>, op: u16, filename: &[u8], mode: Mode, options: &[(&str, &str)]) {
    let mut w = Writer::new(out, op).cstr(filename).cstr(mode.as_str().as_bytes());
    for (n, v) in options {
        w = w.option(n, v);
    }
}

/// Writes the 4-byte DATA header at the start of `buf`, whose payload follows it.
pub fn data_header(buf: &mut [u8], block: u16) -> Result<(), NoRoom> {
    let head = buf.get_mut(..DATA_HEADER).ok_or(NoRoom)?;
    head[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    head[2..].copy_from_slice(&block.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(p: &Request) -> Vec<(String, String)> {
        p.options()
            .map(|o| {
                (String::from_utf8_lossy(o.name).into(), String::from_utf8_lossy(o.value).into())
            })
            .collect()
    }

    #[test]
    fn rrq_with_options() {
        let raw = b"\0\x01pxelinux.0\0OcTeT\0blksize\x001468\0tsize\x000\0";
        let Ok(Packet::Rrq(r)) = parse(raw) else { panic!("{:?}", parse(raw)) };
        assert_eq!(r.filename, b"pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(opts(&r), [("blksize".into(), "1468".into()), ("tsize".into(), "0".into())]);
        assert!(r.options().next().unwrap().is("BLKSIZE"));
        assert_eq!(r.options().next().unwrap().number(), Some(1468));
    }

    #[test]
    fn rrq_plain_and_wrq() {
        let Ok(Packet::Rrq(r)) = parse(b"\0\x01a/b\0netascii\0") else { panic!() };
        assert_eq!(r.mode, Mode::Netascii);
        assert_eq!(r.options().count(), 0);
        let Ok(Packet::Wrq(w)) = parse(b"\0\x02up\0octet\0") else { panic!() };
        assert_eq!(w.filename, b"up");
        let Ok(Packet::Rrq(m)) = parse(b"\0\x01x\0MAIL\0") else { panic!() };
        assert_eq!(m.mode, Mode::Mail);
    }

    #[test]
    fn data_ack_error_oack() {
        assert_eq!(parse(b"\0\x03\x01\x02abc"), Ok(Packet::Data { block: 0x0102, data: b"abc" }));
        assert_eq!(parse(b"\0\x03\xff\xff"), Ok(Packet::Data { block: 0xffff, data: b"" }));
        assert_eq!(parse(b"\0\x04\0\x07"), Ok(Packet::Ack(7)));
        // Extra bytes after an ACK are tolerated, as most servers do.
        assert_eq!(parse(b"\0\x04\0\x07\0"), Ok(Packet::Ack(7)));
        assert_eq!(parse(b"\0\x05\0\x01nope\0"), Ok(Packet::Error { code: 1, message: b"nope" }));
        assert_eq!(parse(b"\0\x05\0\x08"), Ok(Packet::Error { code: 8, message: b"" }));
        let Ok(Packet::Oack(o)) = parse(b"\0\x06blksize\x00512\0") else { panic!() };
        assert_eq!(o.clone().count(), 1);
        assert_eq!(o.clone().next().unwrap().number(), Some(512));
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::NoOpcode(0)),
            (b"\0", ParseError::NoOpcode(1)),
            (b"\0\x07", ParseError::UnknownOpcode(7)),
            (b"\0\0", ParseError::UnknownOpcode(0)),
            (b"\xff\xff", ParseError::UnknownOpcode(0xffff)),
            (b"\0\x01", ParseError::Unterminated("file name")),
            (b"\0\x01file", ParseError::Unterminated("file name")),
            (b"\0\x01file\0", ParseError::Unterminated("mode")),
            (b"\0\x01file\0octet", ParseError::Unterminated("mode")),
            (b"\0\x01file\0binary\0", ParseError::UnknownMode("binary".into())),
            (b"\0\x01file\0octet\0blksize", ParseError::Unterminated("option name")),
            (b"\0\x01file\0octet\0blksize\0", ParseError::OptionWithoutValue("blksize".into())),
            (b"\0\x01file\0octet\0blksize\x001024", ParseError::OptionWithoutValue("blksize".into())),
            (b"\0\x02f\0octet\0x\0", ParseError::OptionWithoutValue("x".into())),
            (b"\0\x03", ParseError::Truncated("DATA")),
            (b"\0\x03\x01", ParseError::Truncated("DATA")),
            (b"\0\x04", ParseError::Truncated("ACK")),
            (b"\0\x04\x01", ParseError::Truncated("ACK")),
            (b"\0\x05\0", ParseError::Truncated("ERROR")),
            (b"\0\x05\0\x01a\0b", ParseError::Trailing),
            (b"\0\x06x\0", ParseError::OptionWithoutValue("x".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw).as_ref().err(), Some(want), "{raw:?}");
        }
    }

    #[test]
    fn number_rejects_junk() {
        let o = |v: &'static [u8]| TftpOption { name: b"n", value: v }.number();
        assert_eq!(o(b"0"), Some(0));
        assert_eq!(o(b""), None);
        assert_eq!(o(b"-1"), None);
        assert_eq!(o(b"12a"), None);
        assert_eq!(o(b"99999999999999999999999"), None);
    }

    #[test]
    fn writers_round_trip() {
        let mut v = Vec::new();
        request_packet(&mut v, OP_RRQ, b"boot.ipxe", Mode::Octet, &[("blksize", "1468"), ("windowsize", "16")]);
        assert_eq!(v, b"\0\x01boot.ipxe\0octet\0blksize\x001468\0windowsize\x0016\0");
        let Ok(Packet::Rrq(r)) = parse(&v) else { panic!() };
        assert_eq!(r.options().count(), 2);
        error(&mut v, ErrorCode::AccessViolation, "no\0pe");
        assert_eq!(v, b"\0\x05\0\x02nope\0");
        ack(&mut v, 0x1234);
        assert_eq!(v, b"\0\x04\x12\x34");
        let mut d = [9u8; 6];
        data_header(&mut d, 0xfffe).unwrap();
        assert_eq!(d, [0, 3, 0xff, 0xfe, 9, 9]);
        assert_eq!(data_header(&mut [0u8; 3], 1), Err(NoRoom));
    }

    /// Every prefix of valid packets and a pseudo-random sweep: parse must never panic.
    #[test]
    fn never_panics() {
        let samples: [&[u8]; 4] = [
            b"\0\x01f\0octet\0blksize\x001468\0",
            b"\0\x05\0\x01msg\0",
            b"\0\x06tsize\x001\0",
            b"\0\x03\0\x01data",
        ];
        for s in samples {
            for n in 0..=s.len() {
                let _ = parse(&s[..n]);
            }
        }
        let mut x: u32 = 0x1234_5678;
        let mut buf = [0u8; 24];
        for _ in 0..20_000 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = (x % 7) as u8; // small alphabet: many NULs and valid opcodes
            }
            let _ = parse(&buf[..(x as usize % 24)]);
        }
    }
}
