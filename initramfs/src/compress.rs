//! Every compression the kernel's initramfs unpacker accepts, detected by magic number.
//!
//! Decoders report how many input bytes their stream used, because an image may go on after
//! it (padding, or another archive). Decoded output is capped so a small hostile stream cannot
//! expand without bound.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

pub const ALL: [Compression; 8] = [
    Compression::None,
    Compression::Gzip,
    Compression::Bzip2,
    Compression::Lzma,
    Compression::Xz,
    Compression::Lzo,
    Compression::Lz4,
    Compression::Zstd,
];

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter()
            .copied()
            .find(|c| c.to_string() == s)
            .ok_or_else(|| format!("unknown compression {s:?}; use one of none, gzip, bzip2, lzma, xz, lzo, lz4, zstd"))
    }
}

#[derive(Debug, Error)]
pub enum CompressError {
    #[error("{0} stream: {1}")]
    Io(Compression, io::Error),
    #[error("{0} stream: {1}")]
    Format(Compression, String),
    #[error("{0} stream expands past the limit of {1} bytes")]
    TooLarge(Compression, u64),
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_CHUNK: usize = 8 << 20;
const LZOP_MAGIC: &[u8] = b"\x89LZO\x00\r\n\x1a\n";
/// lzop never writes blocks larger than this; the kernel refuses them too.
const LZO_BLOCK: usize = 256 * 1024;

/// The compression of the stream at the start of `buf`, or `None` if it is not one we know.
/// `Some(Compression::None)` means a cpio header.
pub fn detect(buf: &[u8]) -> Option<Compression> {
    let m = |p: &[u8]| buf.starts_with(p);
    if crate::newc::is_cpio(buf) {
        Some(Compression::None)
    } else if m(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if m(b"BZh") {
        Some(Compression::Bzip2)
    } else if m(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Compression::Xz)
    } else if m(&[0x5d, 0x00, 0x00]) {
        Some(Compression::Lzma)
    } else if m(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Some(Compression::Lz4)
    } else if m(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if m(&LZOP_MAGIC[..4]) {
        Some(Compression::Lzo)
    } else {
        None
    }
}

/// Reads a decoder to its end, at most `limit` bytes.
fn drain(c: Compression, r: impl Read, limit: u64) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut out).map_err(|e| CompressError::Io(c, e))?;
    if out.len() as u64 > limit {
        return Err(CompressError::TooLarge(c, limit));
    }
    Ok(out)
}

/// Decompresses the stream at the start of `input`; returns the data and the input bytes used.
pub fn decompress(c: Compression, input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), CompressError> {
    let mut rest: &[u8] = input;
    let out = match c {
        Compression::None => return Ok((input.to_vec(), input.len())),
        Compression::Gzip => {
            let mut d = flate2::bufread::GzDecoder::new(&mut rest);
            let out = drain(c, &mut d, limit)?;
            drop(d);
            out
        }
        Compression::Bzip2 => {
            let mut d = bzip2::bufread::BzDecoder::new(&mut rest);
            let out = drain(c, &mut d, limit)?;
            drop(d);
            out
        }
        Compression::Xz | Compression::Lzma => return xz_decode(c, input, limit),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(&mut rest)
                .map_err(|e| CompressError::Io(c, e))?
                .single_frame();
            let out = drain(c, &mut d, limit)?;
            drop(d);
            out
        }
        Compression::Lz4 => return lz4_legacy_decode(input, limit),
        Compression::Lzo => return lzop_decode(input, limit),
    };
    Ok((out, input.len() - rest.len()))
}

/// The largest dictionary of xz's and lzma's presets (`-9`): 64 MiB.
const XZ_PRESET_MAX_DICT: u64 = 64 << 20;

/// What liblzma may allocate to decode one stream: its dictionary, which the stream's header
/// declares (up to 4 GiB) and which is allocated before a single byte comes out, plus the
/// decoder's own state. Any preset decodes; a larger dictionary is allowed only as far as the
/// output may go.
fn xz_memlimit(limit: u64) -> u64 {
    limit.max(XZ_PRESET_MAX_DICT).saturating_add(1 << 20)
}

/// xz and lzma-alone through liblzma's raw stream API, which reports exactly how much input
/// the stream used (the buffered readers read on past the end of an lzma-alone stream).
fn xz_decode(c: Compression, input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), CompressError> {
    use xz2::stream::{Action, Error, Status, Stream};
    let memlimit = xz_memlimit(limit);
    let fmt = |e: Error| match e {
        Error::MemLimit => CompressError::Format(c, format!("the stream needs more than {memlimit} bytes of memory to decode")),
        e => CompressError::Format(c, e.to_string()),
    };
    let mut stream = if c == Compression::Xz { Stream::new_stream_decoder(memlimit, 0) } else { Stream::new_lzma_decoder(memlimit) }.map_err(fmt)?;
    let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).min(64 << 20));
    loop {
        if out.capacity() - out.len() < (1 << 16) {
            out.reserve(out.len().max(1 << 20));
        }
        let (before_in, before_out) = (stream.total_in(), out.len());
        let at = stream.total_in() as usize;
        let action = if at >= input.len() { Action::Finish } else { Action::Run };
        let status = stream.process_vec(&input[at..], &mut out, action).map_err(fmt)?;
        if out.len() as u64 > limit {
            return Err(CompressError::TooLarge(c, limit));
        }
        if status == Status::StreamEnd {
            break;
        }
        if stream.total_in() == before_in && out.len() == before_out && at >= input.len() {
            return Err(CompressError::Format(c, "truncated".into()));
        }
    }
    Ok((out, stream.total_in() as usize))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap()))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes(s.try_into().unwrap()))
}
fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes(s.try_into().unwrap()))
}

/// The lz4 "legacy" frame (`lz4 -l`), the only lz4 framing the kernel reads: the magic, then
/// blocks of up to 8 MiB, each a little-endian length and an lz4 block. The stream has no end
/// marker; like the kernel we stop at the end of input or at a zero length (padding).
fn lz4_legacy_decode(input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), CompressError> {
    let c = Compression::Lz4;
    let mut at = 4;
    let mut out = Vec::new();
    let mut chunk = vec![0u8; LZ4_CHUNK];
    while let Some(len) = le32(input, at) {
        if len == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        if len == 0 {
            break;
        }
        let len = len as usize;
        // A length past the worst case of an 8 MiB block means this is not lz4 any more
        // (another archive follows); the kernel gives up at the same point.
        if len > LZ4_CHUNK + LZ4_CHUNK / 255 + 16 {
            break;
        }
        let block = input
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| CompressError::Format(c, format!("block at byte {at} truncated")))?;
        let n = lz4_flex::block::decompress_into(block, &mut chunk)
            .map_err(|e| CompressError::Format(c, format!("block at byte {at}: {e}")))?;
        out.extend_from_slice(&chunk[..n]);
        if out.len() as u64 > limit {
            return Err(CompressError::TooLarge(c, limit));
        }
        at += 4 + len;
    }
    Ok((out, at.min(input.len())))
}

/// Reads an LZO1X block as the kernel's `lzo1x_decompress_safe` does, into exactly `dst_len`
/// bytes. Our own rather than lzokay-native's decoder (which still compresses): that one takes
/// a hostile block's lengths and distances on trust, so a distance past the output so far
/// panics (an underflow, then an index out of bounds) and a run length can produce hundreds of
/// times the announced size before the size is checked. Here every literal run is checked
/// against the input left, every match against the output so far, and nothing is written past
/// `dst_len`.
fn lzo1x_decode(src: &[u8], dst_len: usize) -> Result<Vec<u8>, &'static str> {
    struct In<'a> {
        src: &'a [u8],
        at: usize,
    }
    impl In<'_> {
        fn byte(&mut self) -> Result<usize, &'static str> {
            let b = *self.src.get(self.at).ok_or("input ends inside an instruction")?;
            self.at += 1;
            Ok(b as usize)
        }
        fn le16(&mut self) -> Result<usize, &'static str> {
            Ok(self.byte()? | self.byte()? << 8)
        }
        /// A length continued in the following bytes: 255 for each zero byte, then the first
        /// non-zero byte plus `base`.
        fn long_len(&mut self, base: usize) -> Result<usize, &'static str> {
            let mut n = base;
            loop {
                match self.byte()? {
                    0 => n += 255,
                    b => return Ok(n + b),
                }
            }
        }
    }
    fn literals(inp: &mut In, out: &mut Vec<u8>, n: usize, dst_len: usize) -> Result<(), &'static str> {
        let run = inp.src.get(inp.at..inp.at + n).ok_or("literal run past the end of the input")?;
        if out.len() + n > dst_len {
            return Err("literal run past the announced size");
        }
        out.extend_from_slice(run);
        inp.at += n;
        Ok(())
    }
    let mut inp = In { src, at: 0 };
    let mut out = Vec::with_capacity(dst_len);
    let mut state = 0;
    if src.first().is_some_and(|&b| b > 17) {
        let t = inp.byte()? - 17;
        literals(&mut inp, &mut out, t, dst_len)?;
        state = t.min(4);
    }
    loop {
        let inst = inp.byte()?;
        let (dist, len, next) = if inst >= 64 {
            // M2: 3 to 8 bytes within 2 KiB.
            ((inp.byte()? << 3) + ((inst >> 2) & 7) + 1, (inst >> 5) + 1, inst & 3)
        } else if inst >= 32 {
            // M3: any length within 16 KiB.
            let len = match inst & 31 {
                0 => inp.long_len(31)? + 2,
                l => l + 2,
            };
            let v = inp.le16()?;
            ((v >> 2) + 1, len, v & 3)
        } else if inst >= 16 {
            // M4: any length within 16 to 48 KiB; distance 0 ends the stream.
            let len = match inst & 7 {
                0 => inp.long_len(7)? + 2,
                l => l + 2,
            };
            let v = inp.le16()?;
            let dist = ((inst & 8) << 11) + (v >> 2);
            if dist == 0 {
                break;
            }
            (dist + 0x4000, len, v & 3)
        } else if state == 0 {
            // A literal run of 4 or more bytes.
            let n = match inst {
                0 => inp.long_len(15)? + 3,
                t => t + 3,
            };
            literals(&mut inp, &mut out, n, dst_len)?;
            state = 4;
            continue;
        } else if state < 4 {
            // M1 after 1 to 3 literals: 2 bytes within 1 KiB.
            ((inp.byte()? << 2) + (inst >> 2) + 1, 2, inst & 3)
        } else {
            // M1 after a literal run: 3 bytes from 2 to 3 KiB back.
            ((inp.byte()? << 2) + (inst >> 2) + 2049, 3, inst & 3)
        };
        if dist > out.len() {
            return Err("match reaches before the start of the output");
        }
        if out.len() + len > dst_len {
            return Err("match past the announced size");
        }
        // Byte by byte: a match may overlap the bytes it produces.
        let from = out.len() - dist;
        for i in 0..len {
            out.push(out[from + i]);
        }
        literals(&mut inp, &mut out, next, dst_len)?;
        state = next;
    }
    if out.len() != dst_len {
        return Err("block decodes to fewer bytes than announced");
    }
    Ok(out)
}

fn lz4_legacy_encode(data: &[u8]) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(LZ4_CHUNK) {
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

const LZOP_ADLER32_D: u32 = 0x1;
const LZOP_ADLER32_C: u32 = 0x2;
const LZOP_FILTER: u32 = 0x800;
const LZOP_CRC32_D: u32 = 0x100;
const LZOP_CRC32_C: u32 = 0x200;

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// The lzop file format around LZO1X blocks, as the kernel's unlzo reads it.
fn lzop_decode(input: &[u8], limit: u64) -> Result<(Vec<u8>, usize), CompressError> {
    let c = Compression::Lzo;
    let bad = |w: &str| CompressError::Format(c, w.to_string());
    let trunc = || bad("truncated");
    if !input.starts_with(LZOP_MAGIC) {
        return Err(bad("bad lzop magic"));
    }
    let mut at = LZOP_MAGIC.len();
    let version = be16(input, at).ok_or_else(trunc)?;
    at += 2 + 2; // version, library version
    if version >= 0x0940 {
        at += 2; // version needed to extract
    }
    at += 1; // method
    if version >= 0x0940 {
        at += 1; // level
    }
    let flags = be32(input, at).ok_or_else(trunc)?;
    at += 4;
    if flags & LZOP_FILTER != 0 {
        at += 4;
    }
    at += 4 + 4; // mode, mtime low
    if version >= 0x0940 {
        at += 4; // mtime high
    }
    let name_len = *input.get(at).ok_or_else(trunc)? as usize;
    at += 1 + name_len + 4; // name, header checksum
    let mut out = Vec::new();
    loop {
        let dst_len = be32(input, at).ok_or_else(trunc)? as usize;
        at += 4;
        if dst_len == 0 {
            break;
        }
        if dst_len > LZO_BLOCK * 4 {
            return Err(bad(&format!("block of {dst_len} bytes is larger than lzop writes")));
        }
        let src_len = be32(input, at).ok_or_else(trunc)? as usize;
        at += 4;
        if src_len == 0 || src_len > dst_len {
            return Err(bad(&format!("bad block sizes {src_len}/{dst_len}")));
        }
        if flags & (LZOP_ADLER32_D | LZOP_CRC32_D) != 0 {
            at += 4;
        }
        if src_len < dst_len && flags & (LZOP_ADLER32_C | LZOP_CRC32_C) != 0 {
            at += 4;
        }
        let block = input.get(at..at + src_len).ok_or_else(trunc)?;
        at += src_len;
        if src_len == dst_len {
            out.extend_from_slice(block);
        } else {
            let d = lzo1x_decode(block, dst_len).map_err(|e| bad(&format!("block at byte {}: {e}", at - src_len)))?;
            out.extend_from_slice(&d);
        }
        if out.len() as u64 > limit {
            return Err(CompressError::TooLarge(c, limit));
        }
    }
    Ok((out, at))
}

fn lzop_encode(data: &[u8]) -> Result<Vec<u8>, CompressError> {
    let mut out = LZOP_MAGIC.to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&0x1040u16.to_be_bytes()); // version
    header.extend_from_slice(&0x2080u16.to_be_bytes()); // library version
    header.extend_from_slice(&0x0940u16.to_be_bytes()); // needed to extract
    header.push(1); // LZO1X-1
    header.push(5); // level
    header.extend_from_slice(&LZOP_ADLER32_D.to_be_bytes());
    header.extend_from_slice(&0o100644u32.to_be_bytes()); // mode
    header.extend_from_slice(&0u32.to_be_bytes()); // mtime low
    header.extend_from_slice(&0u32.to_be_bytes()); // mtime high
    header.push(0); // no name
    let sum = adler32(&header);
    out.extend_from_slice(&header);
    out.extend_from_slice(&sum.to_be_bytes());
    for block in data.chunks(LZO_BLOCK) {
        let packed = lzokay_native::compress(block)
            .map_err(|e| CompressError::Format(Compression::Lzo, format!("{e:?}")))?;
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        let stored: &[u8] = if packed.len() < block.len() { &packed } else { block };
        out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        out.extend_from_slice(&adler32(block).to_be_bytes());
        out.extend_from_slice(stored);
    }
    out.extend_from_slice(&0u32.to_be_bytes());
    Ok(out)
}

/// The level used when none is given: the same as Debian's mkinitramfs, so that images of
/// both tools compare like with like.
pub fn default_level(c: Compression) -> i32 {
    match c {
        Compression::Gzip => 6,
        Compression::Bzip2 => 9,
        Compression::Xz | Compression::Lzma => 6,
        Compression::Zstd => 9,
        Compression::None | Compression::Lzo | Compression::Lz4 => 0,
    }
}

/// Compresses `data` as one stream at the default level.
pub fn compress(c: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    compress_level(c, data, default_level(c))
}

/// Compresses `data` as one stream. `level` is ignored for lzo and lz4 (one speed only).
pub fn compress_level(c: Compression, data: &[u8], level: i32) -> Result<Vec<u8>, CompressError> {
    let io = |e| CompressError::Io(c, e);
    let bad_level = |lo: i32, hi: i32| CompressError::Format(c, format!("level {level} out of range {lo}..={hi}"));
    Ok(match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            // A fixed header (no name, mtime 0, OS "unknown") keeps the output reproducible.
            let mut e = flate2::GzBuilder::new()
                .operating_system(255)
                .write(Vec::new(), flate2::Compression::new(u32::try_from(level).ok().filter(|l| *l <= 9).ok_or_else(|| bad_level(0, 9))?));
            e.write_all(data).map_err(io)?;
            e.finish().map_err(io)?
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(u32::try_from(level).ok().filter(|l| (1..=9).contains(l)).ok_or_else(|| bad_level(1, 9))?));
            e.write_all(data).map_err(io)?;
            e.finish().map_err(io)?
        }
        Compression::Xz | Compression::Lzma => {
            // The kernel's xz decoder knows only the CRC32 check and the LZMA2 filter (no BCJ
            // needed for an archive), so the stream is made with exactly those.
            let preset = u32::try_from(level).ok().filter(|l| *l <= 9).ok_or_else(|| bad_level(0, 9))?;
            let stream = if c == Compression::Xz {
                xz2::stream::Stream::new_easy_encoder(preset, xz2::stream::Check::Crc32)
            } else {
                xz2::stream::LzmaOptions::new_preset(preset)
                    .and_then(|o| xz2::stream::Stream::new_lzma_encoder(&o))
            }
            .map_err(|e| CompressError::Format(c, e.to_string()))?;
            let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(data).map_err(io)?;
            e.finish().map_err(io)?
        }
        Compression::Zstd => {
            if !(1..=19).contains(&level) {
                return Err(bad_level(1, 19));
            }
            zstd::bulk::compress(data, level).map_err(io)?
        },
        Compression::Lz4 => lz4_legacy_encode(data),
        Compression::Lzo => lzop_encode(data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..200_000u32 {
            v.extend_from_slice(format!("line {} {}\n", i, i % 7).as_bytes());
        }
        v
    }

    #[test]
    fn every_format_round_trips_and_reports_its_length() {
        let data = payload();
        for c in ALL.into_iter().skip(1) {
            let mut packed = compress(c, &data).unwrap();
            assert_eq!(detect(&packed), Some(c), "{c}");
            let len = packed.len();
            packed.extend_from_slice(&[0, 0, 0, 0, b'x']);
            let (out, used) = decompress(c, &packed, u64::MAX).unwrap();
            assert!(out == data, "{c}: data differs");
            assert!(used >= len && used <= len + 4, "{c}: used {used} of {len}");
        }
    }

    #[test]
    fn a_huge_declared_dictionary_is_refused_before_it_is_allocated() {
        // lzma-alone header: properties 0x5d, a 3.5 GiB dictionary, unknown size; then junk.
        let mut lzma = vec![0x5d];
        lzma.extend_from_slice(&0xE000_0000u32.to_le_bytes());
        lzma.extend_from_slice(&[0xff; 8]);
        lzma.extend_from_slice(&[0; 32]);
        let err = decompress(Compression::Lzma, &lzma, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        // The largest preset still decodes under a small output limit.
        let data = payload();
        let mut opts = xz2::stream::LzmaOptions::new_preset(9).unwrap();
        opts.dict_size(XZ_PRESET_MAX_DICT as u32);
        let enc = xz2::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut packed = Vec::new();
        std::io::Read::read_to_end(&mut xz2::read::XzEncoder::new_stream(&data[..], enc), &mut packed).unwrap();
        assert_eq!(decompress(Compression::Lzma, &packed, data.len() as u64).unwrap().0, data);
    }

    #[test]
    fn hostile_lzo_blocks_are_errors() {
        let data = payload();
        let block = lzokay_native::compress(&data[..LZO_BLOCK]).unwrap();
        assert_eq!(lzo1x_decode(&block, LZO_BLOCK).unwrap(), &data[..LZO_BLOCK]);
        assert!(lzo1x_decode(&block, LZO_BLOCK - 1).is_err(), "more than announced");
        assert!(lzo1x_decode(&block[..block.len() / 2], LZO_BLOCK).is_err(), "cut short");
        // Found by the initramfs extract fuzz target: a match that reaches before the output
        // (lzokay-native underflowed, then indexed out of bounds). One literal, then an M2
        // match 129 bytes back.
        assert_eq!(lzo1x_decode(&[0x12, b'x', 0x40, 0x10], 16), Err("match reaches before the start of the output"));
        // A long M3 run of zero bytes: 255 * 4000 bytes claimed from a 4 KB block.
        let mut bomb = vec![0x15, b'a', b'b', b'c', b'd'];
        bomb.push(0x20);
        bomb.extend(std::iter::repeat_n(0u8, 4000));
        bomb.extend([1, 0x04, 0x00, 0x11, 0, 0]);
        assert!(lzo1x_decode(&bomb, 64 << 10).is_err());
    }

    #[test]
    fn limit_stops_bombs() {
        let data = vec![0u8; 4 << 20];
        for c in ALL.into_iter().skip(1) {
            let packed = compress(c, &data).unwrap();
            assert!(matches!(decompress(c, &packed, 1 << 20), Err(CompressError::TooLarge(..))), "{c}");
        }
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let data = payload();
        for c in ALL.into_iter().skip(1) {
            let packed = compress(c, &data).unwrap();
            let cut = &packed[..packed.len() / 2];
            assert!(decompress(c, cut, u64::MAX).map(|(d, _)| d != data).unwrap_or(true), "{c}");
        }
    }

    #[test]
    fn adler32_known_value() {
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }
}
