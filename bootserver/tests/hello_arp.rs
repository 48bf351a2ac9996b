//! Hellos bound to addresses where the boot server does not hand out the leases (`--no-dhcp`,
//! as in proxyDHCP mode): the MAC in a hello must be the one that answers ARP for the
//! connection's source address. In a lab, with `serve` on the bridge:
//!
//! - an honest host (static address, its own MAC in the hello) is welcomed: the broker found
//!   its MAC through ARP and the kernel's neighbour table;
//! - a second host (its own static address) sends a hello with the first host's MAC, over TLS
//!   trusting the CA as anyone who reads a boot image can: it is refused, the refusal names the
//!   address, and the log line names both MACs;
//! - the first host's connection and registry row are untouched, and it is still answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::agent::{encode, AgentMessage, BrokerMessage, Decoder, Hello};
use proto::tls::rustls::{ClientConnection, StreamOwned};
use testkit::{wait_for_text, KillOnDrop, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_bootserver");
const SUBNET: &str = "10.87.0";
const HONEST: u32 = 1;
const ATTACKER: u32 = 2;
const ADMIN: &str = "127.0.0.1:7001";

type Link = StreamOwned<ClientConnection, TcpStream>;

fn sh(mut c: Command) -> std::process::Output {
    c.stdin(Stdio::null()).output().expect("running a command")
}

fn host_mac(lab: &Lab, k: u32) -> String {
    let out = sh({
        let mut c = lab.host_cmd(k, "cat");
        c.arg("/sys/class/net/eth0/address");
        c
    });
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn address(lab: &Lab, k: u32, ip: &str) {
    let out = sh({
        let mut c = lab.host_cmd(k, "ip");
        c.args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        c
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Connects to the broker over TLS (trusting `ca`), sends `hello` and returns the link with the
/// broker's first answer.
fn announce(broker: SocketAddr, ca: &Path, hello: Hello) -> (Link, Option<BrokerMessage>) {
    let tls = proto::tls::client_config(ca).unwrap();
    let tcp = TcpStream::connect_timeout(&broker, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(tls, proto::tls::server_name(broker.ip())).unwrap();
    let mut link = StreamOwned::new(conn, tcp);
    while link.conn.is_handshaking() {
        link.conn.complete_io(&mut link.sock).expect("TLS handshake with the broker");
    }
    link.write_all(&encode(&AgentMessage::Hello(hello)).unwrap()).unwrap();
    link.flush().unwrap();
    let first = next_message(&mut link);
    (link, first)
}

fn next_message(link: &mut Link) -> Option<BrokerMessage> {
    let mut dec = Decoder::<BrokerMessage>::new();
    let mut buf = [0u8; 4096];
    loop {
        match link.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                if let Some(r) = dec.feed(&buf[..n]).into_iter().next() {
                    return r.ok();
                }
            }
        }
    }
}

fn client(lab: &Lab, state: &Path, mac: &str) -> serde_json::Value {
    let out = sh({
        let mut c = lab.cmd("curl");
        c.args(["-sf", "-m", "10", "-H", &testkit::admin_auth(state).unwrap()]);
        c.arg(format!("http://{ADMIN}/api/clients/{mac}"));
        c
    });
    assert!(out.status.success(), "GET /api/clients/{mac}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn without_our_leases_a_hello_must_come_from_the_mac_that_answers_arp() {
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(boot.join("initrd.img"), b"initrd").unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("serve.log");
    let _serve = KillOnDrop::spawn(
        lab.cmd(BIN)
            .args(["serve", "--interface", "br0", "--no-dhcp", "--no-tftp", "--boot-dir"])
            .arg(&boot)
            .arg("--state-dir")
            .arg(&state)
            .args(["--kernel", "vmlinuz", "--initrd", "initrd.img"])
            .env("BOOTSERVER_ADMIN", ADMIN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_for_text(&log, "broker listening for agents", Duration::from_secs(60)).unwrap();
    let ca = state.join("ca/ca.pem");
    let broker: SocketAddr = format!("{}:7000", lab.server_addr()).parse().unwrap();

    let (honest_ip, attacker_ip) = (format!("{SUBNET}.2"), format!("{SUBNET}.3"));
    address(&lab, HONEST, &honest_ip);
    address(&lab, ATTACKER, &attacker_ip);
    let (honest_mac, attacker_mac) = (host_mac(&lab, HONEST), host_mac(&lab, ATTACKER));

    // The honest host: nobody told the boot server its MAC; ARP did.
    let (ca1, h) = (ca.clone(), testkit::agent_hello(&honest_mac, &honest_ip));
    let (mut honest, answer) = lab.on_host(HONEST, move || announce(broker, &ca1, h));
    assert!(matches!(answer, Some(BrokerMessage::Welcome(_))), "the honest host got {answer:?}");
    let before = client(&lab, &state, &honest_mac);
    assert_eq!(before["address"], honest_ip.as_str(), "{before}");

    // The attacker claims the honest host's MAC (and, for good measure, its address).
    let (ca2, h) = (ca.clone(), testkit::agent_hello(&honest_mac, &honest_ip));
    let t0 = Instant::now();
    let (_link, answer) = lab.on_host(ATTACKER, move || announce(broker, &ca2, h));
    let took = t0.elapsed();
    match &answer {
        Some(BrokerMessage::Refused { reason }) => {
            assert!(reason.contains(&attacker_ip) && reason.contains(&honest_mac), "{reason}");
            eprintln!("refused in {:.1} ms (connect, TLS, hello): {reason}", took.as_secs_f64() * 1000.0);
        }
        other => panic!("the spoofed hello got {other:?}\n{}", std::fs::read_to_string(&log).unwrap()),
    }
    let text = wait_for_text(&log, "hello refused", Duration::from_secs(5)).unwrap();
    let line = text.lines().find(|l| l.contains("hello refused")).unwrap();
    assert!(
        line.contains(&format!("hello claims {honest_mac}, but {attacker_mac} answers ARP for {attacker_ip}")),
        "{line}"
    );

    // The honest host: same row, and its link still carries the broker's messages.
    let after = client(&lab, &state, &honest_mac);
    assert_eq!(after["address"], before["address"]);
    assert_eq!(after["boots"], before["boots"]);
    assert_eq!(after["state"], before["state"], "{after}");
    lab.on_host(HONEST, move || {
        honest.write_all(&encode(&AgentMessage::Pong { seq: 0 }).unwrap()).unwrap();
        honest.flush().unwrap();
        // Nothing to read is a live link (the read times out); an end or a reset is not.
        honest.sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 256];
        match honest.read(&mut b) {
            Ok(0) => panic!("the broker closed the honest host's link"),
            Ok(_) => {}
            Err(e) => assert!(
                matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "the honest host's link: {e}"
            ),
        }
    });
}
