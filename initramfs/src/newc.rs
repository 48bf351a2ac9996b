//! The newc ("070701") and crc ("070702") cpio formats, the only ones the kernel unpacks.
//!
//! Hand-written rather than taken from a crate because this tool needs three things at once
//! that the cpio crates do not give together: byte-for-byte control of the output (fixed field
//! values, no host metadata leaking in, so builds are reproducible and untouched entries of a
//! rewritten image stay identical), strict validation of hostile input (every length checked
//! against the bytes that are really there, before anything is allocated or written), and
//! lossless round-trips of every header field (inode numbers, device numbers, the crc magic).
//! The format is a 110-byte ASCII header, a NUL-terminated name and the data, each padded to
//! 4 bytes: small enough to own.

use thiserror::Error;

pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";
/// Names longer than this are refused: the kernel's own limit is PATH_MAX.
pub const MAX_NAME: usize = 4096;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

#[derive(Debug, Error)]
pub enum CpioError {
    #[error("at byte {offset}: archive truncated ({what})")]
    Truncated { offset: usize, what: &'static str },
    #[error("at byte {offset}: bad cpio magic {magic:?} (only newc 070701 and crc 070702 are valid in an initramfs)")]
    BadMagic { offset: usize, magic: String },
    #[error("at byte {offset}: header field {field} is not 8 hex digits")]
    BadHex { offset: usize, field: &'static str },
    #[error("at byte {offset}: bad name: {why}")]
    BadName { offset: usize, why: String },
    #[error("at byte {offset}: entry {name:?} claims {size} bytes, more than the {limit} allowed")]
    TooBig { offset: usize, name: String, size: u64, limit: u64 },
    #[error("at byte {offset}: entry {name:?}: crc checksum mismatch (header {header:#x}, data {data:#x})")]
    BadChecksum { offset: usize, name: String, header: u32, data: u32 },
}

/// One archive member with every header field kept, so it can be written back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    /// `070702`: the header carries a checksum of the data.
    pub crc_format: bool,
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

impl Entry {
    /// A fresh entry with the deterministic defaults used for built images.
    pub fn new(name: impl Into<String>, mode: u32, data: Vec<u8>) -> Self {
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        Entry {
            name: name.into(),
            ino: 0,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: 0,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 0,
            rdevminor: 0,
            crc_format: false,
            data,
        }
    }
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.kind() == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.kind() == S_IFLNK
    }
    pub fn is_trailer(&self) -> bool {
        self.name == TRAILER
    }
    /// The name as a clean relative path: leading `./` and `/` dropped, `.` for the root.
    pub fn path(&self) -> &str {
        normalize(&self.name)
    }
}

/// `./bin/sh`, `/bin/sh` and `bin/sh` all name the same file once unpacked.
pub fn normalize(name: &str) -> &str {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            break;
        }
    }
    let n = n.trim_end_matches('/');
    if n.is_empty() {
        "."
    } else {
        n
    }
}

const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside a tree the way path lookup does after unpacking: `link` gives the
/// target of a symlink at a path (or `None` for anything else). The last component is
/// followed only with `follow_last`. `None` on a symlink loop.
pub fn resolve_in(path: &str, follow_last: bool, link: impl Fn(&str) -> Option<String>) -> Option<String> {
    let split = |p: &str| -> Vec<String> { p.split('/').filter(|c| !c.is_empty() && *c != ".").rev().map(String::from).collect() };
    let mut pending = split(normalize(path));
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        cur.push(c);
        if pending.is_empty() && !follow_last {
            break;
        }
        if let Some(target) = link(&cur.join("/")) {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return None;
            }
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            pending.extend(split(&target));
        }
    }
    Some(if cur.is_empty() { ".".to_string() } else { cur.join("/") })
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32))
}

fn hex_field(buf: &[u8], at: usize, idx: usize, field: &'static str) -> Result<u32, CpioError> {
    let s = &buf[at + 6 + idx * 8..at + 6 + idx * 8 + 8];
    let mut v: u32 = 0;
    for &c in s {
        let d = (c as char).to_digit(16).ok_or(CpioError::BadHex { offset: at, field })?;
        v = (v << 4) | d;
    }
    Ok(v)
}

/// Whether `buf` starts with a newc or crc header magic.
pub fn is_cpio(buf: &[u8]) -> bool {
    buf.len() >= 6 && (&buf[..6] == b"070701" || &buf[..6] == b"070702")
}

/// One archive read from a buffer: its entries (trailer excluded) and where it ended.
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Offset just past the trailer's padding.
    pub end: usize,
}

/// Parses one archive starting at `start`, up to and including its trailer. `max_entry` bounds
/// the size any one member may claim.
pub fn parse(buf: &[u8], start: usize, max_entry: u64) -> Result<Parsed, CpioError> {
    let mut at = start;
    let mut entries = Vec::new();
    loop {
        if buf.len() < at + HEADER_LEN {
            return Err(CpioError::Truncated { offset: at, what: "header" });
        }
        if !is_cpio(&buf[at..]) {
            return Err(CpioError::BadMagic {
                offset: at,
                magic: String::from_utf8_lossy(&buf[at..at + 6]).into_owned(),
            });
        }
        let crc_format = buf[at + 5] == b'2';
        let f = |i, n| hex_field(buf, at, i, n);
        let ino = f(0, "c_ino")?;
        let mode = f(1, "c_mode")?;
        let uid = f(2, "c_uid")?;
        let gid = f(3, "c_gid")?;
        let nlink = f(4, "c_nlink")?;
        let mtime = f(5, "c_mtime")?;
        let filesize = f(6, "c_filesize")? as usize;
        let devmajor = f(7, "c_devmajor")?;
        let devminor = f(8, "c_devminor")?;
        let rdevmajor = f(9, "c_rdevmajor")?;
        let rdevminor = f(10, "c_rdevminor")?;
        let namesize = f(11, "c_namesize")? as usize;
        let check = f(12, "c_check")?;
        if namesize == 0 || namesize > MAX_NAME + 1 {
            return Err(CpioError::BadName { offset: at, why: format!("name size {namesize}") });
        }
        let name_at = at + HEADER_LEN;
        if buf.len() < name_at + namesize {
            return Err(CpioError::Truncated { offset: at, what: "name" });
        }
        let raw = &buf[name_at..name_at + namesize];
        if raw[namesize - 1] != 0 || raw[..namesize - 1].contains(&0) {
            return Err(CpioError::BadName { offset: at, why: "not a single NUL-terminated string".into() });
        }
        let name = std::str::from_utf8(&raw[..namesize - 1])
            .map_err(|_| CpioError::BadName { offset: at, why: "not UTF-8".into() })?
            .to_string();
        if name.is_empty() {
            return Err(CpioError::BadName { offset: at, why: "empty".into() });
        }
        if filesize as u64 > max_entry {
            return Err(CpioError::TooBig { offset: at, name, size: filesize as u64, limit: max_entry });
        }
        let data_at = pad4(name_at + namesize);
        if buf.len() < data_at + filesize {
            return Err(CpioError::Truncated { offset: at, what: "data" });
        }
        let data = &buf[data_at..data_at + filesize];
        if crc_format && mode & S_IFMT == S_IFREG && checksum(data) != check {
            return Err(CpioError::BadChecksum { offset: at, name, header: check, data: checksum(data) });
        }
        // The padding after the last member may be cut off by whoever concatenated archives.
        at = pad4(data_at + filesize).min(buf.len());
        if name == TRAILER {
            return Ok(Parsed { entries, end: at });
        }
        entries.push(Entry {
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            devmajor,
            devminor,
            rdevmajor,
            rdevminor,
            crc_format,
            data: data.to_vec(),
        });
    }
}

fn push_header(out: &mut Vec<u8>, e: &Entry, filesize: usize) {
    let magic = if e.crc_format { "070702" } else { "070701" };
    let check = if e.crc_format && e.is_file() { checksum(&e.data) } else { 0 };
    let fields = [
        e.ino,
        e.mode,
        e.uid,
        e.gid,
        e.nlink,
        e.mtime,
        filesize as u32,
        e.devmajor,
        e.devminor,
        e.rdevmajor,
        e.rdevminor,
        e.name.len() as u32 + 1,
        check,
    ];
    out.extend_from_slice(magic.as_bytes());
    for v in fields {
        out.extend_from_slice(format!("{v:08X}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    out.resize(pad4(out.len()), 0);
}

/// Appends one member. `out` must be 4-byte aligned relative to the archive start.
pub fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    push_header(out, e, e.data.len());
    out.extend_from_slice(&e.data);
    out.resize(pad4(out.len()), 0);
}

/// Writes a whole archive with its trailer; `block` pads the end (GNU cpio uses 512), which
/// also keeps an uncompressed archive followed by another easy to split for other tools.
pub fn write_archive(entries: &[Entry], block: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.data.len() + HEADER_LEN + e.name.len() + 8).sum::<usize>() + 512);
    for e in entries {
        write_entry(&mut out, e);
    }
    let mut t = Entry::new(TRAILER, 0, Vec::new());
    t.nlink = 1;
    write_entry(&mut out, &t);
    if block > 1 {
        let n = out.len().div_ceil(block) * block;
        out.resize(n, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        let mut d = Entry::new(".", S_IFDIR | 0o755, vec![]);
        d.ino = 1;
        let mut f = Entry::new("bin/hello", S_IFREG | 0o755, b"hi there".to_vec());
        f.ino = 2;
        f.mtime = 1234;
        let mut l = Entry::new("bin/link", S_IFLNK | 0o777, b"hello".to_vec());
        l.ino = 3;
        vec![d, f, l]
    }

    #[test]
    fn round_trip_is_lossless() {
        let entries = sample();
        let buf = write_archive(&entries, 4);
        let p = parse(&buf, 0, u64::MAX).unwrap();
        assert_eq!(p.entries, entries);
        assert_eq!(p.end, buf.len());
        assert_eq!(write_archive(&p.entries, 4), buf);
    }

    #[test]
    fn crc_format_checks_data() {
        let mut entries = sample();
        for e in &mut entries {
            e.crc_format = true;
        }
        let mut buf = write_archive(&entries, 4);
        assert_eq!(parse(&buf, 0, u64::MAX).unwrap().entries, entries);
        let pos = buf.windows(8).position(|w| w == b"hi there").unwrap();
        buf[pos] = b'H';
        assert!(matches!(parse(&buf, 0, u64::MAX), Err(CpioError::BadChecksum { .. })));
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let buf = write_archive(&sample(), 4);
        for cut in 0..buf.len() - 4 {
            assert!(parse(&buf[..cut], 0, u64::MAX).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_fields_are_refused() {
        let buf = write_archive(&sample(), 4);
        // filesize of the second member set to 0xFFFFFFFF
        let mut b = buf.clone();
        let at = buf.windows(6).enumerate().filter(|(_, w)| w == b"070701").nth(1).unwrap().0;
        b[at + 54..at + 62].copy_from_slice(b"FFFFFFFF");
        assert!(matches!(parse(&b, 0, 1 << 30), Err(CpioError::TooBig { .. })));
        assert!(matches!(parse(&b, 0, u64::MAX), Err(CpioError::Truncated { .. })));
        let mut b = buf.clone();
        b[at + 94..at + 102].copy_from_slice(b"0000000G");
        assert!(matches!(parse(&b, 0, u64::MAX), Err(CpioError::BadHex { .. })));
        let mut b = buf.clone();
        b[0..6].copy_from_slice(b"070707");
        assert!(matches!(parse(&b, 0, u64::MAX), Err(CpioError::BadMagic { .. })));
    }

    #[test]
    fn normalize_names() {
        assert_eq!(normalize("./bin/sh"), "bin/sh");
        assert_eq!(normalize("/bin/sh"), "bin/sh");
        assert_eq!(normalize("."), ".");
        assert_eq!(normalize("./"), ".");
        assert_eq!(normalize("usr/"), "usr");
    }
}
