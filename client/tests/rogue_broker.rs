//! A rogue on the LAN: a second lab host runs a DHCP server (dnsmasq) whose option 224 names a
//! broker of its own, a TLS server (Python's `ssl`) with a self-signed certificate made by
//! `openssl` for the very address the agent dials. A QEMU PC boots the agent's image (with the
//! real boot server's CA, from `bootserver ca init`) straight from its kernel, with no
//! `tc.broker`, so the rogue's lease is the only source of a broker. The agent must refuse the
//! handshake (the rogue gets the TLS alert that says why), never send a hello, say why on its
//! console, and try again with back-off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const SUBNET: &str = "10.86.0";
const ROGUE: &str = "10.86.0.2";
const MAC: &str = "52:54:00:4a:47:86";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's image, trusting the CA of a boot server that is not on this LAN at all.
fn build_image(dir: &Path) -> PathBuf {
    let (agent, out) = (Path::new(env!("CARGO_BIN_EXE_thinclient")), dir.join("agent.img"));
    testkit::agent_image(agent.parent().unwrap(), agent, &dir.join("state"), &out).expect("building the image");
    out
}

/// Accepts TLS connections with the rogue's certificate and logs, per connection, the failed
/// handshake or every byte it is sent.
const ROGUE_BROKER: &str = r#"
import socket, ssl, sys
cert, key, addr, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(8)
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    conn.settimeout(10)
    print("connection from", peer[0], flush=True)
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except Exception as e:
        print("handshake failed:", e, flush=True)
        conn.close()
        continue
    print("handshake done", flush=True)
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            print("received", len(data), "bytes:", data[:200], flush=True)
    except Exception as e:
        print("read ended:", e, flush=True)
    tls.close()
"#;

#[test]
fn a_rogue_broker_named_by_a_rogue_dhcp_server_gets_no_hello() {
    let lab = Lab::with_subnet(1, 1, SUBNET).expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_image(d);

    // The rogue host: an address, a self-signed certificate for it, its broker and its DHCP.
    run(lab.host_cmd(1, "ip").args(["addr", "add", &format!("{ROGUE}/24"), "dev", "eth0"]), "ip addr add");
    run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={ROGUE}"), "-addext", &format!("subjectAltName=IP:{ROGUE}")])
            .arg("-keyout")
            .arg(d.join("rogue.key"))
            .arg("-out")
            .arg(d.join("rogue.pem")),
        "openssl req",
    );
    let rogue_log = d.join("rogue.log");
    let _rogue = KillOnDrop::spawn(
        lab.host_cmd(1, "python3")
            .args(["-u", "-c", ROGUE_BROKER])
            .arg(d.join("rogue.pem"))
            .arg(d.join("rogue.key"))
            .args([ROGUE, "7000"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&rogue_log).unwrap())
            .stderr(std::fs::File::create(d.join("rogue.err")).unwrap()),
    )
    .expect("rogue broker");
    testkit::wait_for_text(&rogue_log, "listening", Duration::from_secs(10)).expect("the rogue broker did not start");
    let dnsmasq_log = d.join("dnsmasq.log");
    let _dhcp = KillOnDrop::spawn(
        lab.host_cmd(1, "dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=eth0", "--bind-interfaces"])
            .arg(format!("--dhcp-range={SUBNET}.100,{SUBNET}.150,1h"))
            .arg(format!("--dhcp-option=224,\"{ROGUE}:7000\""))
            .arg(format!("--dhcp-leasefile={}", d.join("leases").display()))
            .arg("--log-dhcp")
            .arg(format!("--log-facility={}", dnsmasq_log.display()))
            .stdin(Stdio::null()),
    )
    .expect("dnsmasq");

    let serial = d.join("serial.log");
    let started = Instant::now();
    let _qemu = KillOnDrop::spawn(
        lab.cmd("qemu-system-x86_64")
            .args(testkit::accel_args())
            .args(["-m", "256", "-display", "none", "-vga", "std", "-no-reboot"])
            .arg("-kernel")
            .arg(testkit::kernel().unwrap())
            .arg("-initrd")
            .arg(&image)
            .args(["-append", "console=ttyS0 tc.error_delay=5"])
            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", &format!("e1000,netdev=n0,mac={MAC}")])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("qemu");

    let why = format!("broker {ROGUE}:7000 is not trusted: certificate not signed by this boot server's CA");
    let logs = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("serial:\n{}\nrogue:\n{}\ndnsmasq:\n{}", read(&serial), read(&rogue_log), read(&dnsmasq_log))
    };
    if testkit::wait_for_text(&serial, &why, Duration::from_secs(300)).is_err() {
        panic!("the agent never said why it refused the rogue broker\n{}", logs());
    }
    println!("refused the rogue broker {:.1} s after power-on", started.elapsed().as_secs_f64());
    // A second attempt after the back-off, refused the same way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let attempts = || std::fs::read_to_string(&rogue_log).unwrap_or_default().matches("handshake failed").count();
    while attempts() < 2 {
        assert!(Instant::now() < deadline, "no second attempt within 60 s\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }

    let rogue = std::fs::read_to_string(&rogue_log).unwrap();
    let serial_text = std::fs::read_to_string(&serial).unwrap();
    // The agent dialled the rogue because the rogue's lease said so...
    assert!(rogue.contains(&format!("connection from {SUBNET}.1")), "{}", logs());
    // ...told it why it hung up (rustls's alert: certificate_unknown for a self-signed
    // certificate, unknown_ca for one of a foreign CA)...
    assert!(rogue.to_lowercase().contains("alert certificate unknown"), "{}", logs());
    // ...and sent it nothing: no handshake completed, not one byte of a hello.
    assert!(!rogue.contains("handshake done") && !rogue.contains("received"), "{}", logs());
    assert!(serial_text.contains("retrying in"), "no back-off in the agent's log\n{}", logs());
    assert!(!serial_text.contains("announced to the broker"), "{}", logs());
}
