//! Hostile peers against the NFS service, each from the lab's second host while the server runs
//! at 1024 open files: records and credentials with lengths that lie, another export's file
//! handles and forged ones, and connections held open by the hundred. After each, libnfs's
//! nfs-cat on the first host still reads the export, and the server's descriptors and CPU stay
//! bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{wait_for_text, KillOnDrop, Lab};

const SERVER: &str = "10.84.0.1";
const CLIENT: &str = "10.84.0.2";
const ATTACKER: &str = "10.84.0.3";

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("running a command")
}

fn peer_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nfs_hostile/peer.py")
}

/// peer.py on host `k`; its output, and whether it succeeded.
fn peer(lab: &Lab, k: u32, args: &[&str]) -> (bool, String) {
    let mut c = lab.host_cmd(k, "python3");
    c.arg(peer_py()).arg(SERVER).args(args);
    let o = run(c);
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text)
}

/// peer.py holding connections open from host 2 until the returned process is dropped.
fn hold(lab: &Lab, n: usize, mode: &str) -> (KillOnDrop, String) {
    let mut c = lab.host_cmd(2, "python3");
    c.arg(peer_py()).args([SERVER, "hold", &n.to_string(), mode]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut p = KillOnDrop::spawn(&mut c).unwrap();
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("held "), "holder said {line:?}");
    (p, line.trim().to_string())
}

/// The real client: nfs-cat of a file from host 1, how long it took, and what it read.
fn nfs_cat(lab: &Lab) -> (bool, Duration, Vec<u8>) {
    let mut c = lab.host_cmd(1, "timeout");
    c.args(["20", "nfs-cat", &format!("nfs://{SERVER}/client/dir/file")]);
    let t = Instant::now();
    let o = run(c);
    (o.status.success(), t.elapsed(), o.stdout)
}

struct Server {
    proc: KillOnDrop,
    log: PathBuf,
}

impl Server {
    fn start(lab: &Lab, dir: &Path, name: &str, nfs_keys: &str) -> Server {
        let cfg = dir.join(format!("{name}.toml"));
        let text = format!(
            "interface = \"br0\"\nboot_dir = \"{boot}\"\nstate_dir = \"{state}\"\n\n[nfs]\n{nfs_keys}\n\n\
             [[nfs.export]]\nname = \"/client\"\npath = \"{root}\"\nclients = [\"{CLIENT}/32\"]\n\n\
             [[nfs.export]]\nname = \"/pub\"\npath = \"{public}\"\nclients = [\"{ATTACKER}/32\"]\n",
            boot = dir.join("boot").display(),
            state = dir.join("state").display(),
            root = dir.join("root").display(),
            public = dir.join("pub").display(),
        );
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let proc = KillOnDrop::spawn(
            lab.cmd("prlimit")
                .args(["--nofile=1024:1024", "--"])
                .arg(env!("CARGO_BIN_EXE_bootserver"))
                .arg("serve")
                .arg("--config")
                .arg(&cfg)
                .args(["--no-dhcp", "--no-tftp", "--no-http", "--no-broker"])
                .env("RUST_LOG", "info")
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap();
        wait_for_text(&log, "nfs: exporting", Duration::from_secs(30)).unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", proc.id())).unwrap();
        let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        assert!(nofile.split_whitespace().any(|w| w == "1024"), "{nofile}");
        Server { proc, log }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.id())).unwrap().count()
    }

    /// User and system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // utime and stime, fields 14 and 15 of stat(5), in clock ticks.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 1000 / 100)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Host 2 holds `n` idle connections (one NULL call each, never a reply read) while the real
/// client reads; the server stays under `max_fds` descriptors.
fn hold_idle_while_reading(
    lab: &Lab,
    server: &Server,
    n: usize,
    max_fds: usize,
    check_client: &dyn Fn(&str) -> Duration,
    quiet: Duration,
) {
    // What the held connections cost, over what the other services hold already.
    let base = server.fds();
    let (holder, held) = hold(lab, n, "idle");
    // The holder's last connects may still be in the accept queue, and an evicted connection
    // is closed by its own task: the count settles within moments. Without the cap it would
    // stay at `n` over the base.
    let t0 = Instant::now();
    let mut fds = server.fds();
    while fds.saturating_sub(base) > max_fds && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        fds = server.fds();
    }
    assert!(fds.saturating_sub(base) <= max_fds, "{fds} descriptors open ({base} before) while host 2 {held}");
    let during = check_client(&format!("{n} idle connections held by one host"));
    eprintln!("{held} idle: server at {fds} descriptors; nfs-cat {during:?} (quiet {quiet:?})");
    drop(holder);
}

#[test]
fn hostile_peers_do_not_stop_the_nfs_service() {
    let lab = Lab::with_subnet(0, 2, "10.84.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["boot", "root/dir", "pub/dir"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(d.join("root/dir/file"), &content).unwrap();
    std::fs::write(d.join("pub/dir/file"), b"public").unwrap();
    for (k, addr) in [(1, CLIENT), (2, ATTACKER)] {
        let mut c = lab.host_cmd(k, "ip");
        c.args(["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        assert!(run(c).status.success());
    }
    let check_client = |what: &str| -> Duration {
        let (ok, took, data) = nfs_cat(&lab);
        assert!(ok && data == content, "the real client failed after {what} ({} bytes read)", data.len());
        eprintln!("nfs-cat after {what}: {took:?}");
        took
    };

    // Phase 1: default limits.
    let server = Server::start(&lab, d, "defaults", "");
    let quiet = check_client("nothing (quiet server)");
    let (ok, handle) = peer(&lab, 1, &["mount", "/client"]);
    assert!(ok, "{handle}");
    let handle = handle.trim().to_string();

    let (ok, out) = peer(&lab, 2, &["hostile"]);
    assert!(ok, "a malformed call did not close its connection:\n{out}\n{}", server.log());
    // The first is logged with its reason; the rest within 5 s are counted in the next line.
    let log = server.log();
    assert!(log.contains("record of 2147483647 bytes announced"), "{log}");
    check_client("malformed records");

    let (ok, out) = peer(&lab, 2, &["cross", "/pub", &handle]);
    assert!(ok, "a handle crossed exports:\n{out}");
    check_client("handles across exports");

    // Hundreds of connections from one host: it keeps at most its per-peer share.
    hold_idle_while_reading(&lab, &server, 600, 64, &check_client, quiet);
    drop(server);

    // Phase 2: caps raised past the descriptor limit, short timeouts. The handle key is kept
    // in the state dir, so the client's handle from before the restart still works.
    let server = Server::start(
        &lab,
        d,
        "raised",
        "max_connections = 4000\nmax_connections_per_peer = 4000\nhandshake_timeout = 3\nidle_timeout = 5",
    );
    let (ok, st) = peer(&lab, 1, &["getattr", &handle]);
    assert!(ok && st.trim() == "0", "handle refused after a restart: {st}");

    // Busy connections (half a record each) up to the limit: the server keeps a reserve of
    // descriptors and does not spin.
    let cpu0 = server.cpu();
    let (holder, held) = hold(&lab, 1200, "partial");
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let fds = server.fds();
    let cpu = server.cpu() - cpu0;
    // The reserve (an eighth of the limit) stays free, give or take a connection in flight.
    assert!(fds < 1024 - 64, "{fds} descriptors open while host 2 {held}:\n{}", server.log_tail());
    assert!(cpu < Duration::from_millis(1500), "{cpu:?} of CPU while holding {held}");
    // They never finish their call: the handshake timeout closes them and the client gets in.
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = loop {
        let (ok, _, data) = nfs_cat(&lab);
        if ok && data == content {
            break t.elapsed();
        }
        assert!(Instant::now() < deadline, "no service 15 s after {held} half-sent calls");
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{held} busy: {fds} descriptors, {cpu:?} CPU in the first 2 s, client served {back:?} after");
    drop(holder);

    // Idle connections up to the descriptor limit: each new connection displaces the one idle
    // longest, so the real client gets in while they are held.
    hold_idle_while_reading(&lab, &server, 1200, 1024 - 64, &check_client, quiet);
    check_client("the end of the attack");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
