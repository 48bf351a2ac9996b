//! A QEMU guest booted from a busybox initramfs that holds the static `thinclient` and
//! Debian's display and input modules: where the boot image's fbdev code really runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{spawn, Proc};

/// `thinclient` linked statically without SDL, as the boot image carries it.
pub fn static_thinclient() -> PathBuf {
    if let Some(p) = std::env::var_os("TC_STATIC_THINCLIENT") {
        return PathBuf::from(p);
    }
    let root = testkit::repo_root();
    // A target folder of its own: the one running this test is locked by cargo.
    let target_dir = root.join("target/static-client");
    let triple = "x86_64-unknown-linux-gnu";
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", triple, "-p", "thinclient", "--no-default-features"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(&root)
        .status()
        .expect("running cargo");
    assert!(st.success(), "building the static thinclient failed");
    let bin = target_dir.join(triple).join("release/thinclient");
    let o = Command::new("file").arg(&bin).output().expect("file");
    let what = String::from_utf8_lossy(&o.stdout);
    assert!(what.contains("statically linked") || what.contains("static-pie"), "{what}");
    bin
}

/// `names` (like `kernel/drivers/gpu/drm/tiny/bochs.ko`) and their dependencies from
/// `modules.dep`, dependencies first, each once.
pub fn module_closure(dir: &Path, names: &[&str]) -> Vec<String> {
    let dep = std::fs::read_to_string(dir.join("modules.dep")).expect("modules.dep");
    let deps_of = |m: &str| -> Vec<String> {
        dep.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| *k == m).map(|(_, v)| v.split_whitespace().map(String::from).collect()))
            .unwrap_or_else(|| panic!("{m} not in modules.dep"))
    };
    let mut out: Vec<String> = Vec::new();
    for n in names {
        // modules.dep lists what a module needs nearest-first: load them from the far end.
        for m in deps_of(n).into_iter().rev().chain([n.to_string()]) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// A newc initramfs of busybox, the viewer, the modules (decompressed, loaded in order by
/// `/init`) and `init`.
pub fn initramfs(out: &Path, thinclient: &Path, init_tail: &str) {
    let mods_dir = testkit::modules_dir().expect("Debian kernel modules (run scripts/setup)");
    let want = [
        "kernel/drivers/gpu/drm/tiny/bochs.ko",
        "kernel/drivers/input/evdev.ko",
        "kernel/drivers/input/mouse/psmouse.ko",
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
    ];
    let have = |m: &str| ["", ".xz", ".zst"].iter().map(|s| format!("{m}{s}")).find(|p| mods_dir.join(p).exists());
    let names: Vec<String> = want.iter().map(|m| have(m).unwrap_or_else(|| panic!("{m} missing in {}", mods_dir.display()))).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut extra: Vec<(String, Vec<u8>)> =
        vec![("bin/thinclient".into(), std::fs::read(thinclient).expect("reading the static thinclient"))];
    let mut load = String::new();
    for (i, m) in module_closure(&mods_dir, &names).iter().enumerate() {
        // busybox insmod reads plain ELF only: unpack compressed modules on this side.
        let src = mods_dir.join(m);
        let data = match m.rsplit_once('.').map(|(_, e)| e) {
            Some("xz") => Command::new("xz").arg("-dc").arg(&src).output().unwrap().stdout,
            Some("zst") => Command::new("zstd").arg("-dc").arg(&src).output().unwrap().stdout,
            _ => std::fs::read(&src).unwrap(),
        };
        assert!(data.starts_with(b"\x7fELF"), "{m} did not unpack to ELF");
        extra.push((format!("mods/{i:02}.ko"), data));
        load.push_str(&format!("insmod /mods/{i:02}.ko || echo \"insmod {m} failed\"\n"));
    }
    let init = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {load}\
         ip link set lo up\nip addr add 10.0.2.15/24 dev eth0\nip link set eth0 up\n\
         i=0; while [ ! -e /dev/fb0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         echo \"guest ready: fb0 $(cat /sys/class/graphics/fb0/virtual_size 2>&1)\"\n\
         {init_tail}\n\
         echo 'guest: viewer ended'\nsleep 100000\n"
    );
    testkit::busybox_initramfs_with(out, &init, &extra).expect("building the test initramfs");
}

/// QEMU (TCG under test) with `-vga std` at 1024x768, the serial console in `serial` and the
/// monitor on the socket `mon`; `net` adds a network (none without). Killed when dropped.
pub fn guest(initrd: &Path, serial: &Path, mon: &Path, net: &[&str]) -> Proc {
    spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args(testkit::accel_args())
            .args(["-m", "384", "-nodefaults", "-no-reboot", "-display", "none", "-vga", "std"])
            .arg("-kernel")
            .arg(testkit::kernel().expect("Debian kernel (run scripts/setup)"))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 loglevel=4 vt.global_cursor_default=0 panic=-1 video=1024x768"])
            .args(net)
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", mon.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}
