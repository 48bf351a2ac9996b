//! The workstation template (X, twm, xterm, xclock from Debian's packages) booted by server-host:
//! a pre-booted pool VM shows the terminal, is given to a user (her data disk hot-plugged as the
//! home folder), keys sent through the VM's VNC server are typed into the terminal, and what the
//! typed command writes lands on her data disk. Runs as root with the packages of scripts/setup,
//! under TCG (as on the lab's servers without KVM).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Where the template puts the terminal: xterm at (40, 40) with 120x36 cells of 6x13 pixels
/// under a title bar. This box is inside its text area on every row of text.
const TERM: (usize, usize, usize, usize) = (50, 70, 750, 520);

/// Builds (once, idempotently) the workstation template beside the test-pattern one.
fn workstation_template() {
    let st = std::process::Command::new(repo().join("scripts/build-desktop-template"))
        .arg("workstation")
        .status()
        .expect("running build-desktop-template workstation");
    assert!(st.success(), "build-desktop-template workstation failed");
}

/// Pixels of `rgb` (a 1280-wide screen) inside `b` (x0, y0, x1, y1) that satisfy `f`.
fn count(rgb: &[u8], w: usize, b: (usize, usize, usize, usize), f: impl Fn(&[u8]) -> bool) -> usize {
    (b.1..b.3).flat_map(|y| (b.0..b.2).map(move |x| (y * w + x) * 3)).filter(|&o| f(&rgb[o..o + 3])).count()
}

fn screen(h: &Host, vm: &str) -> (usize, Vec<u8>) {
    let (code, ppm) = h.get(&format!("/vms/{vm}/screen"));
    assert_eq!(code, 200, "screendump of {vm}");
    let (w, hh, rgb) = parse_ppm(&ppm);
    assert_eq!((w, hh), (1280, 800));
    (w, rgb)
}

/// The X keysyms to type `text` on a US keyboard, each with whether Shift is held, as a real
/// VNC client sends them (QEMU turns them into PS/2 scancodes).
fn keysyms(text: &str) -> Vec<(u32, bool)> {
    text.chars()
        .map(|c| match c {
            '\n' => (0xff0d, false),
            '>' | '~' | '_' | '"' | '|' => (c as u32, true),
            c if c.is_ascii_uppercase() => (c as u32, true),
            c => (c as u32, false),
        })
        .collect()
}

/// Types `text` through the VM's VNC server (password authentication on its unix socket).
fn vnc_type(socket: &std::path::Path, password: &str, text: &str) {
    const SHIFT_L: u32 = 0xffe1;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let vnc = vnc_connect(socket, password).await;
        let key = |k: u32, down: bool| vnc::X11Event::KeyEvent(vnc::ClientKeyEvent { keycode: k, down });
        for (k, shift) in keysyms(text) {
            if shift {
                vnc.input(key(SHIFT_L, true)).await.unwrap();
            }
            vnc.input(key(k, true)).await.unwrap();
            vnc.input(key(k, false)).await.unwrap();
            if shift {
                vnc.input(key(SHIFT_L, false)).await.unwrap();
            }
            // A person's pace, so that a slow guest (TCG) drops no key.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // The events are sent once the server has read them: wait for its next message.
        vnc.input(vnc::X11Event::Refresh).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), vnc.recv_event()).await;
        let _ = vnc.close().await;
    })
}

#[test]
fn workstation_shows_a_terminal_that_keys_typed_over_vnc_reach() {
    workstation_template();
    let h = Host::start("accel = \"tcg\"\ndata_disk_mib = 32");
    let state = h.state();
    // A pre-booted pool VM, nobody's yet: the data disk is hot-plugged when it is assigned.
    let t_create = Instant::now();
    let body = r#"{"name":"pool-1","template":"workstation","memory_mib":256,"user":"","pool":true}"#;
    let (code, vm) = h.json("POST", "/vms", Some(body));
    assert_eq!(code, 201, "{vm}\n{}", h.log());
    // From here: the VM's QEMU runs.
    let t0 = Instant::now();
    let create = t_create.elapsed();

    // TC-READY: the terminal's shell runs. The serial shell takes one client at a time, and
    // server-host's `tc-assign` goes through it: the test connects once the guest acknowledged.
    let console_log = state.join("vms/pool-1/console.log");
    let wait_log = |what: &str, secs: u64| loop {
        let log = std::fs::read_to_string(&console_log).unwrap_or_default();
        if log.contains(what) {
            break log;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "no {what}; serial:\n{log}\n{}", h.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = wait_log("TC-READY", 300);
    let boot = t0.elapsed();
    let uptime = log.lines().find_map(|l| l.strip_prefix("TC-BOOT uptime=")).unwrap_or("?").trim().to_owned();
    eprintln!(
        "workstation: create request {:.1} s, then terminal up after {:.1} s (guest uptime {uptime} s)",
        create.as_secs_f64(),
        boot.as_secs_f64()
    );
    assert!(!log.contains("TC-DATA-MOUNTED"), "a pool VM has no data disk");
    let (code, v) = h.json("POST", "/vms/pool-1/assign", Some(r#"{"user":"dana"}"#));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data_disk"], "attached", "{v}");
    wait_log("TC-ASSIGNED user=dana", 360);
    let mut con = Console::open(&state, "pool-1");
    assert_eq!(con.run("cat /run/tc-user").1, "dana");
    con.wait_ok("grep -q '^virtio_balloon ' /proc/modules", 10);
    con.wait_ok("grep -q '^/dev/vdb /home/user ext4 ' /proc/mounts", 60);
    assert_eq!(con.run("ls /data/ | grep -v lost+found | wc -l").1, "0", "a new user's home is empty");

    // The screen: a blank X screen is one colour; this one shows the terminal, white (xterm's
    // background) over nearly all of its text area, and the black root window below it.
    let (w, before) = screen(&h, "pool-1");
    let term_px = (TERM.2 - TERM.0) * (TERM.3 - TERM.1);
    let white = count(&before, w, TERM, |p| p == [255, 255, 255]);
    assert!(white * 100 > term_px * 95, "terminal area: {white} of {term_px} pixels white");
    let below = (0, 600, 1280, 800);
    assert_eq!(count(&before, w, below, |p| p != [0, 0, 0]), 0, "the root window under the terminal");

    // Typed through VNC like a person at the PC; the shell in the terminal runs it.
    vnc_type(vm["vnc"]["unix"].as_str().unwrap().as_ref(), vm["vnc_password"].as_str().unwrap(), "echo hello > ~/typed\n");
    assert_eq!(con.wait_ok("cat /home/user/typed", 60), "hello");
    assert_eq!(con.run("stat -c %U /home/user/typed").1, "user", "written by the desktop's user");
    // ...and the typed command is on the screen: black glyphs now in the terminal's text area.
    let t = Instant::now();
    loop {
        let (_, after) = screen(&h, "pool-1");
        let inked = |img: &[u8]| count(img, w, TERM, |p| p == [0, 0, 0]);
        // "echo hello > ~/typed" is 20 glyphs of about 15 dark pixels each.
        if inked(&after) > inked(&before) + 150 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the typed text never showed: {} then {}", inked(&before), inked(&after));
        std::thread::sleep(Duration::from_millis(500));
    }

    // The ACPI power button stops it gracefully (server-host kills a VM that ignores it).
    let t = Instant::now();
    let (code, ev) = h.json("POST", "/vms/pool-1/stop", Some(r#"{"deadline_secs":60}"#));
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["kind"], "stopped", "{ev}");
    assert!(t.elapsed() < Duration::from_secs(60), "the guest ignored the power button");
    assert!(qemu_pids(&state).is_empty());
}
