//! The TFTP service of the real `bootserver` binary against real clients (tftp-hpa, atftp,
//! curl) and hand-made datagrams, on loopback.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A `bootserver serve` child with TFTP only; killed by its PID when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(files: &[(&str, &[u8])]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&boot).unwrap();
        for (name, data) in files {
            std::fs::write(boot.join(name), data).unwrap();
        }
        std::fs::write(dir.path().join("secret"), b"outside the boot dir").unwrap();
        std::os::unix::fs::symlink("../secret", boot.join("escape")).unwrap();
        let port = free_udp_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bootserver"))
            .args(["serve", "--interface", "lo", "--address", "127.0.0.1", "--no-dhcp", "--no-broker", "--no-http"])
            .args(["--tftp-port", &port.to_string()])
            .arg("--boot-dir")
            .arg(&boot)
            .arg("--state-dir")
            .arg(&state)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting bootserver");
        let mut server = Server { child, port, dir };
        server.wait_ready();
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.out("server.log")).unwrap_or_default()
    }

    /// Waits until a request for a missing file gets its ERROR back.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bootserver exited with {status}:\n{}", self.log());
            }
            if let Some(reply) = exchange(self.addr(), &rrq(b"no-such-file", &[]), Duration::from_millis(300)) {
                assert_eq!(error_code(&reply), Some(1), "{reply:?}");
                return;
            }
        }
        panic!("bootserver did not answer within 60 s:\n{}", self.log());
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "bootserver died:\n{}", self.log());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Deterministic bytes that do not compress into a pattern a bug could hide behind.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

fn file_sha(path: &Path) -> Vec<u8> {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn rrq(name: &[u8], options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend_from_slice(name);
    v.extend_from_slice(b"\0octet\0");
    for (n, val) in options {
        v.extend_from_slice(n.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

fn error_code(p: &[u8]) -> Option<u16> {
    (p.len() >= 4 && p[..2] == [0, 5]).then(|| u16::from_be_bytes([p[2], p[3]]))
}

/// Sends one datagram from a fresh port and returns the first answer.
fn exchange(to: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(packet, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Runs a client with a time limit and asserts it succeeded.
fn run(cmd: &mut Command, server: &Server) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

fn with_limit(secs: u32, program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.arg(secs.to_string()).arg(program);
    c
}

fn tftp_hpa(s: &Server, mode: &str, remote: &str, local: &Path) -> Command {
    let mut c = with_limit(300, "tftp");
    c.args(["127.0.0.1", &s.port.to_string(), "-m", mode, "-c", "get", remote]).arg(local);
    c
}

fn atftp(s: &Server, remote: &str, local: &Path, options: &[&str]) -> Command {
    let mut c = with_limit(300, "atftp");
    for o in options {
        c.args(["--option", o]);
    }
    c.args(["-g", "-r", remote, "-l"]).arg(local).args(["127.0.0.1", &s.port.to_string()]);
    c
}

fn curl(s: &Server, remote: &str, local: &Path, blksize: u32) -> Command {
    let mut c = with_limit(300, "curl");
    c.args(["-sS", "--fail", "--tftp-blksize", &blksize.to_string(), "-o"])
        .arg(local)
        .arg(format!("tftp://127.0.0.1:{}/{remote}", s.port));
    c
}

#[test]
fn real_clients_fetch_matching_files() {
    let data = pseudo_random(3 * 1024 * 1024 + 77, 1);
    let text = b"first line\nsecond line\r\nbare cr\r end\n".repeat(50);
    let s = Server::start(&[("f.bin", &data), ("notes.txt", &text)]);
    let want = sha256(&data);

    run(&mut tftp_hpa(&s, "binary", "f.bin", &s.out("hpa.bin")), &s);
    assert_eq!(file_sha(&s.out("hpa.bin")), want, "tftp-hpa");

    let o = ["blksize 1468", "windowsize 16", "tsize 0"];
    run(&mut atftp(&s, "f.bin", &s.out("atftp.bin"), &o), &s);
    assert_eq!(file_sha(&s.out("atftp.bin")), want, "atftp windowsize 16");

    run(&mut curl(&s, "f.bin", &s.out("curl.bin"), 1024), &s);
    assert_eq!(file_sha(&s.out("curl.bin")), want, "curl blksize 1024");

    // netascii on the wire, decoded back by the client: the same text arrives.
    run(&mut tftp_hpa(&s, "netascii", "notes.txt", &s.out("notes.txt")), &s);
    assert_eq!(std::fs::read(s.out("notes.txt")).unwrap(), text, "tftp-hpa netascii");

    // The generated iPXE script is served by name as well.
    run(&mut curl(&s, "boot.ipxe", &s.out("boot.ipxe"), 512), &s);
    assert!(std::fs::read_to_string(s.out("boot.ipxe")).unwrap().starts_with("#!ipxe"));

    let log = s.log();
    assert!(log.contains("reads f.bin") && log.contains("MiB/s"), "{log}");
}

#[test]
fn block_numbers_roll_over_past_65535() {
    // 67 584 blocks of 512 bytes: the block number wraps once.
    let data = pseudo_random(33 * 1024 * 1024 + 100, 2);
    let s = Server::start(&[("big.bin", &data)]);
    run(&mut tftp_hpa(&s, "binary", "big.bin", &s.out("big.bin")), &s);
    assert_eq!(file_sha(&s.out("big.bin")), sha256(&data));
}

#[test]
fn options_window_and_partial_ack_on_the_wire() {
    let data = pseudo_random(10_000, 3);
    let s = Server::start(&[("w.bin", &data)]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let opts = [
        ("blksize", "1000"),
        ("windowsize", "4"),
        ("tsize", "0"),
        ("x-unknown", "1"),
        ("timeout", "0"),
    ];
    sock.send_to(&rrq(b"w.bin", &opts), s.addr()).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, tid) = sock.recv_from(&mut buf).unwrap();
    assert_ne!(tid.port(), s.port, "answers come from a new transfer ID");
    // Unknown and bad options are left out of the OACK.
    assert_eq!(&buf[..n], b"\0\x06blksize\x001000\0windowsize\x004\0tsize\x0010000\0");
    let mut recv_blocks = |sock: &UdpSocket, count: usize| -> Vec<(u16, Vec<u8>)> {
        (0..count)
            .map(|_| {
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                assert_eq!(from, tid);
                assert_eq!(buf[..2], [0, 3], "DATA expected: {:?}", &buf[..n.min(40)]);
                (u16::from_be_bytes([buf[2], buf[3]]), buf[4..n].to_vec())
            })
            .collect()
    };
    sock.send_to(b"\0\x04\0\0", tid).unwrap();
    let first = recv_blocks(&sock, 4);
    assert_eq!(first.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(first[0].1, data[..1000]);
    // Only blocks 1 and 2 "arrived": the server goes on from block 3.
    sock.send_to(b"\0\x04\0\x02", tid).unwrap();
    let second = recv_blocks(&sock, 4);
    assert_eq!(second.iter().map(|b| b.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(second[0].1, data[2000..3000]);
    sock.send_to(b"\0\x05\0\0done\0", tid).unwrap();
}

#[test]
fn hostile_requests_are_refused_and_service_survives() {
    let data = pseudo_random(200_000, 4);
    let mut s = Server::start(&[("ok.bin", &data)]);
    let wait = Duration::from_secs(10);
    for name in [&b"../secret"[..], b"/etc/passwd", b"escape", b"sub/../../secret", b"..\\secret"] {
        let reply = exchange(s.addr(), &rrq(name, &[]), wait).expect("an answer");
        assert_eq!(error_code(&reply), Some(2), "{}: {reply:?}", String::from_utf8_lossy(name));
    }
    let mut wrq = rrq(b"upload.bin", &[]);
    wrq[1] = 2;
    let reply = exchange(s.addr(), &wrq, wait).expect("an answer to WRQ");
    assert_eq!(error_code(&reply), Some(2), "{reply:?}");
    assert!(!s.out("boot/upload.bin").exists());
    // curl sees the refusal as a TFTP permission problem (exit code 69).
    let st = with_limit(60, "curl")
        .args(["-s", "--path-as-is", "-o", "/dev/null"])
        .arg(format!("tftp://127.0.0.1:{}/../secret", s.port))
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(69));

    // A burst of junk: truncated requests, stray ACK/DATA/ERROR/OACK, random bytes.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut fixed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1],
        b"\0\x01name".to_vec(),
        b"\0\x01name\0".to_vec(),
        b"\0\x01name\0octet\0blksize".to_vec(),
        b"\0\x01name\0octet\0blksize\0".to_vec(),
        b"\0\x01name\0bogus\0".to_vec(),
        b"\0\x03\0\x01data".to_vec(),
        b"\0\x04\0\x01".to_vec(),
        b"\0\x05\0\x01x\0".to_vec(),
        b"\0\x06tsize\0".to_vec(),
        vec![0xff; 60_000],
    ];
    for i in 0..1500u64 {
        let r = pseudo_random((i % 97) as usize, i + 10);
        fixed.push(r);
    }
    for p in &fixed {
        let _ = junk.send_to(p, s.addr());
    }
    std::thread::sleep(Duration::from_millis(300));
    s.assert_alive();
    run(&mut curl(&s, "ok.bin", &s.out("ok.bin"), 1468), &s);
    assert_eq!(file_sha(&s.out("ok.bin")), sha256(&data));
    let log = s.log();
    assert!(log.contains("refused \"../secret\""), "{log}");
    assert!(log.contains("read-only"), "{log}");
    assert!(log.contains("malformed"), "{log}");
}

#[test]
fn many_transfers_at_once() {
    let data = pseudo_random(4 * 1024 * 1024, 5);
    let s = Server::start(&[("c.bin", &data)]);
    let mut children = Vec::new();
    for i in 0..6 {
        let local = s.out(&format!("c{i}.bin"));
        let mut cmd = match i % 3 {
            0 => curl(&s, "c.bin", &local, 1468),
            1 => atftp(&s, "c.bin", &local, &["blksize 1468", "windowsize 8"]),
            _ => tftp_hpa(&s, "binary", "c.bin", &local),
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        children.push((local, child));
    }
    let want = sha256(&data);
    for (local, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}: {}", local.display(), String::from_utf8_lossy(&out.stderr));
        assert_eq!(file_sha(&local), want, "{}", local.display());
    }
}

/// A client process killed by its PID when dropped, so that a failed assertion leaves none.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The transfer port the server logged for a read of `name`, once the read has started.
fn transfer_port(s: &Server, name: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    let marker = format!("reads {name} (");
    while Instant::now() < deadline {
        let log = s.log();
        if let Some(line) = log.lines().find(|l| l.contains(&marker)) {
            let port = line.rsplit("from port ").next().and_then(|p| p.trim_end_matches(')').parse().ok());
            let port: u16 = port.unwrap_or_else(|| panic!("no transfer port in {line:?}"));
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the read of {name} did not start within 60 s:\n{}", s.log());
}

#[test]
fn strangers_on_a_transfer_port_get_unknown_transfer_id() {
    const UNKNOWN_TID: &[u8] = b"\0\x05\0\x05Unknown transfer ID\0";
    // Lock-step 512-byte blocks: tens of thousands of round trips, far longer than the probes.
    let data = pseudo_random(16 * 1024 * 1024, 6);
    let s = Server::start(&[("long.bin", &data)]);
    let local = s.out("long.bin");
    let cmd = tftp_hpa(&s, "binary", "long.bin", &local).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let mut client = Running(cmd.unwrap());
    let tid = transfer_port(&s, "long.bin");
    // Every stray is sent within a few milliseconds of the transfer's start, long before its
    // end; their answers wait in the sockets' buffers to be checked afterwards. The answers
    // come from the transfer's port, which is open only while the transfer runs.
    let started = Instant::now();
    // The wrong port on the peer's host, and another host: an ERROR first, then an ACK and a
    // DATA, of which only the last two are answered.
    let strangers: Vec<UdpSocket> =
        ["127.0.0.1", "127.0.0.2"].iter().map(|h| UdpSocket::bind((*h, 0)).unwrap()).collect();
    for stranger in &strangers {
        for probe in [UNKNOWN_TID, b"\0\x04\0\x01", b"\0\x03\0\x01stray"] {
            stranger.send_to(probe, tid).unwrap();
        }
    }
    // A flood from one more stranger: the rate limit holds the answers to all of them down
    // to a burst of 8 and then 4 a second.
    let flooder = UdpSocket::bind("127.0.0.3:0").unwrap();
    for _ in 0..500 {
        flooder.send_to(b"\0\x04\0\x02", tid).unwrap();
    }
    let mut buf = [0u8; 1024];
    for stranger in &strangers {
        let me = stranger.local_addr().unwrap();
        stranger.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for what in ["ACK", "DATA"] {
            let answer = stranger.recv_from(&mut buf);
            let (n, from) = answer.unwrap_or_else(|e| panic!("{me}: no answer to {what}: {e}\n{}", s.log()));
            assert_eq!(from, tid, "{me}: the answer to {what} comes from the transfer port");
            assert_eq!(&buf[..n], UNKNOWN_TID, "{me}: answer to {what}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for stranger in &strangers {
        stranger.set_nonblocking(true).unwrap();
        let extra = stranger.recv_from(&mut buf);
        assert!(extra.is_err(), "a third answer to {:?}, so the ERROR was answered: {extra:?}", stranger.local_addr());
    }
    flooder.set_nonblocking(true).unwrap();
    let mut flood_answers = 0;
    while flooder.recv_from(&mut buf).is_ok() {
        flood_answers += 1;
    }
    let allowed = 8 + 4 * started.elapsed().as_secs_f64().ceil() as usize;
    let answers = 4 + flood_answers;
    assert!(flood_answers >= 1 && answers <= allowed, "{answers} answers to 506 strays, at most {allowed} expected");
    let log = s.log();
    for stranger in &strangers {
        let me = stranger.local_addr().unwrap();
        assert!(log.contains(&format!("{me} sent ACK to the transfer port")), "{log}");
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = client.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let status = client.0.wait().unwrap();
    assert!(status.success(), "tftp-hpa failed ({status}): {stderr}\n{}", s.log());
    assert_eq!(file_sha(&local), sha256(&data), "the download went on undisturbed");
    assert!(s.log().contains("got long.bin"), "{}", s.log());
}

/// Sends UDP datagrams with a made-up source address (a raw socket writes the IPv4 header):
/// argv is source, source ports `first-last`, destination, destination port, then the payload
/// in hex.
const FORGE: &str = r#"
import socket, struct, sys
src, ports, dst, dport, payload = sys.argv[1:6]
first, last = map(int, ports.split("-"))
payload = bytes.fromhex(payload)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for sport in range(first, last + 1):
    udp = struct.pack("!HHHH", sport, int(dport), 8 + len(payload), 0) + payload
    # The kernel fills in the header checksum and the ID; a zero UDP checksum means none.
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"#;

/// Owns the forged address: binds ports `first-last` on it (so that no ICMP error cuts a
/// transfer short: the worst case for a reflector), prints `ready`, then counts for `secs`
/// seconds what arrives, and prints `port count` lines.
const VICTIM: &str = r#"
import select, socket, sys, time
addr, ports, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
first, last = map(int, ports.split("-"))
socks = {}
for p in range(first, last + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, p))
    socks[s.fileno()] = (s, p)
print("ready", flush=True)
counts = {}
end = time.time() + secs
poll = select.poll()
for fd in socks:
    poll.register(fd, select.POLLIN)
while time.time() < end:
    for fd, _ in poll.poll(max(1, int((end - time.time()) * 1000))):
        s, p = socks[fd]
        s.recv(70000)
        counts[p] = counts.get(p, 0) + 1
for p, n in sorted(counts.items()):
    print(p, n)
"#;

/// Sends one datagram (hex in argv) and prints the answer in hex, then an ERROR to end the
/// transfer it started.
const EXCHANGE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(70000)
print(data.hex())
s.sendto(b"\0\x05\0\0done\0", peer)
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn forged_requests_are_not_reflected_and_real_clients_still_fetch() {
    use testkit::{KillOnDrop, Lab};
    let lab = Lab::new(0, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let data = pseudo_random(300_000, 7);
    std::fs::write(boot.join("f.bin"), &data).unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _server = KillOnDrop::spawn(
        lab.cmd(env!("CARGO_BIN_EXE_bootserver"))
            .args(["serve", "--interface", "br0", "--no-dhcp", "--no-broker", "--no-http"])
            .arg("--boot-dir")
            .arg(&boot)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .unwrap();
    testkit::wait_for_text(&log_path, "tftp: serving", Duration::from_secs(30)).unwrap();
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ip = |k: u32, addr: &str| {
        let st = lab.host_cmd(k, "ip").args(["addr", "add", addr, "dev", "eth0"]).status().unwrap();
        assert!(st.success());
    };
    // Host 1 forges requests in the name of host 2, which owns the address and counts what
    // the server sends it.
    ip(1, "10.77.0.11/24");
    ip(2, "10.77.0.22/24");
    let (ports, forged) = ("4000-4099", 100);
    let mut victim = lab
        .host_cmd(2, "python3")
        .args(["-c", VICTIM, "10.77.0.22", ports, "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(victim.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let started = Instant::now();
    // One request from each of 100 ports, with the longest timeout a client may ask for.
    let request = rrq(b"f.bin", &[("timeout", "255"), ("tsize", "0")]);
    let st = lab
        .host_cmd(1, "python3")
        .args(["-c", FORGE, "10.77.0.22", ports, "10.77.0.1", "69", &hex(&request)])
        .status()
        .unwrap();
    assert!(st.success());

    // Meanwhile host 1 asks for the same timeout from its own address: it is left out of
    // the OACK. Then it fetches the file for real, with atftp and tftp-hpa.
    let oack = lab.host_cmd(1, "python3").args(["-c", EXCHANGE, "10.77.0.1", "69", &hex(&request)]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&oack.stdout).trim(), hex(b"\0\x06tsize\x00300000\0"), "{oack:?}");
    let fetch = Instant::now();
    let local = dir.path().join("atftp.bin");
    let st = lab
        .host_cmd(1, "timeout")
        .args(["60", "atftp", "--option", "timeout 255", "--option", "tsize 0", "-g", "-r", "f.bin", "-l"])
        .arg(&local)
        .arg("10.77.0.1")
        .status()
        .unwrap();
    let fetch = fetch.elapsed();
    assert!(st.success(), "atftp failed:\n{}", server_log());
    assert_eq!(file_sha(&local), sha256(&data));
    let local = dir.path().join("hpa.bin");
    let mut hpa = lab.host_cmd(1, "timeout");
    hpa.args(["60", "tftp", "10.77.0.1", "-m", "binary", "-c", "get", "f.bin"]).arg(&local);
    assert!(hpa.status().unwrap().success(), "tftp-hpa failed:\n{}", server_log());
    assert_eq!(file_sha(&local), sha256(&data));

    let mut counts = String::new();
    std::io::Read::read_to_string(&mut out, &mut counts).unwrap();
    assert!(victim.wait().unwrap().success());
    let counts: Vec<(u16, u32)> = counts
        .lines()
        .map(|l| {
            let (p, n) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let total: u32 = counts.iter().map(|c| c.1).sum();
    let log = server_log();
    // Every forged request reached the server at once; while their transfers wait for an ACK
    // that never comes, the host's cap of 8 transfers holds the rest back, and each of the 8
    // sends its first packet and one retransmission (the OACK: the timeout was refused, tsize
    // taken). Before these limits, 100 transfers sent 7 packets each.
    assert!(counts.iter().all(|&(_, n)| n <= 2), "more than one retransmission to a port: {counts:?}\n{log}");
    assert!(counts.len() <= 8 && total <= 16, "{total} packets to {} ports: {counts:?}\n{log}", counts.len());
    assert!(total >= 1, "the forged requests never arrived:\n{log}");
    assert!(log.contains("dropped a request from 10.77.0.22"), "{log}");
    assert!(log.contains("its address may be forged"), "{log}");
    eprintln!(
        "{forged} forged requests: {total} packets to the forged address over {:.1} s; real fetch {:.2} s",
        started.elapsed().as_secs_f64(),
        fetch.as_secs_f64()
    );
}
