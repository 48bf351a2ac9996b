//! End to end: a QEMU PC in the lab boots the image of scripts/images/nfsroot.toml, whose /init
//! is the static agent. The agent leases its address from our DHCP, mounts the client root
//! (scripts/build-client-root, with the SDL2 viewer in usr/bin) from our NFS export with the
//! kernel's NFSv3 client, announces itself to the broker, which starts a desktop VM on a real
//! `server-host` (scripts/build-desktop-template) and assigns it a session on the VNC proxy;
//! the agent then runs the root's dynamically linked viewer chrooted into the root, with SDL2
//! on KMS/DRM (bochs, `-vga std`, Mesa's software rasterizer). The PC's `screendump` must
//! equal the VM's screen (server-host's `/screen`, compared like scripts/demo does).
//!
//! `tc.viewer=nfs` keeps the agent from falling back to its fbdev viewer, which would show the
//! same screen: the test must see the SDL2 viewer do it.
//!
//! The same rig, with a second lab host, shows that a spoofed hello is refused: while the PC
//! shows its desktop, the host (its own lease from our DHCP) sends the broker a hello with the
//! PC's MAC over TLS, trusting the CA as anyone who reads a boot image can.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const SUBNET: &str = "10.83.0";
const MAC: &str = "52:54:00:4e:46:01";
/// The desktop template's screen size; the PC's console gets the same (`video=`).
const MODE: &str = "1280x800";
const ADMIN: &str = "127.0.0.1:7001";
const HOST_API: &str = "https://127.0.0.1:8470";

fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_bootserver")).with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

/// Runs one of the project's (cached) build scripts; returns the last line it printed.
fn script(name: &str) -> String {
    let out = Command::new(testkit::repo_root().join("scripts").join(name))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(out.status.success(), "scripts/{name} failed");
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
}

/// The client root with this build's SDL2 viewer at usr/bin/thinclient: a hard-linked copy of
/// the cached root (instant, and the cache stays as scripts/build-client-root made it), in a
/// folder beside it so that the links stay on one file system.
fn client_root_with_viewer() -> tempfile::TempDir {
    let cached = PathBuf::from(script("build-client-root"));
    let dir = tempfile::Builder::new()
        .prefix("client-root-test-")
        .tempdir_in(cached.parent().unwrap())
        .unwrap();
    let st = Command::new("cp").arg("-al").arg(format!("{}/.", cached.display())).arg(dir.path()).status().unwrap();
    assert!(st.success(), "cp -al {} failed", cached.display());
    let viewer = dir.path().join("usr/bin/thinclient");
    let _ = std::fs::remove_file(&viewer);
    std::fs::copy(sibling_bin("thinclient"), &viewer).unwrap();
    dir
}

/// The boot image exactly as scripts/images/nfsroot.toml describes it (the static agent that
/// scripts/build-client makes, the NIC, display and NFS modules), with the CA that the running
/// boot server made in its state dir.
fn build_image(dir: &Path) -> PathBuf {
    let agent = testkit::repo_root().join("target/x86_64-unknown-linux-gnu/release/thinclient");
    assert!(agent.exists(), "{} is missing: run scripts/build-client (scripts/setup does)", agent.display());
    let ca = dir.join("bootserver/ca/ca.pem");
    assert!(ca.exists(), "the boot server made no CA in {}", ca.display());
    let out = dir.join("nfsroot.img");
    let st = Command::new(sibling_bin("initramfs"))
        .args(["build", "--config"])
        .arg(testkit::repo_root().join("scripts/images/nfsroot.toml"))
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .status()
        .expect("running initramfs build");
    assert!(st.success(), "initramfs build failed");
    out
}

/// QEMU's screendump (binary PPM) through the human monitor, into `out`.
fn screendump(monitor: &Path, out: &Path) -> bool {
    let _ = std::fs::remove_file(out);
    let Ok(mut m) = UnixStream::connect(monitor) else { return false };
    if writeln!(m, "screendump {}", out.display()).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        // Complete once the header's size matches the file's.
        if std::fs::read(out).is_ok_and(|d| ppm_complete(&d)) {
            return true;
        }
    }
    false
}

fn ppm_complete(d: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&d[..d.len().min(32)]).into_owned();
    let f: Vec<&str> = head.split_ascii_whitespace().take(4).collect();
    let [magic, w, h, max] = f[..] else { return false };
    let (Ok(w), Ok(h)) = (w.parse::<usize>(), h.parse::<usize>()) else { return false };
    let header = [magic, &w.to_string(), &h.to_string(), max].iter().map(|s| s.len() + 1).sum::<usize>();
    magic == "P6" && d.len() == header + w * h * 3
}

/// The boot server (DHCP, NFS, broker, VNC proxy) and a `server-host` with the desktop
/// template, in a lab with one tap for the PC and `hosts` other hosts.
struct Rig {
    dir: tempfile::TempDir,
    pki: testkit::HostPki,
    _root: tempfile::TempDir,
    _server: KillOnDrop,
    _host: KillOnDrop,
    lab: Lab,
}

impl Rig {
    fn new(hosts: u32) -> Rig {
        script("build-desktop-template");
        let templates = testkit::cache_dir().join("templates");
        let root = client_root_with_viewer();
        let lab = Lab::with_subnet(1, hosts, SUBNET).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // The PC boots by QEMU's -kernel: the boot dir serves nothing, but it must not hold
        // the state dir.
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        let pki = testkit::host_pki(
            Path::new(env!("CARGO_BIN_EXE_bootserver")),
            &dir.path().join("bootserver"),
            "h1",
            &["127.0.0.1"],
        )
        .unwrap();

        std::fs::write(
            dir.path().join("server-host.toml"),
            testkit::server_host_config(&pki.tls_dir, "127.0.0.1:8470", &dir.path().join("server-host"), &templates),
        )
        .unwrap();
        let host = KillOnDrop::spawn(
            lab.cmd(sibling_bin("server-host"))
                .args(["serve", "--config"])
                .arg(dir.path().join("server-host.toml"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("server-host.log")).unwrap()),
        )
        .unwrap();

        let s = lab.server_addr();
        std::fs::write(
            dir.path().join("bootserver.toml"),
            format!(
                r#"interface = "br0"
address = "{s}"
range = "{SUBNET}.100-{SUBNET}.150"
boot_dir = "{d}/boot"
state_dir = "{d}/bootserver"

[nfs]
port = 2049

[[nfs.export]]
name = "/client"
path = "{}"

# The PC gets its desktop right after its hello, with no login.
[pcs]
policy = "kiosk"

[desktops]
levels_mib = [256, 128]
template = "desktop"
health_interval_secs = 1

[[desktops.hosts]]
name = "h1"
url = "{HOST_API}"
memory_mib = 512
"#,
                root.path().display()
            ),
        )
        .unwrap();
        let log = dir.path().join("server.log");
        let server = KillOnDrop::spawn(
            lab.cmd(env!("CARGO_BIN_EXE_bootserver"))
                .args(["serve", "--no-tftp", "--no-http", "--config"])
                .arg(dir.path().join("bootserver.toml"))
                .env("BOOTSERVER_ADMIN", ADMIN)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap();
        let rig = Rig { dir, pki, _root: root, _server: server, _host: host, lab };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !rig.get(&format!("http://{ADMIN}/api/hosts"), false).is_some_and(|b| b.contains("\"up\":true")) {
            assert!(Instant::now() < deadline, "the broker never saw server-host up:\n{}", rig.logs());
            std::thread::sleep(Duration::from_millis(300));
        }
        testkit::wait_for_text(&log, "nfs: exporting", Duration::from_secs(30)).unwrap();
        rig
    }

    /// GET through curl inside the lab, as the broker (its client certificate) to server-host
    /// if `auth`, else with the admin API's token.
    fn curl(&self, url: &str, auth: bool) -> Command {
        let mut cmd = self.lab.cmd("curl");
        cmd.args(["-sf", "-m", "30"]);
        if auth {
            cmd.args(self.pki.curl_args());
        } else if let Ok(h) = testkit::admin_auth(&self.dir.path().join("bootserver")) {
            cmd.arg("-H").arg(h);
        }
        cmd.arg(url).stderr(Stdio::null());
        cmd
    }

    /// The body, or None on any failure.
    fn get(&self, url: &str, auth: bool) -> Option<String> {
        let out = self.curl(url, auth).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the PC's screen equals its desktop VM's now (both saved in the work folder).
    fn screens_match(&self, monitor: &Path) -> bool {
        let Some(vm) = self.vm() else { return false };
        let (pc_shot, vm_shot) = (self.dir.path().join("pc.ppm"), self.dir.path().join("vm.ppm"));
        let vm_ok = self.curl(&format!("{HOST_API}/v1/vms/{vm}/screen"), true).arg("-o").arg(&vm_shot).status();
        vm_ok.is_ok_and(|s| s.success())
            && screendump(monitor, &pc_shot)
            && Command::new(testkit::repo_root().join("scripts/screen"))
                .arg("same")
                .arg(&pc_shot)
                .arg(&vm_shot)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let tail = |s: String| s.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect::<String>();
        format!(
            "PC serial:\n{}\nboot server:\n{}\nserver-host:\n{}",
            tail(read("serial.log")),
            tail(read("server.log")),
            tail(read("server-host.log"))
        )
    }

    /// The desktop VM the broker started for the PC, once there is one.
    fn vm(&self) -> Option<String> {
        let body = self.get(&format!("http://{ADMIN}/api/vms"), false)?;
        let vms: serde_json::Value = serde_json::from_str(&body).ok()?;
        vms.as_array()?.first()?["vm"].as_str().map(str::to_string)
    }

    /// Powers on the PC with `tc_keys` on its kernel command line and waits until its screen
    /// equals its desktop VM's; returns the time from power-on and the PC's serial log.
    /// Panics with every log on failure.
    fn boot(&self, image: &Path, tc_keys: &str, timeout: Duration) -> (Duration, String) {
        let (mut pc, took) = self.power_on(image, tc_keys, timeout);
        pc.stop(Duration::from_secs(1));
        (took, std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default())
    }

    /// [`Rig::boot`], leaving the PC running: its QEMU and the time from power-on.
    fn power_on(&self, image: &Path, tc_keys: &str, timeout: Duration) -> (KillOnDrop, Duration) {
        let serial = self.dir.path().join("serial.log");
        let pmon = self.dir.path().join("pc.mon");
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_file(&pmon);
        let s = self.lab.server_addr();
        let append = format!("console=ttyS0 panic=-1 video={MODE} tc.broker={s}:7000 tc.error_delay=5 {tc_keys}");
        let mut cmd = self.lab.cmd("qemu-system-x86_64");
        cmd.args(testkit::accel_args())
            .args(["-m", "768", "-nodefaults", "-display", "none", "-vga", "std", "-no-reboot"])
            .arg("-kernel")
            .arg(testkit::kernel().unwrap())
            .arg("-initrd")
            .arg(image)
            .args(["-append", &append])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", &format!("e1000,netdev=n0,mac={MAC}")])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", pmon.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let pc = KillOnDrop::spawn(&mut cmd).unwrap();
        loop {
            if self.screens_match(&pmon) {
                break;
            }
            let serial_text = std::fs::read_to_string(&serial).unwrap_or_default();
            assert!(!serial_text.contains("Kernel panic"), "the PC's kernel panicked:\n{}", self.logs());
            // The agent's error screen: with -no-reboot the PC is gone after it.
            assert!(!serial_text.contains("This PC cannot start"), "the agent gave up:\n{}", self.logs());
            assert!(t0.elapsed() < timeout, "the PC's screen never matched its VM's within {timeout:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_secs(1));
        }
        (pc, t0.elapsed())
    }
}

#[test]
fn agent_runs_the_sdl_viewer_from_the_nfs_root() {
    let rig = Rig::new(0);
    let image = build_image(rig.dir.path());
    let s = rig.lab.server_addr();
    // Mesa's software rasterizer under TCG is slow to draw its first frame: minutes allowed.
    let (took, serial) = rig.boot(&image, &format!("tc.nfsroot={s}:/client tc.viewer=nfs"), Duration::from_secs(900));
    assert!(serial.contains("boot phase nfsroot"), "the agent did not mount the NFS root:\n{serial}");
    assert!(serial.contains("viewer: the SDL2 viewer of the NFS root"), "{serial}");
    assert!(serial.contains("SDL video driver: KMSDRM"), "the viewer did not run SDL on KMS/DRM:\n{serial}");
    assert!(!serial.contains("switching to the built-in"), "{serial}");
    // The boot-stage report counts what the PC read through its NFS mount (the viewer and its
    // libraries: megabytes), reported once a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let nfs = loop {
        let stages = rig.json(&format!("boots/{MAC}"));
        let mount = stages["current"].as_array().into_iter().flatten().find(|s| s["details"]["protocol"] == "nfs").cloned();
        if let Some(m) = mount.filter(|m| m["details"]["bytes"].as_u64().is_some_and(|b| b > 1_000_000)) {
            break m;
        }
        assert!(Instant::now() < deadline, "no NFS mount with the bytes read in the PC's boot stages: {stages:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("NFS mount stage: {}", nfs["details"]);
    for l in serial.lines().filter(|l| l.contains("SDL ") || l.contains("boot phase")) {
        eprintln!("{l}");
    }
    eprintln!("power-on to desktop: {:.1} s", took.as_secs_f64());
}

/// Power-on to desktop with the same image: the agent running the NFS root's SDL2 viewer
/// against the agent's own fbdev viewer (no NFS root). The desktop VM is started by the first
/// boot and kept for the PC (same MAC), so only the best of `TC_ROUNDS` (default 2) counts.
/// A benchmark, not a test: `scripts/bench/nfsroot-boot` runs it.
#[test]
#[ignore]
fn boot_time_nfs_sdl_against_fbdev() {
    let rounds: usize = std::env::var("TC_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    let rig = Rig::new(0);
    let image = build_image(rig.dir.path());
    let s = rig.lab.server_addr();
    let variants = [
        ("NFS root, SDL2 on KMS/DRM (Mesa)", format!("tc.nfsroot={s}:/client tc.viewer=nfs")),
        ("built-in fbdev viewer, no NFS", "tc.viewer=builtin".to_string()),
    ];
    let mut best = [f64::MAX; 2];
    let mut all = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, (_, keys)) in variants.iter().enumerate() {
            let (took, _) = rig.boot(&image, keys, Duration::from_secs(900));
            let secs = took.as_secs_f64();
            best[i] = best[i].min(secs);
            all[i].push(format!("{secs:.1}"));
        }
    }
    println!("power-on to desktop ({} accel), QEMU start to the PC's screen equal to its VM's", testkit::accel());
    println!("{:<34} {:>8}  runs", "viewer", "best s");
    for (i, (name, _)) in variants.iter().enumerate() {
        println!("{:<34} {:>8.1}  {}", name, best[i], all[i].join(" "));
    }
    println!("NFS+SDL2 takes {:.2}x the fbdev viewer's time", best[0] / best[1]);
}

/// What the boot server says of the PC: its desktop (admin API), its proxy session without the
/// counters that move by themselves, its registry row without its times, and the SHA-256 of its
/// token in the session store.
#[derive(Debug, PartialEq)]
struct PcState {
    desktop: serde_json::Value,
    session: (serde_json::Value, serde_json::Value, serde_json::Value),
    client: (serde_json::Value, serde_json::Value, serde_json::Value),
    token_sha256: String,
    clients_known: usize,
}

impl Rig {
    fn json(&self, path: &str) -> serde_json::Value {
        let body = self.get(&format!("http://{ADMIN}/api/{path}"), false).unwrap_or_else(|| panic!("GET /api/{path}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/{path}: {e}: {body}"))
    }

    fn pc_state(&self) -> PcState {
        let vms = self.json("vms");
        let desktop = vms.as_array().unwrap().iter().find(|d| d["user"] == MAC).cloned().expect("the PC's desktop");
        let sessions = self.json("sessions");
        let s = sessions.as_array().unwrap().iter().find(|s| s["label"] == MAC).cloned().expect("the PC's session");
        let c = self.json(&format!("clients/{MAC}"));
        let db = rusqlite::Connection::open_with_flags(
            self.dir.path().join("bootserver/sessions.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let token_sha256 =
            db.query_row("SELECT token_sha256 FROM sessions WHERE user = ?1", [MAC], |r| r.get(0)).unwrap();
        PcState {
            desktop,
            session: (s["backend"].clone(), s["viewer_connected"].clone(), s["viewer_connections"].clone()),
            client: (c["address"].clone(), c["boots"].clone(), c["state"].clone()),
            token_sha256,
            clients_known: self.json("clients").as_array().map_or(0, |a| a.len()),
        }
    }
}

/// Sends `hello` to the broker over TLS (trusting the CA at `ca`) and reads until the broker
/// closes: every message it sent, and the time from the hello to its first answer.
fn send_hello(broker: std::net::SocketAddr, ca: &Path, hello: proto::agent::Hello) -> (Vec<proto::agent::BrokerMessage>, Duration) {
    use proto::agent::{encode, AgentMessage, BrokerMessage, Decoder};
    use proto::tls::rustls::{ClientConnection, StreamOwned};
    use std::io::Read;
    let tls = proto::tls::client_config(ca).unwrap();
    let tcp = std::net::TcpStream::connect_timeout(&broker, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(tls, proto::tls::server_name(broker.ip())).unwrap();
    let mut link = StreamOwned::new(conn, tcp);
    while link.conn.is_handshaking() {
        link.conn.complete_io(&mut link.sock).expect("TLS handshake with the broker");
    }
    let t0 = Instant::now();
    link.write_all(&encode(&AgentMessage::Hello(hello)).unwrap()).unwrap();
    link.flush().unwrap();
    let (mut dec, mut got, mut first) = (Decoder::<BrokerMessage>::new(), Vec::new(), None);
    let mut buf = [0u8; 4096];
    // The end of the stream, clean or not, is the broker hanging up.
    while let Ok(n @ 1..) = link.read(&mut buf) {
        got.extend(dec.feed(&buf[..n]).into_iter().filter_map(Result::ok));
        first = first.or_else(|| (!got.is_empty()).then(|| t0.elapsed()));
    }
    (got, first.unwrap_or_default())
}

#[test]
fn a_spoofed_hello_from_another_host_is_refused_and_the_pc_keeps_its_desktop() {
    let t_test = Instant::now();
    let rig = Rig::new(1);
    let image = build_image(rig.dir.path());
    let (_pc, took) = rig.power_on(&image, "tc.viewer=builtin", Duration::from_secs(600));
    eprintln!("power-on to desktop: {:.1} s", took.as_secs_f64());
    let before = rig.pc_state();
    assert_eq!((&before.session.1, &before.session.2), (&true.into(), &1.into()), "{before:?}");

    // The attacker: a laptop on the same LAN with its own lease from our DHCP.
    let script = rig.dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\"; echo \"bound $ip\" ;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = rig.lab.host_cmd(1, "udhcpc").args(["-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s"]).arg(&script).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let attacker_ip = text.lines().find_map(|l| l.strip_prefix("bound ")).unwrap_or_else(|| panic!("udhcpc: {text}")).to_string();
    let attacker_mac = String::from_utf8(rig.lab.host_cmd(1, "cat").arg("/sys/class/net/eth0/address").output().unwrap().stdout).unwrap().trim().to_string();

    // Its hello carries the PC's MAC; everything else is what an agent would send.
    let hello = proto::agent::Hello { ram_bytes: 768 << 20, ..testkit::agent_hello(MAC, &attacker_ip) };
    let broker: std::net::SocketAddr = format!("{}:7000", rig.lab.server_addr()).parse().unwrap();
    let ca = rig.dir.path().join("bootserver/ca/ca.pem");
    let (got, answered_in) = rig.lab.on_host(1, move || send_hello(broker, &ca, hello));
    match got.as_slice() {
        [proto::agent::BrokerMessage::Refused { reason }] => {
            assert!(reason.contains(&attacker_ip), "{reason}");
            eprintln!("refused in {:.1} ms: {reason}", answered_in.as_secs_f64() * 1000.0);
        }
        other => panic!("the spoofed hello got {other:?}\n{}", rig.logs()),
    }
    let log = rig.dir.path().join("server.log");
    let logged = testkit::wait_for_text(&log, "hello refused", Duration::from_secs(5)).unwrap();
    let line = logged.lines().find(|l| l.contains("hello refused")).unwrap();
    assert!(
        line.contains(&format!("hello claims {MAC}, but {attacker_mac} holds the DHCP lease of {attacker_ip}")),
        "{line}"
    );
    if let Some(l) = logged.lines().find(|l| l.contains(&format!("client {MAC} announced"))) {
        eprintln!("{}", &l[l.find("client ").unwrap_or(0)..]);
    }

    // The PC: same desktop, same token, same registry row, its viewer on its first connection,
    // and its screen still its VM's.
    let after = rig.pc_state();
    assert_eq!(after, before);
    assert!(rig.screens_match(&rig.dir.path().join("pc.mon")), "the PC's screen no longer shows its VM:\n{}", rig.logs());
    eprintln!("done in {:.1} s", t_test.elapsed().as_secs_f64());
}
