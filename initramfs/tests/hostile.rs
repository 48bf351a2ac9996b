//! Truncated, corrupt and hostile archives: a clear error, and nothing written outside the
//! target folder (nor inside it, since names are all checked before the first write). Archives
//! that pass the name checks but play with links, devices, modes and owners: whatever they do,
//! nothing outside the target changes.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use initramfs::compress::{compress, Compression};
use initramfs::newc::{write_archive, Entry, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};

fn file(name: &str, data: &[u8]) -> Entry {
    Entry::new(name, S_IFREG | 0o644, data.to_vec())
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn extract(img: &[u8]) -> (Option<i32>, String, usize, usize) {
    extract_with(|_| img.to_vec())
}

/// Extracts the image `make` returns (given this run's outside folder, which hostile names
/// aim at) into a fresh target; returns exit code, stderr and the entry counts of target and
/// outside.
fn extract_with(make: impl Fn(&str) -> Vec<u8>) -> (Option<i32>, String, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = dir.path().join("target");
    let f = dir.path().join("x.img");
    std::fs::write(&f, make(outside.to_str().unwrap())).unwrap();
    let out = initramfs(&["extract", f.to_str().unwrap(), target.to_str().unwrap()]);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), count(&target), count(&outside))
}

fn plain(entries: &[Entry]) -> Vec<u8> {
    write_archive(entries, 4)
}

#[test]
fn path_traversal_and_symlink_escapes_are_refused() {
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![file("ok", b"1"), file("../escape", b"x")], "`..`"),
        (vec![file("a/../../escape", b"x")], "`..`"),
        (vec![file("@OUTSIDE@/escape", b"x")], "absolute"),
        (
            vec![Entry::new("evil", S_IFLNK | 0o777, b"@OUTSIDE@".to_vec()), file("evil/escape", b"x")],
            "through the symlink",
        ),
        (
            vec![
                Entry::new("d", S_IFDIR | 0o755, vec![]),
                Entry::new("d/up", S_IFLNK | 0o777, b"../..".to_vec()),
                file("d/up/escape", b"x"),
            ],
            "through the symlink",
        ),
    ];
    for (entries, why) in cases {
        let aimed = |outside: &str| -> Vec<Entry> {
            entries
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.name = e.name.replace("@OUTSIDE@", outside);
                    e.data = String::from_utf8_lossy(&e.data).replace("@OUTSIDE@", outside).into_bytes();
                    e
                })
                .collect()
        };
        // The same in a plain archive and inside a compressed one.
        for gz in [false, true] {
            let (code, err, inside, outside) = extract_with(|o| {
                let cpio = plain(&aimed(o));
                if gz { compress(Compression::Gzip, &cpio).unwrap() } else { cpio }
            });
            assert_eq!(code, Some(2), "{entries:?}");
            assert!(err.contains(why), "{why}: {err}");
            assert_eq!((inside, outside), (0, 0), "{err}");
        }
    }
}

#[test]
fn absurd_sizes_truncation_and_corruption_are_clear_errors() {
    let good = plain(&[file("a", b"hello"), file("b", &[7u8; 4000])]);

    // A header that claims 4 GiB - 1 bytes.
    let mut huge = good.clone();
    huge[54..62].copy_from_slice(b"FFFFFFFF");
    let (code, err, inside, _) = extract(&huge);
    assert_eq!((code, inside), (Some(2), 0));
    assert!(err.contains("more than the") && err.contains("\"a\""), "{err}");

    // Cut in the middle of the second member's data.
    let (code, err, inside, _) = extract(&good[..good.len() - 2000]);
    assert_eq!((code, inside), (Some(2), 0));
    assert!(err.contains("truncated"), "{err}");

    // Not hex where a number should be.
    let mut bad = good.clone();
    bad[14] = b'Z';
    let (code, err, _, _) = extract(&bad);
    assert_eq!(code, Some(2));
    assert!(err.contains("not 8 hex digits"), "{err}");

    // A compressed stream that expands past --max-size.
    let bomb = compress(Compression::Zstd, &plain(&[file("zeros", &vec![0u8; 8 << 20])])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bomb.img");
    std::fs::write(&f, &bomb).unwrap();
    let out = initramfs(&["--max-size", "1000000", "list", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"), "{}", String::from_utf8_lossy(&out.stderr));

    // Corrupt gzip data: the checksum catches it.
    let mut gz = compress(Compression::Gzip, &good).unwrap();
    let n = gz.len();
    gz[n - 12] ^= 0xff;
    let (code, err, inside, _) = extract(&gz);
    assert_eq!((code, inside), (Some(2), 0));
    assert!(err.contains("gzip"), "{err}");
}

#[test]
fn good_archive_extracts_with_links_inside() {
    let img = plain(&[
        Entry::new("bin", S_IFDIR | 0o755, vec![]),
        file("bin/tool", b"#!/bin/sh\n"),
        Entry::new("sbin", S_IFLNK | 0o777, b"bin".to_vec()),
        Entry::new("abs", S_IFLNK | 0o777, b"/bin/tool".to_vec()),
    ]);
    let (code, err, inside, outside) = extract(&img);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!((inside, outside), (3, 0));
}

/// Everything about a tree that an escaping write could change: per path, the type, mode,
/// owner, size, mtime and contents (or link target).
fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let body = if m.is_file() {
            format!("{:?}", std::fs::read(&p).unwrap())
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.push(format!("{} {:o} {}:{} {} {} {body}", p.display(), m.mode(), m.uid(), m.gid(), m.len(), m.mtime()));
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// A run of `extract` against a target with a canary file and folder beside it.
struct Attack {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    canary: PathBuf,
    target: PathBuf,
}

impl Attack {
    fn new() -> Attack {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let canary = outside.join("canary");
        std::fs::write(&canary, b"keep me").unwrap();
        std::fs::set_permissions(&canary, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        std::fs::create_dir(outside.join("dir")).unwrap();
        let target = tmp.path().join("target");
        Attack { outside, canary: canary.clone(), target, _tmp: tmp }
    }

    /// Extracts `entries` with `flags`; checks that nothing outside the target changed and
    /// returns (exit code, stderr).
    fn run(&self, entries: &[Entry], flags: &[&str]) -> (Option<i32>, String) {
        let before = snapshot(&self.outside);
        let img = self.target.with_extension("img");
        std::fs::write(&img, plain(entries)).unwrap();
        let mut args = vec!["extract", img.to_str().unwrap(), self.target.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = initramfs(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(snapshot(&self.outside), before, "something outside the target changed: {entries:?} {flags:?}\n{err}");
        (out.status.code(), err)
    }

    fn meta(&self, rel: &str) -> std::fs::Metadata {
        std::fs::symlink_metadata(self.target.join(rel)).unwrap()
    }
}

fn hard(name: &str, mode: u32, ino: u32, data: &[u8]) -> Entry {
    let mut e = Entry::new(name, S_IFREG | mode, data.to_vec());
    (e.nlink, e.ino) = (2, ino);
    e
}

fn link(name: &str, target: &str) -> Entry {
    Entry::new(name, S_IFLNK | 0o777, target.as_bytes().to_vec())
}

#[test]
fn links_turned_into_symlinks_never_carry_a_write_or_chmod_outside() {
    for flags in [&[][..], &["--preserve-setuid", "--same-owner"][..]] {
        let a = Attack::new();
        let canary = a.canary.to_str().unwrap();
        // The first link becomes a symlink to the canary; the inode is named again with mode
        // 06777 (and with data): neither the chmod nor the write may follow the symlink.
        for data in [&b""[..], b"pwned"] {
            let _ = std::fs::remove_dir_all(&a.target);
            let (code, err) = a.run(&[hard("a", 0o644, 9, b""), link("a", canary), hard("b", 0o6777, 9, data)], flags);
            assert_eq!(code, Some(0), "{err}");
            assert!(a.meta("b").is_file(), "b is a file of its own");
            assert_eq!(std::fs::read(a.target.join("b")).unwrap(), data);
            assert!(a.meta("a").file_type().is_symlink());
        }
        // The same with a relative symlink, and with the link in a folder of its own.
        let (code, err) = a.run(
            &[
                Entry::new("d", S_IFDIR | 0o755, vec![]),
                hard("d/a", 0o644, 3, b""),
                link("d/a", "../../outside/canary"),
                hard("b", 0o4777, 3, b""),
                hard("c", 0o4777, 3, b"x"),
            ],
            flags,
        );
        assert_eq!(code, Some(0), "{err}");
        // A member replacing a symlink (made by the archive or already on disk) replaces the
        // link instead of writing through it; so does a folder.
        std::os::unix::fs::symlink(&a.canary, a.target.join("pre")).unwrap();
        std::os::unix::fs::symlink(a.outside.join("dir"), a.target.join("pre-dir")).unwrap();
        let (code, err) = a.run(
            &[
                link("x", canary),
                Entry::new("x", S_IFREG | 0o6777, b"pwned".to_vec()),
                Entry::new("pre", S_IFREG | 0o777, b"pwned".to_vec()),
                Entry::new("pre-dir", S_IFDIR | 0o777, vec![]),
                Entry::new("pre-dir/f", S_IFREG | 0o644, b"pwned".to_vec()),
                link("y", a.outside.join("dir").to_str().unwrap()),
                Entry::new("y", S_IFDIR | 0o777, vec![]),
                Entry::new("y/f", S_IFREG | 0o644, b"pwned".to_vec()),
            ],
            flags,
        );
        assert_eq!(code, Some(0), "{err}");
        for f in ["x", "pre", "pre-dir/f", "y/f"] {
            assert!(a.meta(f).is_file(), "{f}");
        }
        // A symlink already on disk in the middle of a name is an error, not a way out.
        std::os::unix::fs::symlink(a.outside.join("dir"), a.target.join("via")).unwrap();
        let (code, err) = a.run(&[Entry::new("via/f", S_IFREG | 0o644, b"pwned".to_vec())], flags);
        assert_eq!(code, Some(2));
        assert!(err.contains("symlink on disk"), "{err}");
    }
}

#[test]
fn dot_entries_never_change_an_existing_target() {
    let a = Attack::new();
    std::fs::create_dir(&a.target).unwrap();
    std::fs::set_permissions(&a.target, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let mut dot = Entry::new(".", S_IFDIR | 0o6777, vec![]);
    (dot.uid, dot.gid) = (4321, 4321);
    let mut dot2 = dot.clone();
    dot2.name = "./".into();
    let mut dot3 = dot.clone();
    dot3.name = "./.".into();
    for flags in [&[][..], &["--preserve-setuid", "--same-owner"][..]] {
        let (code, err) = a.run(&[dot.clone(), dot2.clone(), dot3.clone(), file("./f", b"1"), file("./a/./b", b"2")], flags);
        assert_eq!(code, Some(0), "{err}");
        let m = std::fs::metadata(&a.target).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, unsafe { libc::geteuid() }), "{flags:?}");
        assert_eq!(std::fs::read(a.target.join("a/b")).unwrap(), b"2");
    }
    // `..` hidden behind dots is still `..`.
    let (code, err) = a.run(&[file("./a/./../../outside/canary", b"x")], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`..`"), "{err}");
    // A target that extract creates gets the `.` member's mode (setuid/setgid cleared).
    std::fs::remove_dir_all(&a.target).unwrap();
    let (code, err) = a.run(&[dot.clone(), file("f", b"1")], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::metadata(&a.target).unwrap().mode() & 0o7777, 0o777);
}

#[test]
fn devices_setuid_and_owners_only_when_asked() {
    let root = unsafe { libc::geteuid() } == 0;
    let dev = |name: &str, kind: u32, major: u32, minor: u32| {
        let mut e = Entry::new(name, kind | 0o666, vec![]);
        (e.rdevmajor, e.rdevminor) = (major, minor);
        e
    };
    let mut su = Entry::new("bin/su", S_IFREG | 0o4755, b"#!/bin/sh\n".to_vec());
    (su.uid, su.gid) = (1234, 2345);
    let mut sg = Entry::new("srv", S_IFDIR | 0o2775, vec![]);
    (sg.uid, sg.gid) = (1234, 2345);
    let mut sl = link("bin/sh", "su");
    (sl.uid, sl.gid) = (1234, 2345);
    let entries = vec![
        Entry::new("dev", S_IFDIR | 0o755, vec![]),
        dev("dev/null", S_IFCHR, 1, 3),
        dev("dev/disk", S_IFBLK, 7, 0),
        dev("dev/fifo", S_IFIFO, 0, 0),
        Entry::new("bin", S_IFDIR | 0o755, vec![]),
        su,
        sl,
        sg,
    ];
    let me = unsafe { libc::geteuid() };

    // By default: no device nodes (a warning each), no setuid/setgid, our own files.
    let a = Attack::new();
    let (code, err) = a.run(&entries, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("dev/null: device node skipped") && err.contains("dev/disk: device node skipped"), "{err}");
    assert!(!a.target.join("dev/null").exists() && !a.target.join("dev/disk").exists());
    assert!(a.meta("dev/fifo").file_type().is_fifo(), "a FIFO is no device");
    assert_eq!(a.meta("dev/fifo").mode() & 0o7777, 0o666);
    assert_eq!(a.meta("bin/su").mode() & 0o7777, 0o755);
    assert_eq!(a.meta("srv").mode() & 0o7777, 0o775);
    for f in ["bin/su", "bin/sh", "srv", "dev/fifo"] {
        assert_eq!(a.meta(f).uid(), me, "{f}");
    }

    // Each flag gives back exactly what it names.
    let b = Attack::new();
    let (code, err) = b.run(&entries, &["--preserve-setuid"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(b.meta("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(b.meta("srv").mode() & 0o7777, 0o2775);
    assert_eq!(b.meta("bin/su").uid(), me);
    if !root {
        return;
    }
    let c = Attack::new();
    let (code, err) = c.run(&entries, &["--devices", "--same-owner"]);
    assert_eq!(code, Some(0), "{err}");
    let null = c.meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (libc::makedev(1, 3), 0o666));
    assert!(c.meta("dev/disk").file_type().is_block_device());
    for f in ["bin/su", "bin/sh", "srv"] {
        assert_eq!((c.meta(f).uid(), c.meta(f).gid()), (1234, 2345), "{f}");
    }
    assert_eq!(c.meta("bin/su").mode() & 0o7777, 0o755, "owners without setuid bits");
}
