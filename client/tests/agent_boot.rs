//! A QEMU PC network-boots (its PXE ROM, our boot server's DHCP and HTTP) into an image made by
//! `initramfs build` whose /init is the agent, with Debian's e1000 module and the CA that
//! `bootserver ca init` made. The agent announces itself over TLS (the broker takes nothing
//! else), and the broker must list it with its real MAC and RAM; `bootserver client MAC reboot` must reboot it and it must
//! announce again; a broker restart must not lose it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const MAC: &str = "52:54:00:4a:47:01";
const ADMIN: &str = "127.0.0.1:7001";

/// A workspace binary built beside this test's `thinclient` (scripts/setup builds them all).
fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_thinclient")).with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

/// The agent's image with the CA of `bootserver ca init` in the state dir the server will use.
fn build_image(dir: &Path) -> PathBuf {
    let (agent, out) = (Path::new(env!("CARGO_BIN_EXE_thinclient")), dir.join("agent.img"));
    testkit::agent_image(agent.parent().unwrap(), agent, &dir.join("state"), &out).expect("building the image");
    out
}

fn start_server(lab: &Lab, dir: &Path, image: &Path) -> KillOnDrop {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
    KillOnDrop::spawn(
        lab.cmd(sibling_bin("bootserver"))
            .arg("serve")
            .arg("--kernel")
            .arg(testkit::kernel().unwrap())
            .arg("--initrd")
            .arg(image)
            .arg("--boot-dir")
            .arg({
                // Kernel and image are given by absolute path: the boot dir only has to be a
                // folder of its own, apart from the state dir.
                let boot = dir.join("boot");
                std::fs::create_dir_all(&boot).unwrap();
                boot
            })
            .args(["--interface", "br0", "--cmdline", "console=ttyS0 tc.error_delay=5"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("BOOTSERVER_ADMIN", ADMIN)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .expect("bootserver")
}

/// The admin token `bootserver serve` made in its state dir.
fn token_file(dir: &Path) -> std::path::PathBuf {
    dir.join("state").join("admin.token")
}

/// `bootserver clients --json`, parsed; None while the server is not answering.
fn clients(lab: &Lab, dir: &Path) -> Option<serde_json::Value> {
    let out = lab
        .cmd(sibling_bin("bootserver"))
        .args(["clients", "--json", "--admin", ADMIN, "--token-file"])
        .arg(token_file(dir))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn our_pc(lab: &Lab, dir: &Path) -> Option<serde_json::Value> {
    clients(lab, dir)?.as_array()?.iter().find(|c| c["mac"] == MAC).cloned()
}

/// Polls the registry until `pred` holds for our PC.
fn wait_pc(lab: &Lab, what: &str, timeout: Duration, dir: &Path, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pc) = our_pc(lab, dir) {
            if pred(&pc) {
                return pc;
            }
        }
        let panicked = std::fs::read_to_string(dir.join("serial.log")).is_ok_and(|s| s.contains("Kernel panic"));
        if panicked || Instant::now() > deadline {
            let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
            let server = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let tail = |s: &str| s.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
            panic!("{what}: not within {timeout:?}; registry {:?}\nserial:\n{}\nserver:\n{}", our_pc(lab, dir), tail(&serial), tail(&server));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn pc_boots_announces_reboots_on_command_and_survives_a_broker_restart() {
    let lab = Lab::with_subnet(1, 0, "10.81.0").expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let image = build_image(dir.path());
    let mut server = start_server(&lab, dir.path(), &image);

    let _qemu = KillOnDrop::spawn(
        lab.cmd("qemu-system-x86_64")
            .args(testkit::accel_args())
            .args(["-m", "256", "-boot", "n", "-display", "none", "-vga", "std"])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", &format!("e1000,netdev=n0,mac={MAC}")])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("serial.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("qemu");

    // Power-on to announce: PXE ROM, iPXE script over HTTP, kernel, agent (TCG is slow).
    let pc = wait_pc(&lab, "first announce", Duration::from_secs(300), dir.path(), |c| c["connected"] == true);
    let ram = pc["hardware"]["ram_bytes"].as_u64().unwrap();
    assert!((250 << 20..=256 << 20).contains(&ram), "RAM {ram} is not the PC's 256 MiB");
    assert_eq!(pc["boots"], 1);
    assert!(pc["address"].as_str().unwrap().starts_with("10.81.0."), "{pc}");
    let first_seen = pc["first_seen"].clone();
    let serial = std::fs::read_to_string(dir.path().join("serial.log")).unwrap();
    assert!(serial.contains("boot phase dhcp"), "agent log missing from the serial console");
    assert!(serial.contains("announced to the broker at 10.81.0.1:7000"), "no announce in the agent's log");

    // Reboot from the admin side: the PC goes away and announces a second boot.
    let st = lab
        .cmd(sibling_bin("bootserver"))
        .args(["client", MAC, "reboot", "--admin", ADMIN, "--token-file"])
        .arg(token_file(dir.path()))
        .status()
        .unwrap();
    assert!(st.success());
    let pc = wait_pc(&lab, "announce after reboot", Duration::from_secs(300), dir.path(), |c| {
        c["boots"] == 2 && c["connected"] == true
    });
    assert_eq!(pc["first_seen"], first_seen);

    // Broker restart: the registry keeps the PC and the agent reconnects as the same boot.
    server.stop(Duration::from_secs(5));
    let _server = start_server(&lab, dir.path(), &image);
    let pc = wait_pc(&lab, "reconnect after a broker restart", Duration::from_secs(120), dir.path(), |c| {
        c["connected"] == true
    });
    assert_eq!(pc["boots"], 2, "a reconnect counted as a new boot: {pc}");
    assert_eq!(pc["first_seen"], first_seen);

    // An unknown PC is refused by the admin command with a clear error.
    let out = lab
        .cmd(sibling_bin("bootserver"))
        .args(["client", "52:54:00:00:00:99", "poweroff", "--admin", ADMIN, "--token-file"])
        .arg(token_file(dir.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no client 52:54:00:00:00:99"));
}
