//! End to end in the lab, through `scripts/demo` with this build's binaries: a QEMU PC
//! network-boots into the agent, announces itself and shows the login screen; the account
//! `demo` is typed on its keyboard (QMP `send-key`); the broker gives that person a desktop VM
//! from its pre-booted pool (the "workstation" template: X, twm, xterm) on a real `server-host`
//! and assigns it a session on the VNC proxy, the agent's fbdev viewer shows it, and the PC's
//! screen (QMP `screendump`) equals the VM's screen (server-host's `/screen`). Then the demo
//! types a command on the PC's keyboard into the terminal that writes a file in the home folder;
//! the PC's screen shows it and equals the VM's, and the VM's serial console finds the file on
//! the data disk. The capture of the LAN does not hold the typed password.

use std::path::Path;
use std::process::Command;

fn ppm_size(data: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(&data[..data.len().min(32)]).into_owned();
    let mut f = text.split_ascii_whitespace();
    assert_eq!(f.next(), Some("P6"), "not a PPM");
    let w = f.next().unwrap().parse().unwrap();
    let h = f.next().unwrap().parse().unwrap();
    (w, h)
}

#[test]
fn network_booted_pc_shows_its_desktop_vm() {
    let bin = Path::new(env!("CARGO_BIN_EXE_thinclient")).parent().unwrap().to_path_buf();
    for b in ["bootserver", "server-host", "initramfs"] {
        assert!(bin.join(b).exists(), "{} is missing: build the workspace binaries", bin.join(b).display());
    }
    // The static agent without SDL, as the image needs it (scripts/setup builds it with
    // scripts/build-client); this test's own thinclient links SDL2 dynamically.
    let client = testkit::repo_root().join("target/x86_64-unknown-linux-gnu/release/thinclient");
    assert!(client.exists(), "{} is missing: run scripts/build-client (scripts/setup does)", client.display());
    let out = tempfile::tempdir().unwrap();
    let keep = out.path().join("work");
    let run = Command::new(testkit::repo_root().join("scripts/demo"))
        .arg("--keep")
        .arg(&keep)
        .env("DEMO_BIN_DIR", &bin)
        .env("DEMO_CLIENT", &client)
        .env("DEMO_OUT", out.path())
        .env("DEMO_TIMEOUT", "900")
        .output()
        .expect("running scripts/demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        let log = |n: &str| std::fs::read_to_string(keep.join(n)).unwrap_or_default();
        let tail = |s: String| s.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
        panic!(
            "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{}\nbootserver:\n{}\nserial:\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr),
            tail(log("bootserver.log")),
            tail(log("pc-serial.log"))
        );
    }
    // The demo's figures (power-on to desktop, typed Enter to desktop, memory), for the log.
    eprintln!("{stdout}");
    assert!(stdout.contains("its screen equals the VM's"), "{stdout}");
    assert!(stdout.contains("time to desktop"), "{stdout}");
    assert!(stdout.contains("the PC shows its login screen"), "{stdout}");
    assert!(stdout.contains("login to desktop"), "{stdout}");
    assert!(stdout.contains("the password is not in it"), "{stdout}");
    assert!(stdout.contains("the pool's VM"), "{stdout}");
    assert!(stdout.contains("typed 'echo hello from the PC > ~/typed.txt; cat ~/typed.txt'"), "{stdout}");
    assert!(stdout.contains("/home/user/typed.txt (the data disk, /dev/vdb) reads 'hello from the PC'"), "{stdout}");
    assert!(stdout.contains("memory in use in"), "{stdout}");
    let login = std::fs::read(out.path().join("demo-login.png")).unwrap();
    assert_eq!(&login[..8], b"\x89PNG\r\n\x1a\n");
    let png = std::fs::read(out.path().join("demo-desktop.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The compared screens: the desktop's own size on both sides.
    let pc = std::fs::read(out.path().join("pc.ppm")).unwrap();
    let vm = std::fs::read(out.path().join("vm.ppm")).unwrap();
    assert_eq!(ppm_size(&pc), (1280, 800));
    assert_eq!(ppm_size(&vm), (1280, 800));
    // And they are close pixel for pixel (the viewer may get lossy JPEG through the proxy).
    let st = Command::new(testkit::repo_root().join("scripts/screen"))
        .arg("same")
        .arg(out.path().join("pc.ppm"))
        .arg(out.path().join("vm.ppm"))
        .status()
        .unwrap();
    assert!(st.success(), "the saved PC screen differs from the VM's");
    // The saved screen is the one after typing: the terminal's text area (xterm at 40,40) holds
    // the command and its output, which the screen before typing did not.
    let st = Command::new(testkit::repo_root().join("scripts/screen"))
        .args([std::ffi::OsStr::new("changed"), keep.join("pc-before.ppm").as_os_str(), out.path().join("pc.ppm").as_os_str()])
        .args(["200", "50", "70", "750", "520"])
        .status()
        .unwrap();
    assert!(st.success(), "the saved PC screen shows no typed text");
}
