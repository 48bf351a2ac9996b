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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viewer_support::guest::*;
use viewer_support::*;

const W: u32 = 1024;
const H: u32 = 768;

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
    let _guest = guest(&initrd, &serial, &mon, &["-netdev", &format!("user,id=n0,restrict=on,{fwd}"), "-device", "e1000,netdev=n0"]);
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
