//! An initramfs image as the kernel sees it: a sequence of archives, each plain or compressed,
//! with zero padding allowed between and after them. Debian and dracut put an uncompressed
//! early-microcode archive first and the compressed main archive after it.
//!
//! Each archive keeps its original bytes, so a rewrite copies untouched archives verbatim and
//! re-encodes only the one an edit changed, with every other member's header kept as read.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

use crate::compress::{self, CompressError, Compression};
use crate::newc::{self, CpioError, Entry, S_IFDIR, S_IFMT, S_IFREG};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("archive {index} (at byte {offset}, {compression}): {source}")]
    Cpio { index: usize, offset: usize, compression: Compression, source: CpioError },
    #[error("archive {index} (at byte {offset}): {source}")]
    Compress { index: usize, offset: usize, source: CompressError },
    #[error("at byte {offset}: neither a cpio archive nor a compression the kernel knows (starts with {head})")]
    Unknown { offset: usize, head: String },
    #[error("image unpacks to more than the limit of {0} bytes (raise it with --max-size)")]
    TooLarge(u64),
    #[error("{0}")]
    Edit(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Bounds applied while reading untrusted images.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest member any header may claim.
    pub max_entry: u64,
    /// Largest total of decompressed bytes.
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entry: 1 << 30, max_total: 4 << 30 }
    }
}

/// One archive of an image.
#[derive(Debug, Clone)]
pub struct Segment {
    pub compression: Compression,
    /// Where it starts in the image file.
    pub offset: usize,
    /// Its original bytes, with the zero padding that followed it.
    pub raw: Vec<u8>,
    pub entries: Vec<Entry>,
    /// Set by edits: the segment is re-encoded on write.
    pub modified: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Image {
    pub segments: Vec<Segment>,
    /// Level for archives that get re-encoded; `None` for each format's default.
    pub level: Option<i32>,
    /// Zero bytes before the first archive, kept so an unedited image writes back unchanged.
    pub lead: usize,
}

fn skip_zeros(buf: &[u8], mut at: usize) -> usize {
    while at < buf.len() && buf[at] == 0 {
        at += 1;
    }
    at
}

impl Image {
    pub fn open(path: &Path, limits: Limits) -> Result<Image, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.display().to_string(), source })?;
        Image::parse(&bytes, limits)
    }

    pub fn parse(buf: &[u8], limits: Limits) -> Result<Image, ImageError> {
        let mut segments = Vec::new();
        let mut total: u64 = 0;
        let mut at = skip_zeros(buf, 0);
        let lead = at;
        while at < buf.len() {
            let index = segments.len();
            let start = at;
            let Some(compression) = compress::detect(&buf[at..]) else {
                let head: Vec<String> = buf[at..buf.len().min(at + 8)].iter().map(|b| format!("{b:02x}")).collect();
                return Err(ImageError::Unknown { offset: at, head: head.join(" ") });
            };
            let cpio_err = |source| ImageError::Cpio { index, offset: start, compression, source };
            let entries = if compression == Compression::None {
                let p = newc::parse(buf, at, limits.max_entry).map_err(cpio_err)?;
                at = p.end;
                p.entries
            } else {
                let left = limits.max_total - total;
                let (data, used) = compress::decompress(compression, &buf[at..], left).map_err(|e| match e {
                    CompressError::TooLarge(..) => ImageError::TooLarge(limits.max_total),
                    source => ImageError::Compress { index, offset: start, source },
                })?;
                at += used.max(1);
                // A compressed stream may hold several archives back to back.
                let mut entries = Vec::new();
                let mut pos = skip_zeros(&data, 0);
                while pos < data.len() {
                    let p = newc::parse(&data, pos, limits.max_entry).map_err(cpio_err)?;
                    entries.extend(p.entries);
                    pos = skip_zeros(&data, p.end);
                }
                entries
            };
            total += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
            if total > limits.max_total {
                return Err(ImageError::TooLarge(limits.max_total));
            }
            at = skip_zeros(buf, at);
            segments.push(Segment { compression, offset: start, raw: buf[start..at].to_vec(), entries, modified: false });
        }
        Ok(Image { segments, level: None, lead })
    }

    /// The image's bytes: untouched archives verbatim, edited ones re-encoded.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = vec![0; self.lead];
        for (index, s) in self.segments.iter().enumerate() {
            if !s.modified {
                out.extend_from_slice(&s.raw);
                continue;
            }
            let block = if s.compression == Compression::None { 512 } else { 4 };
            let cpio = newc::write_archive(&s.entries, block);
            let level = self.level.unwrap_or(compress::default_level(s.compression));
            let packed = compress::compress_level(s.compression, &cpio, level)
                .map_err(|source| ImageError::Compress { index, offset: out.len(), source })?;
            out.extend_from_slice(&packed);
            if index + 1 < self.segments.len() {
                out.resize(out.len().div_ceil(4) * 4, 0);
            }
        }
        Ok(out)
    }

    /// A new image of one archive.
    pub fn single(compression: Compression, entries: Vec<Entry>) -> Image {
        Image { segments: vec![Segment { compression, offset: 0, raw: Vec::new(), entries, modified: true }], level: None, lead: 0 }
    }

    /// Every member in archive order, as the kernel unpacks them.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.segments.iter().flat_map(|s| s.entries.iter())
    }

    /// What the unpacked tree holds: for each path, the last member that wrote it.
    pub fn view(&self) -> View<'_> {
        let mut map = BTreeMap::new();
        for (si, s) in self.segments.iter().enumerate() {
            for e in &s.entries {
                map.insert(e.path().to_string(), (si, e));
            }
        }
        View { map }
    }

    fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let path = newc::normalize(path);
        for (si, s) in self.segments.iter().enumerate().rev() {
            if let Some(i) = s.entries.iter().rposition(|e| e.path() == path) {
                return Some((si, i));
            }
        }
        None
    }

    /// Replaces the contents of a file (or the target of a symlink); every header field but
    /// the size stays as it was.
    pub fn replace(&mut self, path: &str, data: Vec<u8>) -> Result<(), ImageError> {
        let (si, i) = self
            .locate(path)
            .ok_or_else(|| ImageError::Edit(format!("{path}: not in the image (use `add` to create it)")))?;
        let s = &mut self.segments[si];
        let e = &mut s.entries[i];
        if !(e.is_file() || e.is_symlink()) {
            return Err(ImageError::Edit(format!("{path}: not a regular file or symlink, cannot replace its contents")));
        }
        e.data = data;
        s.modified = true;
        Ok(())
    }

    /// Adds a member to the last archive (the main one), with any missing parent folders.
    pub fn add(&mut self, mut entry: Entry) -> Result<(), ImageError> {
        let path = newc::normalize(&entry.name).to_string();
        if path == "." || path.split('/').any(|c| c == "..") {
            return Err(ImageError::Edit(format!("{}: not a valid path to add", entry.name)));
        }
        if self.locate(&path).is_some() {
            return Err(ImageError::Edit(format!("{path}: already in the image (use `replace` or `remove` first)")));
        }
        if self.segments.is_empty() {
            self.segments.push(Segment { compression: Compression::None, offset: 0, raw: Vec::new(), entries: vec![], modified: true });
        }
        // Names follow the style the archive already uses (`./bin` or `bin`).
        let dotted = self.entries().any(|e| e.name.starts_with("./"));
        let style = |p: &str| if dotted { format!("./{p}") } else { p.to_string() };
        let mut parents = Vec::new();
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if self.locate(parent).is_none() {
                parents.push(parent.to_string());
            }
            p = parent;
        }
        let last = self.segments.len() - 1;
        let seg = &mut self.segments[last];
        let mut ino = seg.entries.iter().map(|e| e.ino).max().unwrap_or(0);
        for parent in parents.into_iter().rev() {
            ino += 1;
            let mut d = Entry::new(style(&parent), S_IFDIR | 0o755, Vec::new());
            d.ino = ino;
            seg.entries.push(d);
        }
        entry.ino = ino + 1;
        entry.name = style(&path);
        seg.entries.push(entry);
        seg.modified = true;
        Ok(())
    }

    /// Removes every member with this path (and, with `recursive`, everything below it).
    pub fn remove(&mut self, path: &str, recursive: bool) -> Result<usize, ImageError> {
        let path = newc::normalize(path).to_string();
        let below = format!("{path}/");
        let has_children = self.entries().any(|e| e.path().starts_with(&below));
        if has_children && !recursive {
            return Err(ImageError::Edit(format!("{path}: a folder with contents; pass --recursive to remove it all")));
        }
        let mut removed = 0;
        for s in &mut self.segments {
            let before = s.entries.len();
            s.entries.retain(|e| {
                let p = e.path();
                !(p == path || (recursive && p.starts_with(&below)))
            });
            if s.entries.len() != before {
                removed += before - s.entries.len();
                s.modified = true;
            }
        }
        if removed == 0 {
            return Err(ImageError::Edit(format!("{path}: not in the image")));
        }
        Ok(removed)
    }
}

/// The unpacked tree: path to the last member that wrote it.
pub struct View<'a> {
    pub map: BTreeMap<String, (usize, &'a Entry)>,
}

impl<'a> View<'a> {
    pub fn get(&self, path: &str) -> Option<&'a Entry> {
        self.map.get(newc::normalize(path)).map(|(_, e)| *e)
    }

    /// Follows symlinks inside the image, the way the kernel would after unpacking it.
    pub fn resolve(&self, path: &str) -> Option<(String, &'a Entry)> {
        let p = newc::resolve_in(path, true, |p| self.get(p).filter(|e| e.is_symlink()).map(|e| String::from_utf8_lossy(&e.data).into_owned()))?;
        Some((p.clone(), self.get(&p)?))
    }

    /// A file's contents; for a hard link written with its data on another name (as GNU cpio
    /// does), the data of the member that carries it.
    pub fn data(&self, e: &'a Entry) -> &'a [u8] {
        if e.is_file() && e.data.is_empty() && e.nlink > 1 {
            if let Some((_, other)) = self.map.values().find(|(_, o)| {
                o.is_file() && o.ino == e.ino && o.devmajor == e.devmajor && o.devminor == e.devminor && !o.data.is_empty()
            }) {
                return &other.data;
            }
        }
        &e.data
    }
}

/// `ls -l` style type and permission letters.
pub fn mode_string(mode: u32) -> String {
    let t = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFREG => '-',
        newc::S_IFLNK => 'l',
        newc::S_IFCHR => 'c',
        newc::S_IFBLK => 'b',
        newc::S_IFIFO => 'p',
        newc::S_IFSOCK => 's',
        _ => '?',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::newc::S_IFLNK;

    fn entries(names: &[(&str, u32, &[u8])]) -> Vec<Entry> {
        names
            .iter()
            .enumerate()
            .map(|(i, (n, m, d))| {
                let mut e = Entry::new(*n, *m, d.to_vec());
                e.ino = i as u32 + 1;
                e
            })
            .collect()
    }

    fn two_part_image() -> Vec<u8> {
        let early = newc::write_archive(&entries(&[("kernel", S_IFDIR | 0o755, b""), ("kernel/x86/microcode/GenuineIntel.bin", S_IFREG | 0o644, b"ucode")]), 512);
        let main = newc::write_archive(
            &entries(&[
                (".", S_IFDIR | 0o755, b""),
                ("bin", S_IFDIR | 0o755, b""),
                ("bin/sh", S_IFREG | 0o755, b"#!shell"),
                ("init", S_IFLNK | 0o777, b"bin/sh"),
            ]),
            4,
        );
        let mut img = early;
        img.extend(compress::compress(Compression::Gzip, &main).unwrap());
        img.extend_from_slice(&[0; 13]);
        img
    }

    #[test]
    fn reads_early_plus_compressed_with_padding() {
        let bytes = two_part_image();
        let img = Image::parse(&bytes, Limits::default()).unwrap();
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[0].compression, Compression::None);
        assert_eq!(img.segments[1].compression, Compression::Gzip);
        let names: Vec<_> = img.entries().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["kernel", "kernel/x86/microcode/GenuineIntel.bin", ".", "bin", "bin/sh", "init"]);
        assert_eq!(img.to_bytes().unwrap(), bytes, "an unedited image is written back verbatim");
        let mut led = vec![0u8; 8];
        led.extend_from_slice(&bytes);
        assert_eq!(Image::parse(&led, Limits::default()).unwrap().to_bytes().unwrap(), led);
        let (p, e) = img.view().resolve("init").unwrap();
        assert_eq!((p.as_str(), e.data.as_slice()), ("bin/sh", &b"#!shell"[..]));
    }

    #[test]
    fn edits_touch_only_their_archive() {
        let bytes = two_part_image();
        let mut img = Image::parse(&bytes, Limits::default()).unwrap();
        img.replace("/bin/sh", b"new".to_vec()).unwrap();
        img.add(Entry::new("etc/motd", S_IFREG | 0o644, b"hello".to_vec())).unwrap();
        let out = img.to_bytes().unwrap();
        assert_eq!(out[..img.segments[0].raw.len()], img.segments[0].raw[..]);
        let back = Image::parse(&out, Limits::default()).unwrap();
        let v = back.view();
        assert_eq!(v.get("bin/sh").unwrap().data, b"new");
        assert!(v.get("etc").unwrap().is_dir());
        assert_eq!(v.get("etc/motd").unwrap().data, b"hello");
        let before = Image::parse(&bytes, Limits::default()).unwrap();
        assert_eq!(before.view().get("init"), v.get("init"));
        assert!(img.add(Entry::new("bin/sh", S_IFREG, vec![])).is_err());
        assert!(img.remove("bin", false).is_err());
        assert_eq!(img.remove("bin", true).unwrap(), 2);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let bytes = two_part_image();
        let mut bad = bytes.clone();
        bad.extend_from_slice(b"junk");
        assert!(matches!(Image::parse(&bad, Limits::default()), Err(ImageError::Unknown { .. })));
        for cut in [100, 600, bytes.len() - 20] {
            assert!(Image::parse(&bytes[..cut], Limits::default()).is_err(), "cut {cut}");
        }
        let tight = Limits { max_entry: 1 << 20, max_total: 8 };
        assert!(matches!(Image::parse(&bytes, tight), Err(ImageError::TooLarge(_))));
    }
}
