//! The DHCP service against real clients (busybox udhcpc, ISC dhclient), dnsmasq as the LAN's
//! DHCP server for proxyDHCP, and crafted PXE packets, all inside a lab made for the test.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smoltcp::wire::DhcpPacket;
use testkit::{wait_for_text, KillOnDrop, Lab};

const BOOTSERVER: &str = env!("CARGO_BIN_EXE_bootserver");

struct Bootserver {
    proc: KillOnDrop,
    log: PathBuf,
}

/// Starts `bootserver serve` on the lab's bridge with the config text `config` (appended to
/// the interface) and waits until its DHCP service is up.
fn start(lab: &Lab, dir: &Path, config: &str, extra: &[&str]) -> Bootserver {
    let cfg = dir.join("bootserver.toml");
    std::fs::write(&cfg, config).unwrap();
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let log = dir.join(format!("bootserver-{}.log", log_seq()));
    let out = std::fs::File::create(&log).unwrap();
    let proc = KillOnDrop::spawn(
        lab.cmd(BOOTSERVER)
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .args(["--interface", "br0", "--no-tftp", "--no-http"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--boot-dir")
            .arg(&boot)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
    .unwrap();
    wait_for_text(&log, "dhcp: ", Duration::from_secs(30)).unwrap();
    Bootserver { proc, log }
}

fn log_seq() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Bootserver {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let st = self.proc.stop(Duration::from_secs(10));
        let log = self.log();
        assert!(st.is_some_and(|s| s.success()), "bootserver did not stop cleanly ({st:?}):\n{log}");
        log
    }

    fn assert_alive(&mut self) {
        assert!(matches!(self.proc.0.try_wait(), Ok(None)), "bootserver died:\n{}", self.log());
    }
}

/// A udhcpc event script that prints what udhcpc hands it and configures the address.
fn udhcpc_script(dir: &Path) -> PathBuf {
    let p = dir.join("udhcpc.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\n\
         echo \"event=$1 ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain lease=$lease serverid=$serverid hostname=$hostname boot_file=$boot_file siaddr=$siaddr\"\n\
         case \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;; deconfig) ip addr flush dev \"$interface\" ;; esac\n",
    )
    .unwrap();
    chmod_x(&p);
    p
}

fn chmod_x(p: &Path) {
    let mut perm = std::fs::metadata(p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(p, perm).unwrap();
}

/// `key=value` pairs of the last line of `text` that starts with `prefix`.
fn fields(text: &str, prefix: &str) -> HashMap<String, String> {
    let line = text.lines().rfind(|l| l.starts_with(prefix));
    let line = line.unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `udhcpc -q` in host `k` until it has a lease; returns its bound event.
fn udhcpc(lab: &Lab, k: u32, script: &Path, extra: &[&str]) -> HashMap<String, String> {
    let out = lab
        .host_cmd(k, "udhcpc")
        .args(["-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s"])
        .arg(script)
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "udhcpc in host {k} failed:\n{text}");
    fields(&text, "event=bound")
}

/// Starts udhcpc in host `k` to stay bound (and renew), its output in `out`.
fn udhcpc_foreground(lab: &Lab, k: u32, script: &Path, out: &Path) -> KillOnDrop {
    let f = std::fs::File::create(out).unwrap();
    KillOnDrop::spawn(
        lab.host_cmd(k, "udhcpc")
            .args(["-i", "eth0", "-f", "-t", "5", "-T", "2", "-s"])
            .arg(script)
            .stdout(f.try_clone().unwrap())
            .stderr(f),
    )
    .unwrap()
}

/// Runs ISC dhclient in host `k` in the foreground until its script reports `reason`, then
/// stops it; returns what the script saw.
fn dhclient(lab: &Lab, k: u32, dir: &Path, reasons: &[&str]) -> HashMap<String, String> {
    let out = dir.join(format!("dhclient-h{k}.out"));
    let _ = std::fs::remove_file(&out);
    let script = dir.join("dhclient.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"reason=$reason ip=$new_ip_address mask=$new_subnet_mask routers=$new_routers \
             dns=$new_domain_name_servers domain=$new_domain_name lease=$new_dhcp_lease_time\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    chmod_x(&script);
    let mut proc = KillOnDrop::spawn(
        lab.host_cmd(k, "dhclient")
            .args(["-d", "-1", "-v", "-sf"])
            .arg(&script)
            .arg("-lf")
            .arg(dir.join(format!("dhclient-h{k}.leases")))
            .arg("-pf")
            .arg(dir.join(format!("dhclient-h{k}.pid")))
            .arg("eth0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(r) = reasons.iter().find(|r| text.contains(&format!("reason={r} "))) {
            proc.stop(Duration::from_secs(5));
            return fields(&text, &format!("reason={r} "));
        }
        assert!(Instant::now() < deadline, "dhclient in host {k} got no lease:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn in_range(ip: &str, first: u8, last: u8) -> bool {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let o = ip.octets();
    o[..3] == [10, 77, 0] && (first..=last).contains(&o[3])
}

/// Runs `f` on a thread that has entered network namespace `ns`, so that sockets it opens live
/// there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace")
}

fn host_ns(lab: &Lab, k: u32) -> String {
    format!("{}-h{k}", lab.name)
}

fn sh(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?} failed: {st}");
}

#[test]
fn real_clients_reservation_release_decline_restart_and_garbage() {
    let lab = Lab::new(0, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No ping check: the squatter below is for the clients' own ARP check and DECLINE.
    let config = "[dhcp]\nrouter = \"10.77.0.1\"\ndns = [\"10.77.0.53\"]\ndomain = \"lab.test\"\n\
                  router_advertisement = false\nping_check = false\n\
                  [[dhcp.reservation]]\nmac = \"02:00:00:00:00:42\"\naddress = \"10.77.0.42\"\nhostname = \"pc42\"\n";
    let full_config = format!("range = \"10.77.0.100-10.77.0.120\"\n{config}");
    let mut server = start(&lab, d, &full_config, &[]);
    let script = udhcpc_script(d);

    // Host 5 squats on the first pool address and throws garbage at the server.
    sh(lab.host_cmd(5, "ip").args(["addr", "add", "10.77.0.100/24", "dev", "eth0"]));
    in_netns(&host_ns(&lab, 5), || {
        let s = UdpSocket::bind("10.77.0.100:0").unwrap();
        let mut truncated = vec![1u8, 1, 6, 0];
        truncated.resize(200, 0);
        let mut overrun = vec![0u8; 240];
        overrun[..3].copy_from_slice(&[1, 1, 6]);
        overrun[236..240].copy_from_slice(&[99, 130, 83, 99]);
        overrun.extend_from_slice(&[53, 1, 1, 12, 200, b'x']);
        for g in [&b""[..], b"garbage", &truncated, &overrun, &[0xff; 1400]] {
            s.send_to(g, "10.77.0.1:67").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    server.assert_alive();
    let log = server.log();
    assert!(log.contains("dropped 200 bytes from 10.77.0.100") && log.contains("truncated"), "{log}");
    assert!(log.contains("overruns the packet"), "{log}");

    // udhcpc checks the offer with ARP, finds host 5 on it and DECLINEs; it gets another.
    let h1 = udhcpc(&lab, 1, &script, &["-a", "-A", "1"]);
    assert!(in_range(&h1["ip"], 101, 120), "{h1:?}");
    assert_eq!(
        (h1["subnet"].as_str(), h1["router"].as_str(), h1["dns"].as_str(), h1["domain"].as_str()),
        ("255.255.255.0", "10.77.0.1", "10.77.0.53", "lab.test")
    );
    assert_eq!((h1["lease"].as_str(), h1["serverid"].as_str()), ("3600", "10.77.0.1"));
    assert!(server.log().contains("declined 10.77.0.100"), "{}", server.log());

    // A reservation by MAC.
    sh(lab.host_cmd(2, "ip").args(["link", "set", "eth0", "address", "02:00:00:00:00:42"]));
    let h2 = udhcpc(&lab, 2, &script, &[]);
    assert_eq!((h2["ip"].as_str(), h2["hostname"].as_str()), ("10.77.0.42", "pc42"));

    // ISC dhclient.
    let h3 = dhclient(&lab, 3, d, &["BOUND"]);
    assert!(in_range(&h3["ip"], 101, 120) && h3["ip"] != h1["ip"], "{h3:?} {h1:?}");
    assert_eq!(
        (h3["mask"].as_str(), h3["routers"].as_str(), h3["dns"].as_str(), h3["domain"].as_str()),
        ("255.255.255.0", "10.77.0.1", "10.77.0.53", "lab.test")
    );

    // Release (udhcpc sends it on SIGUSR2 while bound; `-q -R` quits before it is bound),
    // then ask again: the same address comes back.
    sh(lab.host_cmd(1, "ip").args(["addr", "flush", "dev", "eth0"]));
    let out = d.join("udhcpc-release.out");
    let mut client = udhcpc_foreground(&lab, 1, &script, &out);
    let text = wait_for_text(&out, "event=bound", Duration::from_secs(30)).unwrap();
    assert_eq!(fields(&text, "event=bound")["ip"], h1["ip"]);
    // SAFETY: kill(2) on the PID of our own child.
    unsafe { libc::kill(client.id() as i32, libc::SIGUSR2) };
    wait_for_text(&server.log, &format!("released {}", h1["ip"]), Duration::from_secs(10)).unwrap();
    client.stop(Duration::from_secs(5));
    sh(lab.host_cmd(1, "ip").args(["addr", "flush", "dev", "eth0"]));
    assert_eq!(udhcpc(&lab, 1, &script, &[])["ip"], h1["ip"]);

    // Restart: leases survive. dhclient reboots into its lease (INIT-REBOOT REQUEST), udhcpc
    // gets its address back, and a new client gets none of the taken ones.
    server.stop();
    let server = start(&lab, d, &full_config, &[]);
    let h3b = dhclient(&lab, 3, d, &["REBOOT", "BOUND"]);
    assert_eq!(h3b["ip"], h3["ip"]);
    sh(lab.host_cmd(1, "ip").args(["addr", "flush", "dev", "eth0"]));
    assert_eq!(udhcpc(&lab, 1, &script, &[])["ip"], h1["ip"]);
    let h4 = udhcpc(&lab, 4, &script, &[]);
    for taken in [&h1["ip"], &h3["ip"], "10.77.0.42", "10.77.0.100"] {
        assert_ne!(h4["ip"], taken);
    }
    assert!(in_range(&h4["ip"], 101, 120), "{h4:?}");
    let log = server.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn udhcpc_renews_by_unicast() {
    let lab = Lab::new(0, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = start(&lab, d, "[dhcp]\nlease_time = 8\nrouter_advertisement = false\n", &[]);
    let script = udhcpc_script(d);
    let out_path = d.join("udhcpc-renew.out");
    let _client = udhcpc_foreground(&lab, 1, &script, &out_path);
    let text = wait_for_text(&out_path, "event=renew", Duration::from_secs(60)).unwrap();
    let bound = fields(&text, "event=bound");
    let renew = fields(&text, "event=renew");
    assert_eq!(renew["ip"], bound["ip"]);
    assert_eq!(renew["lease"], "8");
    // The renewal ACK went to the client's address, not to broadcast.
    let log = server.log();
    assert!(log.contains(&format!("Ack {} to ", bound["ip"])), "{log}");
    assert!(log.contains(&format!("via {}:68", bound["ip"])), "{log}");
}

#[test]
fn ping_check_skips_an_address_in_use() {
    let lab = Lab::new(0, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Host 2 squats on the first pool address; its kernel answers pings.
    sh(lab.host_cmd(2, "ip").args(["addr", "add", "10.77.0.100/24", "dev", "eth0"]));
    // A long wait, so that a slow machine's late echo reply still counts.
    let config = "range = \"10.77.0.100-10.77.0.110\"\n[dhcp]\nrouter_advertisement = false\nping_timeout_ms = 3000\n";
    let server = start(&lab, d, config, &[]);
    assert!(server.log().contains("ping check 3000 ms"), "{}", server.log());
    // udhcpc without its ARP check (no -a): only the server's ping check keeps it off .100.
    let h1 = udhcpc(&lab, 1, &udhcpc_script(d), &[]);
    assert!(in_range(&h1["ip"], 101, 110), "{h1:?}");
    let mac = lab.host_cmd(1, "cat").arg("/sys/class/net/eth0/address").output().unwrap();
    let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
    let leases = std::fs::read_to_string(d.join("state/leases.json")).unwrap();
    let log = server.stop();
    assert!(log.contains(&format!("conflict: 10.77.0.100 answers ping, another host uses it; not offered to {mac}")), "{log}");
    assert!(!log.contains("declined"), "{log}");
    // The conflict is in the lease table too, as a quarantine.
    let table: serde_json::Value = serde_json::from_str(&leases).unwrap();
    let entry = |ip: &str| table["leases"].as_array().unwrap().iter().find(|l| l["ip"] == ip).cloned();
    assert_eq!(entry("10.77.0.100").map(|l| l["state"].clone()), Some("declined".into()), "{leases}");
    assert_eq!(entry(&h1["ip"]).map(|l| l["mac"].clone()), Some(mac.into()), "{leases}");
}

/// A BOOTREQUEST as a PXE ROM sends it.
fn pxe_packet(msg: u8, xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr, pxe: bool) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[..3].copy_from_slice(&[1, 1, 6]);
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80; // broadcast replies: the ROM has no address yet
    b[12..16].copy_from_slice(&ciaddr.octets());
    b[28..34].copy_from_slice(&mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg]);
    if pxe {
        let class = b"PXEClient:Arch:00000:UNDI:002001";
        b.extend_from_slice(&[60, class.len() as u8]);
        b.extend_from_slice(class);
        b.extend_from_slice(&[93, 2, 0, 0, 94, 3, 1, 2, 1, 97, 17, 0]);
        b.extend_from_slice(&[0x11; 16]);
    }
    b.push(255);
    b
}

struct Answer {
    from: SocketAddr,
    yiaddr: Ipv4Addr,
    msg: u8,
    file: String,
    class: Option<Vec<u8>>,
}

/// Collects the replies to `xid` that arrive on `sock` within `wait`.
fn answers(sock: &UdpSocket, xid: u32, wait: Duration) -> Vec<Answer> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(10)))).unwrap();
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let Ok(p) = DhcpPacket::new_checked(&buf[..n]) else { continue };
        if p.transaction_id() != xid || buf[0] != 2 {
            continue;
        }
        let opt = |k: u8| p.options().find(|o| o.kind == k).map(|o| o.data.to_vec());
        out.push(Answer {
            from,
            yiaddr: p.your_ip(),
            msg: opt(53).and_then(|d| d.first().copied()).unwrap_or(0),
            file: p.get_boot_file().unwrap_or("").to_string(),
            class: opt(60),
        });
    }
    out
}

#[test]
fn proxy_dhcp_next_to_dnsmasq() {
    let lab = Lab::new(0, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // dnsmasq is the LAN's DHCP server, in host 2.
    sh(lab.host_cmd(2, "ip").args(["addr", "add", "10.77.0.2/24", "dev", "eth0"]));
    let _dnsmasq = KillOnDrop::spawn(
        lab.host_cmd(2, "dnsmasq")
            .args(["-k", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces"])
            .args(["--dhcp-range=10.77.0.150,10.77.0.160,255.255.255.0,1h", "--no-ping", "--user=root"])
            .arg(format!("--dhcp-leasefile={}", d.join("dnsmasq.leases").display()))
            .arg(format!("--pid-file={}", d.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let server = start(&lab, d, "[dhcp]\nrouter_advertisement = false\n", &["--proxy-dhcp"]);
    assert!(server.log().contains("proxyDHCP"), "{}", server.log());

    // A plain client gets its lease from dnsmasq; the proxy stays silent.
    let h3 = udhcpc(&lab, 3, &udhcpc_script(d), &[]);
    assert_eq!(h3["serverid"], "10.77.0.2");
    assert!(in_range(&h3["ip"], 150, 160), "{h3:?}");

    // A crafted PXE ROM in host 1 (with an address, so that plain sockets can send).
    sh(lab.host_cmd(1, "ip").args(["addr", "add", "10.77.0.50/24", "dev", "eth0"]));
    let got = in_netns(&host_ns(&lab, 1), || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(b"eth0")).unwrap();
        s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into()).unwrap();
        let s: UdpSocket = s.into();
        let mac = [2, 0, 0, 0, 0, 0x50];
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        s.send_to(&pxe_packet(1, 0xfeed_0001, mac, Ipv4Addr::UNSPECIFIED, true), bcast).unwrap();
        let pxe = answers(&s, 0xfeed_0001, Duration::from_secs(4));
        s.send_to(&pxe_packet(1, 0xfeed_0002, mac, Ipv4Addr::UNSPECIFIED, false), bcast).unwrap();
        let plain = answers(&s, 0xfeed_0002, Duration::from_secs(3));
        let ciaddr = Ipv4Addr::new(10, 77, 0, 50);
        s.send_to(&pxe_packet(3, 0xfeed_0003, mac, ciaddr, true), "10.77.0.1:4011").unwrap();
        let ack = answers(&s, 0xfeed_0003, Duration::from_secs(3));
        (pxe, plain, ack)
    });
    let (pxe, plain, ack) = got;
    let from = |a: &Answer| a.from.ip().to_string();
    // DISCOVER from a PXE ROM: dnsmasq offers an address, we offer the boot file only.
    let ours: Vec<_> = pxe.iter().filter(|a| from(a) == "10.77.0.1").collect();
    let theirs: Vec<_> = pxe.iter().filter(|a| from(a) == "10.77.0.2").collect();
    assert_eq!((ours.len(), theirs.len()), (1, 1), "offers: {:?}", pxe.iter().map(from).collect::<Vec<_>>());
    let o = ours[0];
    assert_eq!((o.msg, o.yiaddr, o.file.as_str()), (2, Ipv4Addr::UNSPECIFIED, "undionly.kpxe"));
    assert_eq!(o.class.as_deref(), Some(&b"PXEClient"[..]));
    assert!(theirs[0].yiaddr.octets()[3] >= 150);
    // A non-PXE DISCOVER: only dnsmasq answers.
    assert!(plain.iter().all(|a| from(a) == "10.77.0.2") && !plain.is_empty());
    // REQUEST on 4011: our ACK, straight back to the client.
    assert_eq!(ack.len(), 1);
    assert_eq!((from(&ack[0]).as_str(), ack[0].msg, ack[0].file.as_str()), ("10.77.0.1", 5, "undionly.kpxe"));
    assert_eq!(ack[0].from.port(), 4011);
    let log = server.stop();
    assert!(log.contains("PXE clients only"), "{log}");
}

#[test]
fn router_advertisement_answers_solicitation() {
    let lab = Lab::new(0, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Long period: what arrives after our solicitation answers it.
    let server = start(&lab, dir.path(), "[dhcp]\nra_interval = 3600\n", &[]);
    let ns = host_ns(&lab, 1);
    let ra = in_netns(&ns, || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        s.bind_device(Some(b"eth0")).unwrap();
        s.set_multicast_hops_v6(255).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let idx = nix::net::if_::if_nametoindex("eth0").unwrap();
        let to = std::net::SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, idx);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the link-local address passes DAD, sending fails or goes unanswered: retry.
        while Instant::now() < deadline {
            let _ = s.send_to(&[133, 0, 0, 0, 0, 0, 0, 0], &to.into());
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
            while let Ok(n) = s.recv(&mut buf) {
                // SAFETY: recv initialized the first n bytes.
                let m: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                if m.first() == Some(&134) {
                    return Some(m);
                }
            }
        }
        None
    });
    let ra = ra.unwrap_or_else(|| panic!("no router advertisement:\n{}", server.log()));
    assert_eq!(&ra[4..8], &[0, 0, 0, 0], "M=0 O=0, router lifetime 0");
    assert!(ra.len() == 16 || ra.len() == 24, "no prefix option: {ra:?}");
}

/// A hostile host: forged REQUESTs naming the server for addresses it never offered (21 made-up
/// clients), a DISCOVER flood from one MAC, and a DISCOVER whose repeated option 77 joins to
/// 1275 bytes. Prints what came back: `nak N ack N flood_offers N`.
const HOSTILE_DHCP: &str = r#"
import socket, struct, time
SERVER = ("10.77.0.1", 67)
def msg(t, xid, mac, opts):
    b = bytearray(240)
    b[0:3] = bytes([1, 1, 6])
    b[4:8] = struct.pack("!I", xid)
    b[28:34] = mac
    b[236:240] = bytes([99, 130, 83, 99])
    b += bytes([53, 1, t])
    for k, v in opts:
        b += bytes([k, len(v)]) + v
    return bytes(b + bytes([255]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", 68))
for i in range(21):
    mac = bytes([2, 0xff, 0, 0, 0, i])
    s.sendto(msg(3, 0xf0000 + i, mac, [(54, bytes([10, 77, 0, 1])), (50, bytes([10, 77, 0, 100 + i]))]), SERVER)
s.sendto(msg(1, 0xd0000, bytes([2, 0xdd, 0, 0, 0, 1]), [(77, b"x" * 255)] * 5), SERVER)
# Last: the flood overruns the server's receive queue, and what comes after it may be lost.
flood_mac = bytes([2, 0xee, 0, 0, 0, 1])
for i in range(300):
    s.sendto(msg(1, 0xe0000 + i, flood_mac, []), SERVER)
counts = {"nak": 0, "ack": 0, "flood_offers": 0, "long_option": 0}
s.settimeout(0.5)
end = time.time() + 4
while time.time() < end:
    try:
        data = s.recv(1500)
    except socket.timeout:
        continue
    if len(data) < 243 or data[0] != 2:
        continue
    xid = struct.unpack("!I", data[4:8])[0]
    i = 240
    kind = None
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if data[i] == 53:
            kind = data[i + 2]
        i += 2 + data[i + 1]
    if xid >> 16 == 0xf:
        key = {6: "nak", 5: "ack"}.get(kind, "other")
        counts[key] = counts.get(key, 0) + 1
    elif xid >> 16 == 0xe and kind == 2:
        counts["flood_offers"] += 1
    elif xid >> 16 == 0xd:
        counts["long_option"] += 1
print(" ".join("%s %d" % kv for kv in sorted(counts.items())))
"#;

#[test]
fn forged_requests_and_floods_leave_real_clients_served() {
    let lab = Lab::new(0, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = "range = \"10.77.0.100-10.77.0.120\"\n[dhcp]\nrouter_advertisement = false\nping_check = false\n";
    let mut server = start(&lab, d, config, &[]);
    sh(lab.host_cmd(2, "ip").args(["addr", "add", "10.77.0.9/24", "dev", "eth0"]));
    let started = Instant::now();
    let out = lab.host_cmd(2, "python3").args(["-c", HOSTILE_DHCP]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let counts: HashMap<String, u32> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].parse().unwrap()))
        .collect();
    server.assert_alive();
    eprintln!("hostile host got back: {text}");
    // Each forged REQUEST is refused; before, each bound the address it named.
    assert_eq!((counts["nak"], counts["ack"], counts.get("other")), (21, 0, None), "{text}");
    // The one-MAC flood gets its burst of 10 and 2 a second after it, not 300 offers.
    let allowed = 10 + 2 * started.elapsed().as_secs_f64().ceil() as u32;
    assert!((1..=allowed).contains(&counts["flood_offers"]), "{text}, at most {allowed} expected");
    assert_eq!(counts["long_option"], 0, "{text}");
    // A real client, after all that.
    let h1 = udhcpc(&lab, 1, &udhcpc_script(d), &[]);
    assert!(in_range(&h1["ip"], 100, 120), "{h1:?}");
    let leases_path = d.join("state/leases.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&leases_path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let leases = std::fs::read_to_string(&leases_path).unwrap();
    let log = server.stop();
    assert!(!leases.contains("02:ff:") && leases.contains(&h1["ip"]), "{leases}");
    assert!(log.contains("was not offered to this client"), "{log}");
    assert!(log.contains("02:ee:00:00:00:01 is over its message rate"), "{log}");
    assert!(log.contains("repeated to more than 1024 bytes"), "{log}");
}

/// A hostile host: DISCOVERs from made-up MACs for `SECS` seconds, in bursts of 50 every 10 ms
/// (up to 5,000 a second: hundreds of times the allowance; what a LAN link can carry beyond that
/// is a bandwidth flood, which no server outruns). Prints how many it sent.
const RANDOM_MAC_FLOOD: &str = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", 68))
end = time.time() + float(sys.argv[1])
n = 0
while time.time() < end:
    b = bytearray(240)
    b[0:3] = bytes([1, 1, 6])
    b[4:8] = os.urandom(4)
    b[28:34] = bytes([2]) + os.urandom(5)
    b[236:240] = bytes([99, 130, 83, 99])
    s.sendto(bytes(b) + bytes([53, 1, 1, 255]), ("255.255.255.255", 67))
    n += 1
    if n % 50 == 0:
        time.sleep(0.01)
print(n)
"#;

/// Nothing tells a flood of DISCOVERs from made-up MACs apart from new PCs, and it spends the
/// service's whole message allowance. A PC that already holds a lease still gets through, from
/// the known clients' reserve; before it had that, it was dropped like the flood.
#[test]
fn a_random_mac_flood_does_not_keep_known_pcs_out() {
    let lab = Lab::new(0, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A small service allowance, so that the flood spends it all however slow this machine is.
    let config = "range = \"10.77.0.100-10.77.0.120\"\n[dhcp]\nrouter_advertisement = false\nping_check = false\n\
                  total_rate = 10\ntotal_burst = 10\n";
    let mut server = start(&lab, d, config, &[]);
    let script = udhcpc_script(d);
    let first = udhcpc(&lab, 1, &script, &[]);
    let sent = d.join("flood.out");
    let mut flood = KillOnDrop::spawn(
        lab.host_cmd(2, "python3").args(["-c", RANDOM_MAC_FLOOD, "20"]).stdout(std::fs::File::create(&sent).unwrap()),
    )
    .unwrap();
    // Let the flood take hold, then the PC boots again: a DISCOVER and a REQUEST.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let again = udhcpc(&lab, 1, &script, &[]);
    let took = t.elapsed();
    let still_flooding = flood.0.try_wait().unwrap().is_none();
    flood.0.wait().unwrap();
    server.assert_alive();
    let log = server.stop();
    let sent = std::fs::read_to_string(&sent).unwrap();
    eprintln!("known PC's lease under a random-MAC flood: {took:?}; flood: {} DISCOVERs in 20 s", sent.trim());
    assert!(still_flooding, "the flood ended before the PC's lease; the test proves nothing");
    assert_eq!(again["ip"], first["ip"], "{again:?}");
    assert!(log.contains("over the service's message rate"), "the flood never spent the allowance:\n{log}");
}

/// `[dhcp] pxe_enrolled_only`: udhcpc posing as a PXE ROM from a MAC not enrolled gets an address
/// but no boot file, and the MAC shows as pending in the admin API; once approved there (curl),
/// its next request gets the boot file.
#[test]
fn pxe_boot_file_only_for_enrolled_macs() {
    let lab = Lab::with_subnet(0, 1, "10.90.0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = "range = \"10.90.0.100-10.90.0.120\"\n[dhcp]\nrouter_advertisement = false\nping_check = false\npxe_enrolled_only = true\n";
    let mut server = start(&lab, d, config, &[]);
    wait_for_text(&server.log, "admin API on", Duration::from_secs(30)).unwrap();
    let script = udhcpc_script(d);
    let pxe = ["-V", "PXEClient:Arch:00000:UNDI:002001"];
    let mac = String::from_utf8(lab.host_cmd(1, "cat").arg("/sys/class/net/eth0/address").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let admin = |args: &[&str]| -> String {
        let auth = testkit::admin_auth(&d.join("state")).unwrap();
        let out = lab.cmd("curl").args(["-sf", "-m", "10", "-H", &auth]).args(args).output().unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    let held = udhcpc(&lab, 1, &script, &pxe);
    assert!(held["ip"].starts_with("10.90.0."), "{held:?}");
    assert_eq!(held.get("boot_file").map(String::as_str), Some(""), "an unenrolled MAC got a boot file: {held:?}");
    server.assert_alive();
    assert!(server.log().contains(&format!("dhcp: {mac}: PXE request from a MAC not enrolled")), "{}", server.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = admin(&["http://127.0.0.1:7001/api/enrolment"]);
        if list.contains(&mac) && list.contains("\"pending\"") {
            break;
        }
        assert!(Instant::now() < deadline, "no pending entry for {mac}: {list}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let approved = admin(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
        &format!("http://127.0.0.1:7001/api/clients/{mac}/approve"),
    ]);
    assert!(approved.contains("\"approved\""), "{approved}");
    let booted = udhcpc(&lab, 1, &script, &pxe);
    assert_eq!(booted.get("boot_file").map(String::as_str), Some("undionly.kpxe"), "{booted:?}");
    assert_eq!(booted.get("siaddr").map(String::as_str), Some("10.90.0.1"), "{booted:?}");
    let log = server.stop();
    assert_eq!(log.matches("PXE request from a MAC not enrolled").count(), 1, "logged more than once:\n{log}");
}
