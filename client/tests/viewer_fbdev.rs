//! The fbdev presenter where it really runs: a QEMU guest with no GL stack, booted from a
//! busybox initramfs that holds the static `thinclient` and Debian's display and input modules
//! (bochs DRM with fbdev emulation on `-vga std`, evdev, PS/2 mouse, e1000). The guest reaches
//! Xvnc on the host's loopback through QEMU's user-mode network (`guestfwd`, `restrict=on`:
//! no other traffic leaves QEMU).
//!
//! The proof is the picture: the client guest's `screendump` equals `xwd -root` of Xvnc pixel
//! for pixel (ZRLE is lossless and both are 1024x768, so nothing is scaled). Then keys and a
//! click sent to the client guest's PS/2 devices through its monitor arrive at `xev` on the
//! remote desktop.
//!
//! Needs qemu-system-x86_64, busybox-static, cpio, Xvnc, xwd, xsetroot, xlogo, xev (all from
//! `scripts/setup`) and Debian's kernel in `<repo>/.cache` (or `TC_CACHE`). The static viewer is
//! built here (its own target folder) unless `TC_STATIC_THINCLIENT` names one. Under TCG the
//! guest takes a minute or two.

mod viewer_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viewer_support::*;

const W: u32 = 1024;
const H: u32 = 768;

/// `thinclient` linked statically without SDL, as the boot image carries it.
fn static_thinclient() -> PathBuf {
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
fn module_closure(dir: &Path, names: &[&str]) -> Vec<String> {
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
fn initramfs(out: &Path, thinclient: &Path, init_tail: &str) {
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

/// A 16x16 cursor with an empty mask: the server's pointer is invisible, so the viewer draws
/// nothing over the desktop and the screens can be compared without holes.
fn blank_cursor(path: &Path) {
    let bits = vec!["0x00"; 32].join(", ");
    std::fs::write(path, format!("#define c_width 16\n#define c_height 16\nstatic unsigned char c_bits[] = {{\n   {bits}}};\n")).unwrap();
}

#[test]
fn fbdev_in_a_guest_shows_the_desktop_and_sends_input() {
    let dir = tmpdir();
    let port = testkit::free_port();
    // Xvnc on loopback TCP: QEMU's guestfwd command bridges the guest's connection to it.
    let srv = xvnc_with(
        dir.path(),
        W,
        H,
        &["-SecurityTypes", "None", "-interface", "127.0.0.1", "-rfbport", &port.to_string()],
    );
    let cur = dir.path().join("blank.xbm");
    blank_cursor(&cur);
    let c = cur.to_str().unwrap();
    x(srv.display, "xsetroot", &["-mod", "5", "7", "-fg", "#20a040", "-bg", "#301060", "-cursor", c, c]);
    let sd = format!(":{}", srv.display);
    let _logo = spawn("xlogo", Command::new("xlogo").args(["-display", &sd, "-geometry", "220x160+40+40"]).stderr(Stdio::null()));
    let xev_log = dir.path().join("xev.log");
    // Under the server's pointer (the screen's centre), so it has the keyboard focus.
    let _xev = spawn(
        "xev",
        Command::new("xev")
            .args(["-display", &sd, "-geometry", "400x300+312+234", "-event", "keyboard", "-event", "button"])
            .stdout(std::fs::File::create(&xev_log).unwrap())
            .stderr(Stdio::null()),
    );
    wait_for("X windows", Duration::from_secs(30), || {
        let img = xwd_root(srv.display);
        img.get_pixel(100, 100) != img.get_pixel(5, 5) && img.get_pixel(512, 384) != img.get_pixel(5, 5)
    });

    let viewer = static_thinclient();
    let initrd = dir.path().join("initrd.cpio");
    initramfs(
        &initrd,
        &viewer,
        "RUST_LOG=info /bin/thinclient view 10.0.2.100:5900 --presenter fbdev --encoding zrle --reconnect-max-delay 2 \
         --logout-keys Ctrl+Alt+End\necho \"guest: viewer exit $?\"",
    );
    let serial = dir.path().join("serial.log");
    let mon = dir.path().join("mon.sock");
    let fwd = format!("guestfwd=tcp:10.0.2.100:5900-cmd:busybox nc 127.0.0.1 {port}");
    let _guest = spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args(testkit::accel_args())
            .args(["-m", "384", "-nodefaults", "-no-reboot", "-display", "none", "-vga", "std"])
            .arg("-kernel")
            .arg(testkit::kernel().expect("Debian kernel (run scripts/setup)"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 loglevel=4 vt.global_cursor_default=0 panic=-1 video=1024x768"])
            .args(["-netdev", &format!("user,id=n0,restrict=on,{fwd}"), "-device", "e1000,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", mon.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let log = testkit::wait_for_text(&serial, "first full frame received", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!log.contains(".ko failed"), "a module did not load:\n{log}");
    assert!(log.contains(&format!("fbdev /dev/fb0: {W}x{H} 32 bpp")), "guest framebuffer is not {W}x{H}x32:\n{log}");
    // The logout keys are on the status line until the hint's time is up; the comparison
    // below waits for the bar to go.
    assert!(log.contains("status: Log out: Ctrl+Alt+End"), "no logout hint on the status line:\n{log}");

    let truth = xwd_root(srv.display);
    let mut m = Monitor::connect(&mon);
    let dump = dir.path().join("client.ppm");
    // DRM's fbdev emulation copies the shadow buffer to the card on a worker: poll until the
    // picture settles on the truth.
    let t = Instant::now();
    let (mut mean, mut max) = (f64::MAX, 255);
    while t.elapsed() < Duration::from_secs(120) {
        let shot = m.screendump(&dump);
        assert_eq!(shot.dimensions(), (W, H), "client screen size");
        (mean, max) = diff(&shot, &truth);
        if max == 0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if max != 0 {
        let _ = std::fs::copy(&dump, std::env::temp_dir().join("viewer_fbdev_client.ppm"));
    }
    assert_eq!(max, 0, "client guest's screen differs from the server's (mean {mean:.3})");

    // Keys through the client guest's PS/2 keyboard, evdev, the viewer's layout table, RFB.
    for k in ["a", "shift-b", "1", "ctrl-x"] {
        m.cmd(&format!("sendkey {k}"));
        std::thread::sleep(Duration::from_millis(300));
    }
    m.cmd("mouse_button 1");
    std::thread::sleep(Duration::from_millis(200));
    m.cmd("mouse_button 0");
    let want = ["(keysym 0x61, a)", "(keysym 0x42, B)", "Shift_L", "(keysym 0x31, 1)", "(keysym 0x78, x)", "Control_L", "button 1,"];
    let text = wait_for_all(&xev_log, &want, Duration::from_secs(120));
    for w in want {
        assert!(text.contains(w), "xev never saw {w:?}; it logged:\n{text}\nguest:\n{}", std::fs::read_to_string(&serial).unwrap_or_default());
    }

    // The logout keys end the viewer with its logout status, and End never reaches the desktop.
    m.cmd("sendkey ctrl-alt-end");
    let log = testkit::wait_for_text(&serial, "guest: viewer exit", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(log.contains("guest: viewer exit 10"), "the viewer did not exit with status 10:\n{log}");
    let text = std::fs::read_to_string(&xev_log).unwrap_or_default();
    assert!(!text.contains("End"), "End reached the desktop:\n{text}");
}
