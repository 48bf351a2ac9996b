//! Pure RFB (RFC 6143) framing for the VNC proxy: no I/O, only byte slices in and message
//! boundaries out.
//!
//! The proxy relays the VM's stream to the viewer without decoding pixels, but it must know
//! where each message and each rectangle ends, so that it can switch to another VM between two
//! rectangles and never in the middle of one. Knowing a rectangle's length means parsing its
//! encoding, so the proxy only lets a VM use encodings listed in [`relayable`]: the encodings
//! sent to the VM are the viewer's list filtered through it.
//!
//! Why those encodings: Raw, CopyRect, RRE and Hextile carry no state from one rectangle to the
//! next. Tight keeps four zlib streams per connection, but its control byte has "reset stream"
//! bits, so after a switch the proxy sets them on the first Tight rectangle and the viewer starts
//! fresh inflaters, exactly like the new VM's fresh deflaters. ZRLE and Zlib keep one zlib
//! stream per connection with no reset signal, so the proxy re-compresses them into a stream of
//! its own towards the viewer that outlives switches (see [`super::recode`]). TRLE and ZYWRLE
//! are not offered: TRLE's length is only found by walking its tiles, and ZYWRLE is lossy.

use std::fmt;

/// Encoding numbers the proxy knows (RFC 6143 section 7.7 and the community registry).
pub mod enc {
    pub const RAW: i32 = 0;
    pub const COPY_RECT: i32 = 1;
    pub const RRE: i32 = 2;
    pub const HEXTILE: i32 = 5;
    pub const ZLIB: i32 = 6;
    pub const TIGHT: i32 = 7;
    #[cfg_attr(not(test), allow(dead_code))] // named so tests can show it is refused
    pub const TRLE: i32 = 15;
    pub const ZRLE: i32 = 16;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const LAST_RECT: i32 = -224;
    pub const CURSOR: i32 = -239;
    pub const X_CURSOR: i32 = -240;
    pub const QEMU_POINTER_MOTION: i32 = -257;
    pub const QEMU_EXT_KEY_EVENT: i32 = -258;
    pub const EXT_DESKTOP_SIZE: i32 = -308;
}

/// Whether the proxy can frame rectangles of this encoding, and may therefore let the VM use
/// it. Tight's JPEG quality (-32..=-23) and compression level (-256..=-247) pseudo-encodings
/// only tune the server and never appear in a rectangle.
pub(crate) fn relayable(e: i32) -> bool {
    use enc::*;
    matches!(
        e,
        RAW | COPY_RECT
            | RRE
            | HEXTILE
            | ZLIB
            | TIGHT
            | ZRLE
            | DESKTOP_SIZE
            | LAST_RECT
            | CURSOR
            | X_CURSOR
            | QEMU_POINTER_MOTION
            | QEMU_EXT_KEY_EVENT
            | EXT_DESKTOP_SIZE
    ) || (-32..=-23).contains(&e)
        || (-256..=-247).contains(&e)
}

/// The viewer's encodings as the VM may see them: order kept, the unframeable ones dropped.
pub(crate) fn filter_encodings(client: &[i32]) -> Vec<i32> {
    client.iter().copied().filter(|e| relayable(*e)).collect()
}

/// Largest single message or rectangle the proxy buffers. A 8192x8192 Raw rectangle at 32 bpp
/// is 256 MiB; nothing sane sends more than a screen per rectangle.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfbError {
    UnknownServerMessage(u8),
    UnknownClientMessage(u8),
    /// A rectangle in an encoding the proxy never offered.
    UnexpectedEncoding(i32),
    TooLarge(usize),
    /// A ZRLE or Zlib rectangle announcing more compressed bytes than its size can need.
    Oversized { encoding: i32, width: u16, height: u16, len: usize, max: usize },
    /// A ZRLE or Zlib rectangle whose data does not inflate within its bounds.
    Zlib(String),
    Malformed(&'static str),
}

impl fmt::Display for RfbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RfbError::UnknownServerMessage(t) => write!(f, "unknown server message type {t}"),
            RfbError::UnknownClientMessage(t) => write!(f, "unknown client message type {t}"),
            RfbError::UnexpectedEncoding(e) => write!(f, "rectangle in encoding {e}, which was not offered"),
            RfbError::TooLarge(n) => write!(f, "message of {n} bytes exceeds the {MAX_MESSAGE} byte limit"),
            RfbError::Oversized { encoding, width, height, len, max } => write!(
                f,
                "rectangle {width}x{height} in encoding {encoding} announces {len} compressed bytes, \
                 more than the {max} its pixels can take"
            ),
            RfbError::Zlib(what) => f.write_str(what),
            RfbError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for RfbError {}

/// An RFB pixel format (16 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// 32-bit little-endian true colour, 8 bits a channel: what most viewers ask for.
    pub fn rgb888() -> Self {
        PixelFormat {
            bits_per_pixel: 32,
            depth: 24,
            big_endian: false,
            true_colour: true,
            red_max: 255,
            green_max: 255,
            blue_max: 255,
            red_shift: 16,
            green_shift: 8,
            blue_shift: 0,
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self, RfbError> {
        if b.len() < 16 {
            return Err(RfbError::Malformed("pixel format"));
        }
        let pf = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if !matches!(pf.bits_per_pixel, 8 | 16 | 32) {
            return Err(RfbError::Malformed("pixel format (bits per pixel not 8, 16 or 32)"));
        }
        Ok(pf)
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = self.big_endian as u8;
        b[3] = self.true_colour as u8;
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    pub fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    /// Tight's TPIXEL: 3 bytes for 32-bit true colour of depth 24 with 8-bit channels.
    fn tpixel(&self) -> usize {
        if self.true_colour
            && self.bits_per_pixel == 32
            && self.depth == 24
            && self.red_max == 255
            && self.green_max == 255
            && self.blue_max == 255
        {
            3
        } else {
            self.bytes_per_pixel()
        }
    }
}

/// The ServerInit message: framebuffer size, native pixel format and desktop name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInit {
    pub width: u16,
    pub height: u16,
    pub format: PixelFormat,
    pub name: Vec<u8>,
}

impl ServerInit {
    /// Parses a complete ServerInit; `Ok(None)` when more bytes are needed.
    pub fn parse(b: &[u8]) -> Result<Option<(Self, usize)>, RfbError> {
        if b.len() < 24 {
            return Ok(None);
        }
        let name_len = u32::from_be_bytes([b[20], b[21], b[22], b[23]]) as usize;
        if name_len > 4096 {
            return Err(RfbError::Malformed("ServerInit (desktop name longer than 4096 bytes)"));
        }
        if b.len() < 24 + name_len {
            return Ok(None);
        }
        let init = ServerInit {
            width: u16::from_be_bytes([b[0], b[1]]),
            height: u16::from_be_bytes([b[2], b[3]]),
            format: PixelFormat::parse(&b[4..20])?,
            name: b[24..24 + name_len].to_vec(),
        };
        Ok(Some((init, 24 + name_len)))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.name.len());
        v.extend_from_slice(&self.width.to_be_bytes());
        v.extend_from_slice(&self.height.to_be_bytes());
        v.extend_from_slice(&self.format.to_bytes());
        v.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        v.extend_from_slice(&self.name);
        v
    }
}

/// Parses a 12-byte `RFB xxx.yyy\n` version string into (major, minor).
/// Works on the bytes: the peer's 12 bytes need not be ASCII, and slicing them as a string
/// could cut a character in two.
pub fn parse_version(b: &[u8; 12]) -> Result<(u16, u16), RfbError> {
    let (major, minor) = (&b[4..7], &b[8..11]);
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' || !major.iter().chain(minor).all(u8::is_ascii_digit) {
        return Err(RfbError::Malformed("protocol version"));
    }
    let number = |digits: &[u8]| digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok((number(major), number(minor)))
}

/// A message from the viewer, as the proxy needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest { incremental: bool, x: u16, y: u16, width: u16, height: u16 },
    /// Key, pointer, cut text, QEMU extended key and SetDesktopSize: relayed as they are.
    Input,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one message from the viewer at the start of `b`; `Ok(None)` when it is not complete
/// yet, else the message and its length.
pub fn parse_client(b: &[u8]) -> Result<Option<(ClientMsg, usize)>, RfbError> {
    let Some(&kind) = b.first() else { return Ok(None) };
    let need = |n: usize| b.len() >= n;
    Ok(match kind {
        0 => {
            if !need(20) {
                return Ok(None);
            }
            Some((ClientMsg::SetPixelFormat(PixelFormat::parse(&b[4..20])?), 20))
        }
        2 => {
            if !need(4) {
                return Ok(None);
            }
            let n = be16(b, 2) as usize;
            let len = 4 + 4 * n;
            if !need(len) {
                return Ok(None);
            }
            let encs = (0..n).map(|i| be32(b, 4 + 4 * i) as i32).collect();
            Some((ClientMsg::SetEncodings(encs), len))
        }
        3 => {
            if !need(10) {
                return Ok(None);
            }
            let msg = ClientMsg::UpdateRequest {
                incremental: b[1] != 0,
                x: be16(b, 2),
                y: be16(b, 4),
                width: be16(b, 6),
                height: be16(b, 8),
            };
            Some((msg, 10))
        }
        4 => need(8).then_some((ClientMsg::Input, 8)),
        5 => need(6).then_some((ClientMsg::Input, 6)),
        6 => {
            if !need(8) {
                return Ok(None);
            }
            // A negative length is the extended clipboard, which the proxy never offers.
            let n = be32(b, 4) as i32;
            if n < 0 {
                return Err(RfbError::Malformed("ClientCutText (extended clipboard not negotiated)"));
            }
            let len = 8 + n as usize;
            if len > MAX_MESSAGE {
                return Err(RfbError::TooLarge(len));
            }
            need(len).then_some((ClientMsg::Input, len))
        }
        251 => {
            if !need(8) {
                return Ok(None);
            }
            let len = 8 + 16 * b[6] as usize;
            need(len).then_some((ClientMsg::Input, len))
        }
        255 => {
            if !need(2) {
                return Ok(None);
            }
            // QEMU client message: only the extended key event (sub-type 0) is ever enabled.
            if b[1] != 0 {
                return Err(RfbError::UnknownClientMessage(255));
            }
            need(12).then_some((ClientMsg::Input, 12))
        }
        other => return Err(RfbError::UnknownClientMessage(other)),
    })
}

/// A framed piece of the VM's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerItem {
    /// The 4-byte header of a FramebufferUpdate; its rectangles follow as separate items.
    UpdateHeader { rects: u16 },
    /// One rectangle, header (12 bytes) and data.
    Rect { x: u16, y: u16, width: u16, height: u16, encoding: i32 },
    /// SetColourMapEntries, Bell or ServerCutText, whole.
    Other { kind: u8 },
}

/// Splits the VM's stream into messages and rectangles. It remembers only how many rectangles
/// of the current FramebufferUpdate remain; the pixel format comes from the caller because the
/// viewer can change it.
#[derive(Debug, Default, Clone)]
pub struct ServerFramer {
    /// Rectangles still to come in the current update; `None` between messages.
    remaining: Option<Remaining>,
}

#[derive(Debug, Clone, Copy)]
enum Remaining {
    Count(u16),
    /// 0xFFFF rectangles announced: the update ends with a LastRect rectangle.
    UntilLastRect,
}

impl ServerFramer {
    /// True between messages: the only place where the stream may be cut or switched.
    pub fn at_boundary(&self) -> bool {
        self.remaining.is_none()
    }

    /// How to finish the current update with empty rectangles, if one is open: the number of
    /// zero-sized Raw rectangles to send, or `None` for "send one LastRect".
    pub fn open_update(&self) -> Option<Option<u16>> {
        match self.remaining {
            None => None,
            Some(Remaining::Count(n)) => Some(Some(n)),
            Some(Remaining::UntilLastRect) => Some(None),
        }
    }

    /// Forgets an open update (the stream it came from is gone).
    pub fn reset(&mut self) {
        self.remaining = None;
    }

    /// Frames the next item at the start of `b`. `Ok(None)` means more bytes are needed and
    /// the framer is unchanged.
    pub fn next(&mut self, b: &[u8], pf: &PixelFormat) -> Result<Option<(ServerItem, usize)>, RfbError> {
        if let Some(rem) = self.remaining {
            let Some((item, len)) = frame_rect(b, pf)? else { return Ok(None) };
            let ServerItem::Rect { encoding, .. } = item else { unreachable!("frame_rect yields rects") };
            self.remaining = match rem {
                Remaining::UntilLastRect if encoding == enc::LAST_RECT => None,
                Remaining::UntilLastRect => Some(rem),
                Remaining::Count(1) => None,
                Remaining::Count(_) if encoding == enc::LAST_RECT => None,
                Remaining::Count(n) => Some(Remaining::Count(n - 1)),
            };
            return Ok(Some((item, len)));
        }
        let Some(&kind) = b.first() else { return Ok(None) };
        match kind {
            0 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                let rects = be16(b, 2);
                self.remaining = match rects {
                    0 => None,
                    0xFFFF => Some(Remaining::UntilLastRect),
                    n => Some(Remaining::Count(n)),
                };
                Ok(Some((ServerItem::UpdateHeader { rects }, 4)))
            }
            1 => {
                if b.len() < 6 {
                    return Ok(None);
                }
                let len = 6 + 6 * be16(b, 4) as usize;
                Ok((b.len() >= len).then_some((ServerItem::Other { kind }, len)))
            }
            2 => Ok(Some((ServerItem::Other { kind }, 1))),
            3 => {
                if b.len() < 8 {
                    return Ok(None);
                }
                let n = be32(b, 4) as i32;
                if n < 0 {
                    return Err(RfbError::Malformed("ServerCutText (extended clipboard not negotiated)"));
                }
                let len = 8 + n as usize;
                if len > MAX_MESSAGE {
                    return Err(RfbError::TooLarge(len));
                }
                Ok((b.len() >= len).then_some((ServerItem::Other { kind }, len)))
            }
            other => Err(RfbError::UnknownServerMessage(other)),
        }
    }
}

/// Frames one rectangle (header and data) at the start of `b`.
fn frame_rect(b: &[u8], pf: &PixelFormat) -> Result<Option<(ServerItem, usize)>, RfbError> {
    if b.len() < 12 {
        return Ok(None);
    }
    let (x, y, w, h) = (be16(b, 0), be16(b, 2), be16(b, 4), be16(b, 6));
    let encoding = be32(b, 8) as i32;
    let item = ServerItem::Rect { x, y, width: w, height: h, encoding };
    let body = &b[12..];
    let (w, h) = (w as usize, h as usize);
    let bpp = pf.bytes_per_pixel();
    let data_len = match encoding {
        enc::RAW => Some(w * h * bpp),
        enc::COPY_RECT => Some(4),
        enc::RRE => {
            if body.len() < 4 {
                None
            } else {
                Some(4 + bpp + be32(body, 0) as usize * (bpp + 8))
            }
        }
        enc::HEXTILE => hextile_len(body, w, h, bpp)?,
        enc::TIGHT => tight_len(body, w, h, pf)?,
        enc::ZRLE | enc::ZLIB => {
            if body.len() < 4 {
                None
            } else {
                let n = be32(body, 0) as usize;
                let max = super::recode::max_compressed(super::recode::max_inflated(encoding, w, h));
                if n > max {
                    return Err(RfbError::Oversized { encoding, width: w as u16, height: h as u16, len: n, max });
                }
                Some(4 + n)
            }
        }
        enc::DESKTOP_SIZE
        | enc::LAST_RECT
        | enc::QEMU_POINTER_MOTION
        | enc::QEMU_EXT_KEY_EVENT => Some(0),
        enc::CURSOR => Some(w * h * bpp + w.div_ceil(8) * h),
        enc::X_CURSOR => Some(if w * h == 0 { 0 } else { 6 + 2 * w.div_ceil(8) * h }),
        enc::EXT_DESKTOP_SIZE => body.first().map(|&n| 4 + 16 * n as usize),
        other => return Err(RfbError::UnexpectedEncoding(other)),
    };
    let Some(data_len) = data_len else { return Ok(None) };
    let len = 12 + data_len;
    if len > MAX_MESSAGE {
        return Err(RfbError::TooLarge(len));
    }
    Ok((b.len() >= len).then_some((item, len)))
}

/// Length of a Hextile rectangle's data: it can only be found by walking its 16x16 tiles.
fn hextile_len(b: &[u8], w: usize, h: usize, bpp: usize) -> Result<Option<usize>, RfbError> {
    let mut at = 0usize;
    for ty in (0..h).step_by(16) {
        for tx in (0..w).step_by(16) {
            let (tw, th) = ((w - tx).min(16), (h - ty).min(16));
            let Some(&sub) = b.get(at) else { return Ok(None) };
            at += 1;
            if sub & 1 != 0 {
                at += tw * th * bpp;
                continue;
            }
            if sub & 2 != 0 {
                at += bpp;
            }
            if sub & 4 != 0 {
                at += bpp;
            }
            if sub & 8 != 0 {
                let Some(&n) = b.get(at) else { return Ok(None) };
                at += 1;
                let each = if sub & 16 != 0 { bpp + 2 } else { 2 };
                at += n as usize * each;
            }
            if at > MAX_MESSAGE {
                return Err(RfbError::TooLarge(at));
            }
        }
    }
    Ok((b.len() >= at).then_some(at))
}

/// Reads Tight's compact length (1 to 3 bytes) at `b[at..]`: (value, bytes used).
fn compact_len(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..3 {
        let byte = *b.get(at + i)? as usize;
        if i == 2 {
            return Some((value | byte << 14, 3));
        }
        value |= (byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    unreachable!("the loop returns by its third byte")
}

/// Length of a Tight rectangle's data (after the 12-byte header), from its control byte.
fn tight_len(b: &[u8], w: usize, h: usize, pf: &PixelFormat) -> Result<Option<usize>, RfbError> {
    let Some(&ctl) = b.first() else { return Ok(None) };
    let tp = pf.tpixel();
    let kind = ctl >> 4;
    if kind == 0x8 {
        return Ok(Some(1 + tp));
    }
    if kind == 0x9 {
        return Ok(compact_len(b, 1).map(|(n, used)| 1 + used + n));
    }
    if kind & 0x8 != 0 {
        return Err(RfbError::Malformed("Tight rectangle (PNG or unknown compression)"));
    }
    let mut at = 1;
    let mut row_bits = w * tp * 8;
    if kind & 0x4 != 0 {
        let Some(&filter) = b.get(at) else { return Ok(None) };
        at += 1;
        match filter {
            0 | 2 => {}
            1 => {
                let Some(&n) = b.get(at) else { return Ok(None) };
                let colours = n as usize + 1;
                at += 1 + colours * tp;
                row_bits = if colours <= 2 { w } else { w * 8 };
            }
            _ => return Err(RfbError::Malformed("Tight rectangle (unknown filter)")),
        }
    }
    let raw = row_bits.div_ceil(8) * h;
    if raw < 12 {
        return Ok(Some(at + raw));
    }
    Ok(compact_len(b, at).map(|(n, used)| at + used + n))
}

/// Emits a FramebufferUpdate with one DesktopSize pseudo-rectangle.
pub fn desktop_size_update(width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1];
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&enc::DESKTOP_SIZE.to_be_bytes());
    v
}

/// Emits a FramebufferUpdate with one ExtendedDesktopSize rectangle (reason: server change,
/// one screen covering the desktop).
pub fn ext_desktop_size_update(width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1];
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&enc::EXT_DESKTOP_SIZE.to_be_bytes());
    v.extend_from_slice(&[1, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}

/// Rectangles that close an update left open by a backend that went away: zero-sized Raw
/// rectangles (no data), or one LastRect when the update announced 0xFFFF rectangles.
pub fn close_update(open: Option<u16>) -> Vec<u8> {
    let (count, encoding) = match open {
        Some(n) => (n as usize, enc::RAW),
        None => (1, enc::LAST_RECT),
    };
    let mut v = Vec::with_capacity(12 * count);
    for _ in 0..count {
        v.extend_from_slice(&[0u8; 8]);
        v.extend_from_slice(&encoding.to_be_bytes());
    }
    v
}

/// SetPixelFormat from the proxy to a VM.
pub fn set_pixel_format(pf: &PixelFormat) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0];
    v.extend_from_slice(&pf.to_bytes());
    v
}

/// SetEncodings from the proxy to a VM.
pub fn set_encodings(encs: &[i32]) -> Vec<u8> {
    let mut v = vec![2, 0];
    v.extend_from_slice(&(encs.len() as u16).to_be_bytes());
    for e in encs {
        v.extend_from_slice(&e.to_be_bytes());
    }
    v
}

/// FramebufferUpdateRequest from the proxy to a VM.
pub fn update_request(incremental: bool, width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![3, incremental as u8, 0, 0, 0, 0];
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&height.to_be_bytes());
    v
}

/// Offset of a Tight rectangle's control byte within the rectangle (after its header).
pub const TIGHT_CONTROL_OFFSET: usize = 12;

/// Control-byte bits that make the viewer reset all four Tight zlib streams.
pub const TIGHT_RESET_ALL: u8 = 0x0f;

#[cfg(test)]
mod tests {
    use super::*;

    fn rgbx() -> PixelFormat {
        PixelFormat::rgb888()
    }

    fn rect(x: u16, y: u16, w: u16, h: u16, e: i32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in [x, y, w, h] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&e.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn pixel_format_round_trips_and_rejects_odd_depths() {
        let pf = rgbx();
        assert_eq!(PixelFormat::parse(&pf.to_bytes()).unwrap(), pf);
        let mut bad = pf.to_bytes();
        bad[0] = 24;
        assert!(PixelFormat::parse(&bad).is_err());
        assert_eq!(pf.tpixel(), 3);
        assert_eq!(PixelFormat { depth: 32, ..pf }.tpixel(), 4);
    }

    #[test]
    fn version_parses_and_rejects_garbage() {
        assert_eq!(parse_version(b"RFB 003.008\n").unwrap(), (3, 8));
        assert_eq!(parse_version(b"RFB 003.889\n").unwrap(), (3, 889));
        assert!(parse_version(b"HTTP/1.1 200").is_err());
        assert!(parse_version(b"RFB 003x008\n").is_err());
        // Found by the proxy_handshake fuzz target: a multi-byte character across the dot
        // panicked (string slicing off a character boundary).
        assert!(parse_version(b"RFB 003\xcc\xad03\n").is_err());
        assert!(parse_version(b"RFB +03.008\n").is_err());
    }

    #[test]
    fn server_init_round_trips_and_waits_for_the_name() {
        let init = ServerInit { width: 1024, height: 768, format: rgbx(), name: b"desk".to_vec() };
        let b = init.to_bytes();
        assert_eq!(ServerInit::parse(&b).unwrap(), Some((init, 28)));
        assert_eq!(ServerInit::parse(&b[..27]).unwrap(), None);
        let mut huge = b.clone();
        huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(ServerInit::parse(&huge).is_err());
    }

    #[test]
    fn client_messages_frame_and_incomplete_ones_wait() {
        let mut stream = set_pixel_format(&rgbx());
        stream.extend(set_encodings(&[7, 0, -223]));
        stream.extend(update_request(true, 640, 480));
        stream.extend([4, 1, 0, 0, 0, 0, 0, 0x61]);
        stream.extend([5, 0, 0, 10, 0, 20]);
        stream.extend([6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        stream.extend([255, 0, 0, 1, 0, 0, 0, 0x1e, 0, 0, 0, 0x1e]);
        let mut at = 0;
        let mut msgs = Vec::new();
        while at < stream.len() {
            let rest = &stream[at..];
            let (m, len) = parse_client(rest).unwrap().unwrap();
            for cut in 0..len {
                assert_eq!(parse_client(&rest[..cut]).unwrap(), None, "prefix {cut} of {m:?}");
            }
            msgs.push(m);
            at += len;
        }
        assert_eq!(msgs[0], ClientMsg::SetPixelFormat(rgbx()));
        assert_eq!(msgs[1], ClientMsg::SetEncodings(vec![7, 0, -223]));
        assert_eq!(
            msgs[2],
            ClientMsg::UpdateRequest { incremental: true, x: 0, y: 0, width: 640, height: 480 }
        );
        assert_eq!(msgs.len(), 7);
        assert_eq!(parse_client(&[150, 0]), Err(RfbError::UnknownClientMessage(150)));
        assert!(parse_client(&[255, 1, 0, 0]).is_err());
        assert!(parse_client(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0]).is_err());
    }

    #[test]
    fn encodings_the_proxy_cannot_frame_are_never_offered() {
        let viewer =
            [enc::ZRLE, enc::TRLE, 17, enc::TIGHT, enc::ZLIB, enc::HEXTILE, enc::RAW, -260, -313, -32, -247, enc::CURSOR];
        assert_eq!(
            filter_encodings(&viewer),
            vec![enc::ZRLE, enc::TIGHT, enc::ZLIB, enc::HEXTILE, enc::RAW, -32, -247, enc::CURSOR]
        );
    }

    /// Frames `stream` item by item; every strict prefix of an item must ask for more bytes.
    fn check_stream(stream: &[u8], pf: &PixelFormat, expect: &[ServerItem]) {
        let mut f = ServerFramer::default();
        let mut at = 0;
        let mut got = Vec::new();
        while at < stream.len() {
            let rest = &stream[at..];
            let (item, len) = f.clone().next(rest, pf).unwrap().expect("complete");
            for cut in (0..len).filter(|c| *c < 64 || c % 997 == 0) {
                assert_eq!(f.clone().next(&rest[..cut], pf).unwrap(), None, "prefix {cut} of {item:?}");
            }
            assert_eq!(f.next(rest, pf).unwrap(), Some((item, len)));
            got.push(item);
            at += len;
        }
        assert_eq!(got, expect);
        assert!(f.at_boundary());
    }

    #[test]
    fn raw_copyrect_rre_cursor_and_pseudo_rects_frame() {
        let pf = rgbx();
        let mut s = vec![0, 0, 0, 6];
        s.extend(rect(0, 0, 2, 2, enc::RAW, &[7; 16]));
        s.extend(rect(4, 4, 2, 2, enc::COPY_RECT, &[0, 0, 0, 0]));
        let mut rre = 2u32.to_be_bytes().to_vec();
        rre.extend([1; 4]);
        rre.extend([2; 24]);
        s.extend(rect(0, 0, 9, 9, enc::RRE, &rre));
        s.extend(rect(0, 0, 9, 2, enc::CURSOR, &[0; 9 * 2 * 4 + 2 * 2]));
        s.extend(rect(0, 0, 800, 600, enc::DESKTOP_SIZE, &[]));
        let mut ext = vec![1, 0, 0, 0];
        ext.extend([0; 16]);
        s.extend(rect(0, 0, 800, 600, enc::EXT_DESKTOP_SIZE, &ext));
        s.extend([2]); // Bell
        s.extend([1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6]); // one colour map entry
        s.extend([3, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        let r = |w, h, e| ServerItem::Rect { x: 0, y: 0, width: w, height: h, encoding: e };
        let expect = [
            ServerItem::UpdateHeader { rects: 6 },
            r(2, 2, enc::RAW),
            ServerItem::Rect { x: 4, y: 4, width: 2, height: 2, encoding: enc::COPY_RECT },
            r(9, 9, enc::RRE),
            r(9, 2, enc::CURSOR),
            r(800, 600, enc::DESKTOP_SIZE),
            r(800, 600, enc::EXT_DESKTOP_SIZE),
            ServerItem::Other { kind: 2 },
            ServerItem::Other { kind: 1 },
            ServerItem::Other { kind: 3 },
        ];
        check_stream(&s, &pf, &expect);
    }

    #[test]
    fn hextile_walks_tiles() {
        let pf = PixelFormat { bits_per_pixel: 16, depth: 16, red_max: 31, green_max: 63, blue_max: 31, ..rgbx() };
        // 20x17: tiles 16x16, 4x16, 16x1, 4x1.
        let mut d = Vec::new();
        d.push(1u8); // raw tile 16x16
        d.extend([0; 16 * 16 * 2]);
        d.push(2 | 4 | 8); // bg, fg, 2 plain subrects
        d.extend([1, 1, 2, 2, 2, 0x11, 0x11, 0x22, 0x22]);
        d.push(2 | 8 | 16); // bg, 1 coloured subrect
        d.extend([1, 1, 1, 3, 3, 0x00, 0x00]);
        d.push(0); // same background
        let mut s = vec![0, 0, 0, 1];
        s.extend(rect(0, 0, 20, 17, enc::HEXTILE, &d));
        check_stream(&s, &pf, &[ServerItem::UpdateHeader { rects: 1 }, ServerItem::Rect {
            x: 0,
            y: 0,
            width: 20,
            height: 17,
            encoding: enc::HEXTILE,
        }]);
        // One byte short: still waiting.
        let mut f = ServerFramer::default();
        f.next(&s, &pf).unwrap();
        assert_eq!(f.next(&s[4..s.len() - 1], &pf).unwrap(), None);
    }

    #[test]
    fn tight_lengths_follow_the_control_byte() {
        let pf = rgbx();
        let mut s = vec![0, 0, 0, 5];
        // Fill: control 0x80 and one TPIXEL.
        s.extend(rect(0, 0, 64, 64, enc::TIGHT, &[0x80, 1, 2, 3]));
        // JPEG: compact length 200 = 0xC8 -> [0xC8, 0x01].
        let mut jpeg = vec![0x90, 0xC8, 0x01];
        jpeg.extend([0; 200]);
        s.extend(rect(0, 0, 64, 64, enc::TIGHT, &jpeg));
        // Basic, stream 1, no filter, 1x2 pixels = 6 bytes < 12: sent uncompressed.
        s.extend(rect(0, 0, 1, 2, enc::TIGHT, &[0x10, 1, 2, 3, 4, 5, 6]));
        // Basic with palette filter, 2 colours, 16x4: 2 bytes per row * 4 = 8 < 12: raw.
        let mut pal = vec![0x40 | 0x20, 1, 1];
        pal.extend([0; 6]);
        pal.extend([0xAA; 8]);
        s.extend(rect(0, 0, 16, 4, enc::TIGHT, &pal));
        // Basic, no filter, 100x100 pixels zlib-compressed into 20000 bytes: compact length
        // 20000 = 0x4E20 -> [0xA0, 0x9C, 0x01].
        let mut big = vec![0x00, 0xA0, 0x9C, 0x01];
        big.extend(vec![0; 20000]);
        s.extend(rect(0, 0, 100, 100, enc::TIGHT, &big));
        let t = |w, h| ServerItem::Rect { x: 0, y: 0, width: w, height: h, encoding: enc::TIGHT };
        check_stream(&s, &pf, &[
            ServerItem::UpdateHeader { rects: 5 },
            t(64, 64),
            t(64, 64),
            t(1, 2),
            t(16, 4),
            t(100, 100),
        ]);
        assert_eq!(compact_len(&[0xff, 0xff, 0xff], 0), Some((4_194_303, 3)));
        let png = rect(0, 0, 4, 4, enc::TIGHT, &[0xA0, 0]);
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 1], &pf).unwrap();
        assert!(f.next(&png, &pf).is_err());
    }

    #[test]
    fn last_rect_ends_an_open_ended_update() {
        let pf = rgbx();
        let mut s = vec![0, 0, 0xff, 0xff];
        s.extend(rect(0, 0, 1, 1, enc::RAW, &[0; 4]));
        s.extend(rect(0, 0, 0, 0, enc::LAST_RECT, &[]));
        s.extend([2]);
        let mut f = ServerFramer::default();
        assert_eq!(f.open_update(), None);
        let (_, n) = f.next(&s, &pf).unwrap().unwrap();
        assert_eq!(f.open_update(), Some(None));
        let (_, m) = f.next(&s[n..], &pf).unwrap().unwrap();
        assert!(!f.at_boundary());
        f.next(&s[n + m..], &pf).unwrap().unwrap();
        assert!(f.at_boundary());
    }

    #[test]
    fn closing_an_open_update_yields_empty_rects() {
        let pf = rgbx();
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 3], &pf).unwrap();
        f.next(&rect(0, 0, 1, 1, enc::RAW, &[0; 4]), &pf).unwrap().unwrap();
        assert_eq!(f.open_update(), Some(Some(2)));
        let tail = close_update(Some(2));
        let (_, a) = f.next(&tail, &pf).unwrap().unwrap();
        f.next(&tail[a..], &pf).unwrap().unwrap();
        assert!(f.at_boundary());
        assert_eq!(close_update(None), rect(0, 0, 0, 0, enc::LAST_RECT, &[]));
    }

    #[test]
    fn unknown_messages_and_unoffered_encodings_are_errors() {
        let pf = rgbx();
        assert_eq!(ServerFramer::default().next(&[150], &pf), Err(RfbError::UnknownServerMessage(150)));
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 1], &pf).unwrap();
        assert_eq!(f.next(&rect(0, 0, 1, 1, enc::TRLE, &[0, 0, 0, 0]), &pf), Err(RfbError::UnexpectedEncoding(15)));
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 1], &pf).unwrap();
        assert!(matches!(f.next(&rect(0, 0, 8192, 8192, enc::RAW, &[]), &pf), Err(RfbError::TooLarge(_))));
    }

    #[test]
    fn zlib_rects_frame_by_length_and_a_lying_length_is_refused_early() {
        let pf = rgbx();
        let mut s = vec![0, 0, 0, 2];
        let mut z = 5u32.to_be_bytes().to_vec();
        z.extend([1, 2, 3, 4, 5]);
        s.extend(rect(0, 0, 64, 64, enc::ZRLE, &z));
        s.extend(rect(0, 0, 8, 8, enc::ZLIB, &z));
        let r = |w, h, e| ServerItem::Rect { x: 0, y: 0, width: w, height: h, encoding: e };
        check_stream(&s, &pf, &[ServerItem::UpdateHeader { rects: 2 }, r(64, 64, enc::ZRLE), r(8, 8, enc::ZLIB)]);
        // 3 GB announced for a 16x16 rectangle: refused from the header, before any waiting.
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 1], &pf).unwrap();
        let lie = rect(0, 0, 16, 16, enc::ZRLE, &3_000_000_000u32.to_be_bytes());
        let err = f.next(&lie, &pf).unwrap_err();
        assert!(matches!(err, RfbError::Oversized { len: 3_000_000_000, .. }), "{err}");
        assert!(err.to_string().contains("16x16"));
        // Even a full-size screen cannot announce more than the message limit.
        let lie = rect(0, 0, 8192, 8192, enc::ZLIB, &(MAX_MESSAGE as u32 + 1).to_be_bytes());
        let mut f = ServerFramer::default();
        f.next(&[0, 0, 0, 1], &pf).unwrap();
        assert!(f.next(&lie, &pf).is_err());
    }

    #[test]
    fn desktop_size_messages_frame_as_one_update() {
        let pf = rgbx();
        for msg in [desktop_size_update(800, 600), ext_desktop_size_update(800, 600)] {
            let mut f = ServerFramer::default();
            let (_, a) = f.next(&msg, &pf).unwrap().unwrap();
            let (item, b) = f.next(&msg[a..], &pf).unwrap().unwrap();
            assert_eq!(a + b, msg.len());
            assert!(matches!(item, ServerItem::Rect { width: 800, height: 600, .. }));
            assert!(f.at_boundary());
        }
    }
}
