//! Images made by Debian's tools: we list them exactly as lsinitramfs does, read every
//! compression the kernel accepts as the real compressors write it, and a `replace` yields an
//! image that unmkinitramfs unpacks with only that file changed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;

/// One mkinitramfs image (zstd, network + display modules) for all tests of this file.
fn debian_image() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("distro");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let img = work.join("debian.img");
        mkinitramfs(&work, &["e1000", "virtio_net", "bochs"], "zstd", &img);
        img
    })
}

/// Debian's layout when a microcode package is installed: an uncompressed early archive
/// (made here by GNU cpio) followed by the compressed main one.
fn with_early_microcode(dir: &Path) -> PathBuf {
    let early = dir.join("early");
    std::fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
    std::fs::write(early.join("kernel/x86/microcode/GenuineIntel.bin"), vec![0x5a; 3000]).unwrap();
    let cpio = ok(Command::new("sh").current_dir(&early).args(["-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc"]));
    let mut bytes = cpio;
    bytes.extend(std::fs::read(debian_image()).unwrap());
    let out = dir.join("combined.img");
    std::fs::write(&out, bytes).unwrap();
    out
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(p);
                out.insert(rel, b"<dir>".to_vec());
            } else if ft.is_symlink() {
                out.insert(rel, std::fs::read_link(&p).unwrap().to_string_lossy().as_bytes().to_vec());
            } else if ft.is_file() {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn lists_exactly_as_lsinitramfs_with_and_without_early_archive() {
    let dir = tempfile::tempdir().unwrap();
    for img in [debian_image().clone(), with_early_microcode(dir.path())] {
        let theirs = lines(&ok(Command::new("lsinitramfs").arg(&img)));
        let ours = initramfs(&["list", img.to_str().unwrap()]);
        assert!(ours.status.success(), "{}", String::from_utf8_lossy(&ours.stderr));
        assert!(theirs.len() > 100, "mkinitramfs made a real image");
        assert_eq!(lines(&ours.stdout), theirs, "{}", img.display());
        let v = initramfs(&["verify", img.to_str().unwrap()]);
        assert!(v.status.success(), "verify: {}", String::from_utf8_lossy(&v.stdout));
    }
}

#[test]
fn replace_changes_only_that_file_for_unmkinitramfs() {
    let dir = tempfile::tempdir().unwrap();
    let img = with_early_microcode(dir.path());
    let newconf = dir.path().join("new.conf");
    std::fs::write(&newconf, "MODULES=list\n# replaced\n").unwrap();
    let out = dir.path().join("replaced.img");
    let r = initramfs(&["replace", img.to_str().unwrap(), "conf/initramfs.conf", "--from", newconf.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    // The early archive is carried over byte for byte.
    let (a, b) = (std::fs::read(&img).unwrap(), std::fs::read(&out).unwrap());
    let early_len = a.len() - std::fs::metadata(debian_image()).unwrap().len() as usize;
    assert_eq!(a[..early_len], b[..early_len]);

    let (ua, ub) = (dir.path().join("a"), dir.path().join("b"));
    ok(Command::new("unmkinitramfs").arg(&img).arg(&ua));
    ok(Command::new("unmkinitramfs").arg(&out).arg(&ub));
    let (ta, tb) = (tree(&ua), tree(&ub));
    assert!(ta.contains_key("early/kernel/x86/microcode/GenuineIntel.bin"));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "same entries");
    let changed: Vec<&String> = ta.keys().filter(|k| ta[*k] != tb[*k]).collect();
    assert_eq!(changed, ["main/conf/initramfs.conf"]);
    assert_eq!(tb["main/conf/initramfs.conf"], b"MODULES=list\n# replaced\n");

    let d = initramfs(&["diff", img.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(d.status.code(), Some(1));
    assert_eq!(lines(&d.stdout), ["~ conf/initramfs.conf: content (1000 -> 24 bytes)".replace("1000", &ta["main/conf/initramfs.conf"].len().to_string())]);
}

fn pipe(cmd: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new("sh").args(["-c", cmd]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = c.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn every_kernel_compression_both_ways() {
    use initramfs::compress::{compress_level, Compression};
    let cpio = pipe("zstd -dc", &std::fs::read(debian_image()).unwrap());
    let expected = lines(&pipe("cpio -t --quiet", &cpio));
    let dir = tempfile::tempdir().unwrap();
    // The real tools, with the options the kernel's decompressors need (fast levels: this is
    // about formats, not ratios).
    let tools = [
        (Compression::Gzip, "gzip -1 -n -c", "gzip -dc"),
        (Compression::Bzip2, "bzip2 -1 -c", "bzip2 -dc"),
        (Compression::Xz, "xz -1 --check=crc32 -c", "xz -dc"),
        (Compression::Lzma, "lzma -1 -c", "lzma -dc"),
        (Compression::Lz4, "lz4 -l -c", "lz4 -dc"),
        (Compression::Lzo, "lzop -c", "lzop -dc"),
        (Compression::Zstd, "zstd -1 -q -c", "zstd -dc"),
    ];
    for (c, pack, unpack) in tools {
        // Theirs, read by us (with trailing padding, as boot loaders may add).
        let mut img = pipe(pack, &cpio);
        img.extend_from_slice(&[0; 512]);
        let f = dir.path().join(format!("img.{c}"));
        std::fs::write(&f, &img).unwrap();
        let ours = initramfs(&["list", f.to_str().unwrap()]);
        assert!(ours.status.success(), "{c}: {}", String::from_utf8_lossy(&ours.stderr));
        assert_eq!(lines(&ours.stdout), expected, "{c}");
        // Ours, read by them.
        let packed = compress_level(c, &cpio, 1).unwrap();
        assert!(pipe(unpack, &packed) == cpio, "{c}: the real tool unpacks our stream");
    }
}

#[test]
fn damaged_distribution_image_is_a_clear_error() {
    let img = std::fs::read(debian_image()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.img");
    std::fs::write(&cut, &img[..img.len() / 2]).unwrap();
    let flipped = dir.path().join("flipped.img");
    let mut f = img.clone();
    let mid = f.len() / 3;
    for b in &mut f[mid..mid + 64] {
        *b ^= 0x55;
    }
    std::fs::write(&flipped, &f).unwrap();
    for bad in [&cut, &flipped] {
        let out = initramfs(&["list", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", bad.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("zstd") && err.contains(bad.to_str().unwrap()), "{err}");
    }
}
