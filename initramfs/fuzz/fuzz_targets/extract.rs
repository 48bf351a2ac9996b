#![no_main]
//! Any image that reads is extracted into a scratch folder `out`; a canary folder beside it
//! (files, a subfolder, a symlink) must be exactly as before, whatever the archive holds:
//! symlinks pointing at `../canary`, hard links, `.` entries, devices, odd modes.
//! Run it only where the system is protected from a real escape: `scripts/fuzz` runs it in a
//! mount namespace where everything but its own folders is read-only.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use initramfs::image::{Image, Limits};
use libfuzzer_sys::fuzz_target;

/// Everything about one path that a write, chmod, chown, link or rename would change.
#[derive(Debug, PartialEq, Eq)]
struct State {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
}

fn snapshot(base: &Path) -> BTreeMap<PathBuf, State> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, State>) {
        let Ok(m) = fs::symlink_metadata(p) else { return };
        let content = if m.file_type().is_symlink() {
            fs::read_link(p).ok().map(|t| t.into_os_string().into_encoded_bytes())
        } else if m.is_file() {
            fs::read(p).ok()
        } else {
            None
        };
        out.insert(p.to_path_buf(), State {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            content,
        });
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path()).collect();
            names.sort();
            for n in names {
                walk(&n, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut names: Vec<_> = fs::read_dir(base).expect("scratch folder").flatten().map(|e| e.path()).collect();
    names.sort();
    for n in names.into_iter().filter(|n| !n.ends_with("out")) {
        walk(&n, &mut out);
    }
    out
}

/// `out` is gone afterwards even if the archive left folders without write permission.
fn wipe(p: &Path) {
    if let Ok(m) = fs::symlink_metadata(p) {
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                wipe(&e.path());
            }
            let _ = fs::remove_dir(p);
        } else {
            let _ = fs::remove_file(p);
        }
    }
}

/// The scratch folder, made once per process: `canary/` (f, d/g, l -> f), a file `victim`,
/// and room for `out/`.
fn scratch() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("initramfs-extract-fuzz.{}", std::process::id()));
        wipe(&base);
        fs::create_dir_all(base.join("canary/d")).expect("creating the canary");
        fs::write(base.join("canary/f"), b"canary").expect("creating the canary");
        fs::write(base.join("canary/d/g"), b"canary").expect("creating the canary");
        std::os::unix::fs::symlink("f", base.join("canary/l")).expect("creating the canary");
        fs::write(base.join("victim"), b"victim").expect("creating the canary");
        base
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_entry: 1 << 16, max_total: 1 << 20 };
    let Ok(img) = Image::parse(data, limits) else { return };
    let base = scratch();
    let out = base.join("out");
    let before = snapshot(base);
    // Both ways: the safe defaults, and everything an admin may turn on (devices, owners,
    // setuid bits), which takes the riskier paths.
    let all = initramfs::extract::Options { devices: true, same_owner: true, preserve_setuid: true };
    for opts in [initramfs::extract::Options::default(), all] {
        let _ = initramfs::extract::extract(&img, &out, &opts);
        wipe(&out);
    }
    let after = snapshot(base);
    if before != after {
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
            .collect();
        panic!("extract changed something outside its folder:\n{}", changed.join("\n"));
    }
});
