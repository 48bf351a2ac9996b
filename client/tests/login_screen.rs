//! The agent's login form where it really runs: a QEMU guest (as in `viewer_fbdev`) runs
//! `thinclient agent login-screen --layout de`, which draws the form on the guest's /dev/fb0
//! and reads its PS/2 keyboard through evdev, grabbed. Keys go in through QEMU's monitor
//! (`sendkey`, US key names: physical keys).
//!
//! What it shows: the German layout turns the physical keys Y, ; and AltGr+Q into z, ö and @
//! in the name field; typing a password changes not one pixel of the guest's screen while
//! typing the name does; Enter in the password field submits the name (printed by the tool)
//! and the password is nowhere in the guest's output.
//!
//! Needs what `viewer_fbdev` needs except X (qemu-system-x86_64, busybox-static, cpio, the
//! Debian kernel in `.cache`). About 30 s after the static build.

mod viewer_support;

use std::path::Path;
use std::time::{Duration, Instant};

use viewer_support::guest::*;
use viewer_support::*;

/// Screen dumps until two in a row are equal: DRM's fbdev emulation copies the shadow
/// buffer to the card on a worker, so a dump right after a change may be half old.
fn settled(m: &mut Monitor, path: &Path) -> image::RgbImage {
    let mut last = m.screendump(path);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(700));
        let now = m.screendump(path);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the guest's screen never settled");
}

fn keys(m: &mut Monitor, keys: &[&str]) {
    for k in keys {
        m.cmd(&format!("sendkey {k}"));
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn login_form_in_a_guest_reads_a_german_keyboard_and_shows_no_password() {
    let dir = tmpdir();
    let initrd = dir.path().join("initrd.cpio");
    initramfs(
        &initrd,
        &static_thinclient(),
        "RUST_LOG=info /bin/thinclient agent login-screen --pc lab-07 --layout de\necho \"guest: login-screen exit $?\"",
    );
    let serial = dir.path().join("serial.log");
    let mon = dir.path().join("mon.sock");
    let _guest = guest(&initrd, &serial, &mon, &[]);
    let log = testkit::wait_for_text(&serial, "login screen reads", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(log.contains("== Log in == lab-07 (enrolled)"), "no login screen on the console:\n{log}");

    let mut m = Monitor::connect(&mon);
    let shot = dir.path().join("screen.ppm");
    let empty = settled(&mut m, &shot);
    // The form's background colour fills the screen's corner.
    assert_eq!(empty.get_pixel(2, 2).0, [0x26, 0x46, 0x53], "the form is not on the framebuffer");

    // Physical Y, semicolon and AltGr+Q: z, ö and @ on a German keyboard.
    keys(&mut m, &["a", "l", "y", "semicolon", "alt_r-q", "tab"]);
    let named = settled(&mut m, &shot);
    assert_ne!(named, empty, "typing the name changed nothing on screen");

    keys(&mut m, &["s", "e", "c", "r", "e", "t", "shift-x", "1"]);
    let typed = settled(&mut m, &shot);
    let (mean, max) = diff(&named, &typed);
    if max != 0 {
        let _ = std::fs::copy(&shot, std::env::temp_dir().join("login_screen_typed.ppm"));
    }
    assert_eq!(max, 0, "typing the password changed the screen (mean {mean:.4})");

    m.cmd("sendkey ret");
    let log = testkit::wait_for_text(&serial, "guest: login-screen exit", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(log.contains("login: user \"alzö@\""), "the name typed was not submitted as alzö@:\n{log}");
    assert!(log.contains("guest: login-screen exit 0"), "{log}");
    for leak in ["secret", "secretX1", "secretx1"] {
        assert!(!log.contains(leak), "the password shows in the guest's output:\n{log}");
    }
}
