//! The admin API attacked from a second host on the lab's bridge, with curl: no token, a
//! foreign Host (what a DNS-rebinding page sends), a form-encoded or text POST (what a
//! cross-site form sends) are refused; the token with the API's own address and JSON works, and
//! so do `bootserver clients` and `bootserver client` with the token file.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::Lab;

const SUBNET: &str = "10.91.0";
const ATTACKER: u32 = 1;

/// curl from the second host: the HTTP status and the body.
fn curl(lab: &Lab, args: &[&str]) -> (u16, String) {
    let out = lab
        .host_cmd(ATTACKER, "curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn bootserver(lab: &Lab, args: &[&str], token_file: &Path) -> std::process::Output {
    lab.cmd(env!("CARGO_BIN_EXE_bootserver"))
        .args(args)
        .arg("--token-file")
        .arg(token_file)
        .env("BOOTSERVER_ADMIN", format!("{SUBNET}.1:7001"))
        .output()
        .expect("bootserver")
}

#[test]
fn admin_api_refuses_no_token_foreign_host_and_forms_from_another_host() {
    let lab = Lab::with_subnet(0, 1, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (state, boot) = (dir.path().join("state"), dir.path().join("boot"));
    let log = dir.path().join("server.log");
    let s = lab.server_addr();
    // Offered to the LAN here on purpose: the attacks come from there.
    let args = ["--interface", "br0", "--address", &s];
    let bin = lab.cmd(env!("CARGO_BIN_EXE_bootserver"));
    let _server = testkit::serve_admin(bin, &args, &state, &boot, &format!("{s}:7001"), &log).unwrap();
    let st = lab.host_cmd(ATTACKER, "ip").args(["addr", "add", &format!("{SUBNET}.2/24"), "dev", "eth0"]).status();
    assert!(st.unwrap().success());

    let token_file = state.join("admin.token");
    let auth = testkit::admin_auth(&state).unwrap();
    let url = format!("http://{s}:7001/api/clients");
    let action = format!("{url}/52:54:00:00:00:91/action");
    // The bridge may take a moment to forward the new host's first packets.
    let t0 = Instant::now();
    while curl(&lab, &[&url]).0 == 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }

    assert_eq!(curl(&lab, &[&url]).0, 401, "no token");
    assert_eq!(curl(&lab, &["-H", "Authorization: Bearer 00000000000000000000000000000000", &url]).0, 401);
    assert_eq!(curl(&lab, &["-X", "POST", "-H", "Content-Type: application/json", "-d", r#"{"action":"reboot"}"#, &action]).0, 401);
    // A page of evil.example rebound to this address: the token would not even be needed to
    // see that it is refused, but with it the Host check alone is what refuses.
    for host in ["evil.example:7001", "evil.example", &format!("{s}:80")] {
        let (code, body) = curl(&lab, &["-H", &auth, "-H", &format!("Host: {host}"), &url]);
        assert_eq!(code, 421, "Host {host}: {body}");
    }
    // What a cross-site form or a simple fetch can send.
    for ct in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
        let (code, body) =
            curl(&lab, &["-H", &auth, "-H", &format!("Content-Type: {ct}"), "-d", r#"{"action":"reboot"}"#, &action]);
        assert_eq!(code, 415, "{ct}: {body}");
    }
    // Correct: the list, and a JSON action that reaches the route (the PC is unknown).
    let (code, body) = curl(&lab, &["-H", &auth, &url]);
    assert_eq!((code, body.as_str()), (200, "[]"));
    let (code, body) =
        curl(&lab, &["-H", &auth, "-H", "Content-Type: application/json", "-d", r#"{"action":"reboot"}"#, &action]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("ever announced itself"), "{body}");

    // The commands read the token file.
    let out = bootserver(&lab, &["clients", "--json"], &token_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = bootserver(&lab, &["client", "52:54:00:00:00:91", "reboot"], &token_file);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ever announced itself"), "{out:?}");
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "ffffffffffffffffffffffffffffffff").unwrap();
    let out = bootserver(&lab, &["clients"], &wrong);
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("admin API: 421 for {SUBNET}.2:")), "{text}");
    assert!(!text.contains(&std::fs::read_to_string(&token_file).unwrap().trim().to_string()), "token logged");
}
