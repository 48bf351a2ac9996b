//! A hostile LAN host against the boot server's connection limits, in a lab, with the server
//! at 1024 open files (what a systemd service gets): idle connections by the thousand to HTTP,
//! the broker and the VNC proxy, a flood of agent statuses, and a hello whose agent version
//! forges a log line. Meanwhile a real client on another host is served (curl, an agent hello,
//! the proxy's greeting, TFTP), the state files are private, and the log shows the forgery
//! escaped. And `serve` refuses a boot dir that would hand out the system or its own state.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::agent::{encode, AgentMessage, BrokerMessage, Decoder, Hello, MacAddr, Status, ViewerState};
use testkit::{wait_for_text, KillOnDrop, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_bootserver");
const SUBNET: &str = "10.79.0";
const ATTACKER: u32 = 1;
const CLIENT: u32 = 2;

fn sh(mut c: Command) -> std::process::Output {
    c.stdin(Stdio::null()).output().expect("running a command")
}

fn address(lab: &Lab, k: u32, ip: &str) {
    let out = sh({
        let mut c = lab.host_cmd(k, "ip");
        c.args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        c
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The test process opens thousands of sockets itself.
fn raise_own_open_files() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

/// Opens up to `n` connections to `addr` and keeps them; the ones the server drops at once
/// are counted as refused.
fn hold(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => held.push(s),
            Err(_) => continue,
        }
    }
    // A refused connection is closed by the server right after accept: reading sees its end;
    // an admitted one has nothing to read yet (or the proxy's greeting).
    std::thread::sleep(Duration::from_millis(500));
    let refused = held
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 64];
            match (&**s).read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count();
    (held, refused)
}

fn hello(last: u8, agent_version: &str) -> Hello {
    Hello {
        version: proto::agent::PROTOCOL,
        mac: MacAddr([0x52, 0x54, 0, 0x79, 0, last]),
        ipv4: format!("{SUBNET}.{}", last).parse().unwrap(),
        cpu_model: "QEMU Virtual CPU".into(),
        cpu_count: 1,
        ram_bytes: 256 << 20,
        display_modes: Vec::new(),
        agent_version: agent_version.into(),
        boot_ms: 5000,
        boot_phases: Vec::new(),
        resume_token: None,
    }
}

/// Sends a hello and returns the broker's first answer.
fn announce(s: &mut TcpStream, h: Hello) -> Option<BrokerMessage> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&encode(&AgentMessage::Hello(h)).unwrap()).ok()?;
    let mut dec = Decoder::<BrokerMessage>::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(r) = dec.feed(&buf[..n]).into_iter().next() {
            return r.ok();
        }
    }
}

fn curl_from(lab: &Lab, k: u32, url: &str) -> (bool, Vec<u8>, Duration) {
    let t0 = Instant::now();
    let out = sh({
        let mut c = lab.host_cmd(k, "curl");
        c.args(["-sf", "-m", "20", "-o", "-", url]);
        c
    });
    (out.status.success(), out.stdout, t0.elapsed())
}

fn server(lab: &Lab, dir: &Path, name: &str, args: &[&str], config: &str) -> (KillOnDrop, std::path::PathBuf) {
    let boot = dir.join("boot");
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = KillOnDrop::spawn(
        lab.cmd("prlimit")
            .args(["--nofile=1024:1024", BIN, "serve", "--interface", "br0", "--no-dhcp", "--config"])
            .arg(&cfg)
            .arg("--boot-dir")
            .arg(&boot)
            .arg("--state-dir")
            .arg(dir.join(format!("{name}-state")))
            .args(["--kernel", "vmlinuz", "--initrd", "initrd.img"])
            // The attacks here speak the agent protocol in clear, and with made-up MACs; TLS
            // and the binding of hellos to addresses are tested elsewhere.
            .arg("--agent-plain-tcp")
            .arg("--no-hello-binding")
            .args(args)
            .env("BOOTSERVER_ADMIN", "127.0.0.1:7001")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    (child, log)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_host_holding_connections_and_flooding_statuses_leaves_the_others_served() {
    raise_own_open_files();
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let kernel: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(boot.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(boot.join("initrd.img"), b"initrd").unwrap();
    address(&lab, ATTACKER, &format!("{SUBNET}.2"));
    address(&lab, CLIENT, &format!("{SUBNET}.3"));
    let s = lab.server_addr();

    // The proxy needs a desktop host to start; this one never answers, which is fine here.
    let config = format!(
        r#"address = "{s}"
[pcs]
policy = "kiosk"

[desktops]
levels_mib = [256]
template = "desktop"
health_interval_secs = 60

[[desktops.hosts]]
name = "h1"
url = "https://127.0.0.1:9"
memory_mib = 512

[limits]
agent_messages_per_sec = 20
agent_message_burst = 40
registry_flush_ms = 200
"#
    );
    let (srv, log) = server(&lab, dir.path(), "main", &["--no-tftp"], &config);
    wait_for_text(&log, "admin API on", Duration::from_secs(20)).unwrap();
    wait_for_text(&log, "open files: limit 1024", Duration::from_secs(1)).unwrap();
    let http: SocketAddr = format!("{s}:8080").parse().unwrap();
    let broker: SocketAddr = format!("{s}:7000").parse().unwrap();
    let proxy: SocketAddr = format!("{s}:5900").parse().unwrap();

    let (ok, _, quiet) = curl_from(&lab, CLIENT, &format!("http://{s}:8080/vmlinuz"));
    assert!(ok, "curl failed on a quiet server");
    eprintln!("curl of 2 MB on a quiet server: {quiet:?}");

    // 1100 idle connections to each service: more than the server's open files.
    let t0 = Instant::now();
    let (idle, refused) = lab.on_host(ATTACKER, move || {
        let mut all = Vec::new();
        let mut refused = Vec::new();
        for addr in [http, broker, proxy] {
            let (held, r) = hold(addr, 1100);
            all.extend(held);
            refused.push(r);
        }
        (all, refused)
    });
    eprintln!("held {} connections, refused per service {refused:?}, in {:?}", idle.len(), t0.elapsed());
    // Per-peer caps: 16 HTTP, 4 broker, 8 proxy connections stay; the others were closed.
    for (r, cap) in refused.iter().zip([16, 4, 8]) {
        assert!(*r >= 1100 - cap - 5, "refused {refused:?}");
    }
    let fds = open_files(srv.id());
    assert!(fds < 1024 - 64, "the server holds {fds} open files");

    // The real client, from another host, meanwhile.
    let (ok, body, took) = curl_from(&lab, CLIENT, &format!("http://{s}:8080/vmlinuz"));
    assert!(ok && body == kernel, "curl failed during the attack");
    eprintln!("curl of 2 MB during the attack: {took:?}");
    let answer = lab.on_host(CLIENT, move || {
        let mut a = TcpStream::connect_timeout(&broker, Duration::from_secs(5)).unwrap();
        let answer = announce(&mut a, hello(3, "0.1.0"));
        let mut p = TcpStream::connect_timeout(&proxy, Duration::from_secs(5)).unwrap();
        p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut banner = [0u8; 12];
        p.read_exact(&mut banner).unwrap();
        assert_eq!(&banner, b"RFB 003.008\n");
        answer
    });
    assert!(matches!(answer, Some(BrokerMessage::Welcome(_))), "{answer:?}");

    // The held connections that were admitted are dropped once their handshake time is up.
    wait_for_text(&log, "sent nothing within", Duration::from_secs(20)).unwrap();
    wait_for_text(&log, "no complete RFB handshake within", Duration::from_secs(5)).unwrap();
    drop(idle);

    // A hello that forges a log line, then a flood of statuses on the same connection.
    let forged = "0.1.0\n[2026-01-01T00:00:00Z INFO  bootserver::admin] admin: Reboot for everyone";
    let flood = lab.on_host(ATTACKER, move || {
        let mut a = TcpStream::connect_timeout(&broker, Duration::from_secs(5)).unwrap();
        assert!(matches!(announce(&mut a, hello(2, forged)), Some(BrokerMessage::Welcome(_))));
        let frame = encode(&AgentMessage::Status(Status { viewer: ViewerState::Connected, error: None })).unwrap();
        let burst: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 1000).collect();
        a.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let writer = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut sent = 0;
            while t0.elapsed() < Duration::from_secs(4) && a.write_all(&burst).is_ok() {
                sent += 1000;
            }
            sent
        });
        writer
    });
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(3) {
        let (ok, body, took) = curl_from(&lab, CLIENT, &format!("http://{s}:8080/vmlinuz"));
        assert!(ok && body == kernel, "curl failed during the flood");
        worst = worst.max(took);
        let api = sh({
            let mut c = lab.cmd("curl");
            c.args(["-sf", "-m", "10", "-H", &testkit::admin_auth(&dir.path().join("main-state")).unwrap()]);
            c.arg("http://127.0.0.1:7001/api/clients");
            c
        });
        assert!(api.status.success(), "the admin API did not answer during the flood");
    }
    let sent = flood.join().unwrap();
    eprintln!("{sent} statuses sent; slowest curl during the flood {worst:?}");
    assert!(sent >= 1000, "the flood did not flood: {sent}");
    wait_for_text(&log, "dropping the excess", Duration::from_secs(10)).unwrap();
    // Kept up, the flood is cut off: its connection is closed.
    let text = wait_for_text(&log, "flooding: far over 20 messages a second", Duration::from_secs(10)).unwrap();

    // The forged line shows escaped, on the announce's own line.
    assert!(text.contains("agent 0.1.0\\n[2026-01-01T00:00:00Z INFO  bootserver::admin] admin: Reboot"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("[2026-01-01T00:00:00Z")), "a forged line got through");
    // Statuses beyond the rate were neither logged nor written one by one.
    let shown = text.lines().filter(|l| l.contains("52:54:00:79:00:02") && l.contains("viewer connected")).count();
    assert!(shown < 40 + 20 * 10, "{shown} statuses logged of {sent}");

    // The state is private.
    let state = dir.path().join("main-state");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for f in ["clients.sqlite", "sessions.sqlite", "boot.ipxe", "admin.token"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert!(!std::fs::read_to_string(&log).unwrap().contains("Too many open files"));
}

#[test]
fn at_the_open_files_budget_connections_are_refused_and_tftp_still_serves() {
    raise_own_open_files();
    let lab = Lab::with_subnet(0, 2, "10.80.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz"), vec![7u8; 300_000]).unwrap();
    std::fs::write(boot.join("initrd.img"), b"initrd").unwrap();
    address(&lab, ATTACKER, "10.80.0.2");
    address(&lab, CLIENT, "10.80.0.3");
    // No per-peer or per-service protection left: only the open-files budget holds.
    let config = "address = \"10.80.0.1\"\n[tftp]\nport = 69\n[limits.http]\nmax_connections = 5000\nmax_per_peer = 5000\n";
    let (srv, log) = server(&lab, dir.path(), "budget", &["--no-broker"], config);
    wait_for_text(&log, "http: serving", Duration::from_secs(20)).unwrap();
    let http: SocketAddr = "10.80.0.1:8080".parse().unwrap();
    let (idle, refused) = lab.on_host(ATTACKER, move || hold(http, 1100));
    eprintln!("held {}, refused {refused}", idle.len());
    assert!(refused > 100, "nothing was refused: {refused}");
    let text = wait_for_text(&log, "open files for connections are used up", Duration::from_secs(5)).unwrap();
    let fds = open_files(srv.id());
    assert!(fds <= 1024 - 64, "the server holds {fds} open files");
    // TFTP opens a socket and the file for the transfer: the reserve has them.
    let out = sh({
        let mut c = lab.host_cmd(CLIENT, "curl");
        c.args(["-sf", "-m", "20", "-o", "-", "tftp://10.80.0.1/vmlinuz"]);
        c
    });
    assert!(out.status.success() && out.stdout.len() == 300_000, "TFTP failed at the budget");
    assert!(!text.contains("Too many open files"));
    drop(idle);
}

#[test]
fn serve_refuses_a_boot_dir_that_would_expose_the_system_or_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--interface", "lo", "--address", "127.0.0.1", "--no-dhcp", "--no-tftp", "--no-broker"])
            .args(["--http-port", "1"])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let e = run(&["--state-dir", state]);
    assert!(e.contains("key `boot_dir`: set the folder"), "{e}");
    for sys in ["/", "/etc", "/usr/", "/var/../etc"] {
        let e = run(&["--boot-dir", sys, "--state-dir", state]);
        assert!(e.contains("key `boot_dir`") && e.contains("system folder"), "{sys}: {e}");
    }
    let here = dir.path().to_str().unwrap();
    let e = run(&["--boot-dir", here, "--state-dir", state]);
    assert!(e.contains("key `boot_dir`") && e.contains("holds the state dir"), "{e}");
    let e = run(&["--boot-dir", ".", "--state-dir", "state/../state"]);
    assert!(e.contains("holds the state dir"), "{e}");
    assert!(!dir.path().join("state").exists(), "a refused start created the state dir");
}
