//! Truncated, corrupt and hostile archives: a clear error, and nothing written outside the
//! target folder (nor inside it, since names are all checked before the first write).

mod common;

use std::path::Path;

use common::*;
use initramfs::compress::{compress, Compression};
use initramfs::newc::{write_archive, Entry, S_IFDIR, S_IFLNK, S_IFREG};

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
