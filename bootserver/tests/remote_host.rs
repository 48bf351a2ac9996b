//! A virtualization host on another machine, in the lab: `server-host` in a namespace of its
//! own (lab host 1, 10.92.0.11) enrolled by the boot server's CA, its API on HTTPS and its VMs'
//! VNC on TCP inside TLS. The broker's side (its host client and the proxy's VM connection, the
//! crate's own code) runs in the lab's bridge namespace with the broker's client certificate;
//! the attacks come from lab host 2 with curl and Python's ssl (OpenSSL):
//! - the API refuses a client without a certificate and one showing the host's own;
//! - the VM's VNC offers no security type but VeNCrypt, and its TLS handshake fails without a
//!   client certificate, while the same client with the broker's certificate gets the VNC
//!   challenge;
//! - the proxy's connection gets a whole frame.
//!
//! Prints what a host call costs with a full mTLS handshake and with a resumed session.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bootserver::broker::hosts::HostClient;
use bootserver::broker::orchestrator::backend_of;
use bootserver::broker::proxy::backend;
use bootserver::broker::proxy::rfb;
use proto::host::{CreateVm, VncAddress};
use testkit::{KillOnDrop, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUBNET: &str = "10.92.0";
const HOST_IP: &str = "10.92.0.11";
const ATTACKER: u32 = 2;

/// A plain RFB client, then VeNCrypt, then TLS with OpenSSL: exit 0 when the outcome is the
/// one asked for (`refused` or `challenge`), with what it saw on stdout.
const VNC_PROBE: &str = r#"
import socket, ssl, struct, sys
host, port, ca, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cert = sys.argv[5:7]
s = socket.create_connection((host, port), timeout=20)
def rd(n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit('closed early')
        b += c
    return b
print('version', rd(12))
s.sendall(b'RFB 003.008\n')
types = list(rd(rd(1)[0]))
print('security types', types)
if types != [19]:
    sys.exit(2)
s.sendall(bytes([19]))
rd(2)
s.sendall(bytes([0, 2]))
assert rd(1) == b'\0'
subs = [struct.unpack('>I', rd(4))[0] for _ in range(rd(1)[0])]
print('vencrypt subtypes', subs)
if any(t < 260 for t in subs):
    sys.exit(4)
s.sendall(struct.pack('>I', 261 if 261 in subs else subs[0]))
assert rd(1) == b'\x01'
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
if cert:
    ctx.load_cert_chain(cert[0], cert[1])
try:
    t = ctx.wrap_socket(s, server_hostname=host)
    got = b''
    while len(got) < 16:
        c = t.recv(16 - len(got))
        if not c:
            break
        got += c
    outcome = 'challenge' if len(got) == 16 else 'refused'
except (ssl.SSLError, OSError) as e:
    print('tls error', e)
    outcome = 'refused'
print('outcome', outcome)
sys.exit(0 if outcome == expect else 3)
"#;

fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_bootserver")).with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

/// Runs `f` on a thread inside the network namespace at `path`, on a runtime of its own.
fn in_netns<T: Send + 'static>(path: String, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("opening the namespace");
        // SAFETY: setns on a namespace fd we hold; it changes this thread only.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    })
    .join()
    .expect("thread in the lab")
}

/// curl from lab host 2 to the host's API: the HTTP status (0: no HTTP answer).
fn curl(lab: &Lab, tls: &[std::ffi::OsString]) -> u16 {
    let out = lab
        .host_cmd(ATTACKER, "curl")
        .args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(tls)
        .arg(format!("https://{HOST_IP}:8470/v1/host"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn a_remote_host_serves_api_and_vnc_to_the_brokers_certificate_only() {
    let st = Command::new(testkit::repo_root().join("scripts/build-desktop-template")).status().unwrap();
    assert!(st.success(), "build-desktop-template failed");
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    for (k, ip) in [(1, HOST_IP), (ATTACKER, "10.92.0.12")] {
        let st = lab.host_cmd(k, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).status().unwrap();
        assert!(st.success());
    }
    let dir = tempfile::tempdir().unwrap();
    let bs_state = dir.path().join("bs-state");
    let pki = testkit::host_pki(Path::new(env!("CARGO_BIN_EXE_bootserver")), &bs_state, "h1", &[HOST_IP]).unwrap();
    let state = dir.path().join("sh-state");
    let cfg = dir.path().join("server-host.toml");
    let text = testkit::server_host_config(
        &pki.tls_dir,
        &format!("{HOST_IP}:8470"),
        &state,
        &testkit::cache_dir().join("templates"),
    );
    std::fs::write(&cfg, format!("{text}vnc_tcp_host = \"{HOST_IP}\"\n")).unwrap();
    let log = dir.path().join("server-host.log");
    // Kills the host's QEMUs when the test ends, however it ends.
    let _qemus = testkit::HostVms(state.clone());
    let _host = KillOnDrop::spawn(
        lab.host_cmd(1, sibling_bin("server-host"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // The API from the second host: the broker's certificate works, nothing else does.
    let t0 = Instant::now();
    while curl(&lab, &pki.curl_args()) != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "server-host never answered:\n{}", logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let ca_only = ["--cacert".into(), pki.ca.clone().into_os_string()];
    assert_eq!(curl(&lab, &ca_only), 0, "no client certificate");
    let as_host = [
        ca_only.to_vec(),
        vec!["--cert".into(), pki.tls_dir.join("host.pem").into(), "--key".into(), pki.tls_dir.join("host.key").into()],
    ]
    .concat();
    assert_eq!(curl(&lab, &as_host), 0, "the host's own certificate");
    assert!(logs().contains("TLS handshake with 10.92.0.12"), "{}", logs());

    // The broker's side, on the bridge: host calls, a VM, and the proxy's VNC connection.
    let tls = bootserver::broker::flow::host_tls(&bs_state).unwrap();
    let state_for_vm = bs_state.clone();
    let (vnc, figures) = in_netns(format!("/run/netns/{}", lab.name), async move {
        let url = format!("https://{HOST_IP}:8470");
        let client = HostClient::new("h1", &url, tls.clone()).unwrap();
        // What a call costs: each with a fresh client (a full handshake, both certificates
        // signed and checked), then on one client whose sessions rustls resumes.
        let n = 20;
        let t0 = Instant::now();
        for _ in 0..n {
            let fresh = bootserver::broker::flow::host_tls(&state_for_vm).unwrap();
            HostClient::new("h1", &url, fresh).unwrap().facts(Duration::from_secs(10)).await.unwrap();
        }
        let full = t0.elapsed() / n;
        client.facts(Duration::from_secs(10)).await.unwrap();
        let t0 = Instant::now();
        for _ in 0..n {
            client.facts(Duration::from_secs(10)).await.unwrap();
        }
        let resumed = t0.elapsed() / n;

        let created = client
            .create(&CreateVm {
                name: "remote-1".into(),
                template: "desktop".into(),
                memory_mib: 128,
                vcpus: 1,
                user: "u1".into(),
                persistent: false,
                vnc_password: None,
                pool: false,
            })
            .await
            .unwrap();
        let VncAddress::Tls(addr) = &created.vm.vnc else { panic!("VNC not inside TLS: {:?}", created.vm.vnc) };
        assert!(addr.starts_with(&format!("{HOST_IP}:")), "{addr}");
        backend::set_vm_tls(tls);
        let b = backend_of(&created.vm.vnc, &created.vnc_password).unwrap();
        let (mut s, init) = backend::connect(&b).await.unwrap();
        // A whole update with pixels (Raw), framed by the proxy's own parser; asked again now
        // and then, since a guest that switches its video mode drops a pending request.
        let (mut buf, mut at, mut pixels, mut framer) = (Vec::new(), 0, 0usize, rfb::ServerFramer::default());
        let t0 = Instant::now();
        'frame: loop {
            assert!(t0.elapsed() < Duration::from_secs(120), "no whole frame within 120 s");
            s.write_all(&rfb::update_request(false, init.width, init.height)).await.unwrap();
            let mut chunk = vec![0u8; 1 << 16];
            while let Ok(n) = tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
                let n = n.unwrap();
                assert!(n > 0, "VNC closed after {} bytes", buf.len());
                buf.extend_from_slice(&chunk[..n]);
                while let Some((item, len)) = framer.next(&buf[at..], &init.format).unwrap() {
                    at += len;
                    if let rfb::ServerItem::Rect { width, height, encoding: 0, .. } = item {
                        pixels += width as usize * height as usize;
                    }
                    if pixels > 0 && framer.at_boundary() {
                        break 'frame;
                    }
                }
            }
        }
        eprintln!("a frame of {pixels} pixels ({} bytes) in {:?}", buf.len(), t0.elapsed());
        (addr.clone(), (full, resumed))
    });
    eprintln!(
        "host call (GET /v1/host) over mTLS: {:?} with a full handshake, {:?} with a resumed session",
        figures.0, figures.1
    );

    // The VM's VNC from the second host: only VeNCrypt, and no TLS without the certificate.
    let (ip, port) = vnc.rsplit_once(':').unwrap();
    let probe = |expect: &str, cert: &[&Path]| {
        let out = lab
            .host_cmd(ATTACKER, "python3")
            .args(["-c", VNC_PROBE, ip, port])
            .arg(&pki.ca)
            .arg(expect)
            .args(cert)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "expected {expect}: {text}");
        text
    };
    let text = probe("refused", &[]);
    assert!(text.contains("security types [19]"), "{text}");
    probe("challenge", &[&pki.client_cert, &pki.client_key]);
}
