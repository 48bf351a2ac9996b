//! Logins end to end in a lab: the real `bootserver serve` on the bridge (hellos bound by ARP),
//! a real `server-host` with the desktop template, and PCs played by lab hosts that speak the
//! agent protocol over TLS from their own addresses. With `[pcs]` rules by MAC:
//!
//! - PC 1 (login) gets the login screen; a wrong password brings it back with the message; the
//!   right one gives `logged_in` and a desktop;
//! - the same person at PC 2 gets the same VM (no second one), and PC 1 is sent back to its
//!   login screen, told where they went;
//! - a logout on PC 2 brings its login screen back while the VM runs on; after the grace period
//!   (3 s here) the VM stops;
//! - an account whose template no host has is told so on the login screen, and nothing starts;
//! - PC 3 (disabled) is refused; PC 4 (kiosk) gets a one-time desktop with no login, which
//!   stops once the PC has been gone `kiosk_grace_secs`, and its disks are gone from the host.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::agent::{AgentMessage, BrokerMessage};
use testkit::{Agent, KillOnDrop, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_bootserver");
const SUBNET: &str = "10.88.0";
const ADMIN: &str = "127.0.0.1:7001";
const HOST_API: &str = "https://127.0.0.1:8470";
const PASSWORD: &str = "alice's password";
/// Under TCG a desktop VM takes minutes to show its first frame.
const VM_BOOT: Duration = Duration::from_secs(600);

fn sibling_bin(name: &str) -> PathBuf {
    Path::new(BIN).with_file_name(name)
}

fn sh(mut c: Command) -> std::process::Output {
    c.stdin(Stdio::null()).output().expect("running a command")
}

fn host_mac(lab: &Lab, k: u32) -> String {
    let mut c = lab.host_cmd(k, "cat");
    c.arg("/sys/class/net/eth0/address");
    String::from_utf8(sh(c).stdout).unwrap().trim().to_string()
}

fn address(lab: &Lab, k: u32, ip: &str) {
    let mut c = lab.host_cmd(k, "ip");
    c.args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    let out = sh(c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The MACs of lab hosts 1..=n, and the addresses given them (.2, .3, ...).
fn lab_pcs(lab: &Lab, n: u32, subnet: &str) -> (Vec<String>, Vec<String>) {
    let macs: Vec<String> = (1..=n).map(|k| host_mac(lab, k)).collect();
    let ips: Vec<String> = (1..=n).map(|k| format!("{subnet}.{}", k + 1)).collect();
    for k in 1..=n {
        address(lab, k, &ips[k as usize - 1]);
    }
    (macs, ips)
}

/// A real `server-host` in the lab on 127.0.0.1:8470, its state and log in `d`.
fn start_server_host(lab: &Lab, d: &Path, pki: &testkit::HostPki, templates: &Path) -> (testkit::HostVms, KillOnDrop) {
    testkit::lab_server_host(lab, &sibling_bin("server-host"), d, pki, templates).unwrap()
}

fn admin_get(lab: &Lab, state: &Path, path: &str) -> Option<serde_json::Value> {
    let mut c = lab.cmd("curl");
    c.args(["-sf", "-m", "10", "-H", &testkit::admin_auth(state).ok()?]).arg(format!("http://{ADMIN}{path}"));
    let out = sh(c);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The desktops the broker runs, as (user, vm).
fn desktops(lab: &Lab, state: &Path) -> Vec<(String, String)> {
    let v = admin_get(lab, state, "/api/vms").unwrap_or_default();
    v.as_array()
        .map(|a| a.iter().map(|d| (d["user"].as_str().unwrap_or("").to_string(), d["vm"].as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default()
}

fn prompt_message(m: Option<BrokerMessage>) -> (String, Option<String>, Option<String>) {
    match m {
        Some(BrokerMessage::LoginPrompt(p)) => (p.pc, p.message, p.user),
        other => panic!("expected the login screen, got {other:?}"),
    }
}

#[test]
fn people_log_in_roam_log_out_and_pcs_follow_their_policy() {
    let templates = testkit::cache_dir().join("templates");
    assert!(templates.join("desktop").exists(), "no desktop template in the cache: run scripts/build-desktop-template");
    let lab = Lab::with_subnet(0, 4, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("bootserver");
    std::fs::create_dir(d.join("boot")).unwrap();
    let pki = testkit::host_pki(Path::new(BIN), &state, "h1", &["127.0.0.1"]).unwrap();
    let (_vms, _host) = start_server_host(&lab, d, &pki, &templates);

    let (macs, ips) = lab_pcs(&lab, 4, SUBNET);
    let s = lab.server_addr();
    std::fs::write(
        d.join("bootserver.toml"),
        format!(
            r#"interface = "br0"
address = "{s}"
boot_dir = "{}/boot"
state_dir = "{}"
# Old agents may still connect in clear; they must get no login screen.
agent_plain_tcp = true

[pcs]
policy = "login"
[pcs.groups]
front = ["{}"]
[[pcs.rule]]
match = "{}"
policy = "disabled"
[[pcs.rule]]
match = "{}"
policy = "kiosk"
[[pcs.rule]]
match = "@front"
name = "front desk"

[desktops]
levels_mib = [256, 128]
template = "desktop"
health_interval_secs = 1
disconnect_grace_secs = 3
kiosk_grace_secs = 2
stop_deadline_secs = 10
switch_timeout_secs = 400

[[desktops.hosts]]
name = "h1"
url = "{HOST_API}"
memory_mib = 512
"#,
            d.display(),
            state.display(),
            macs[1].to_uppercase(),
            macs[2],
            macs[3],
        ),
    )
    .unwrap();
    for extra in [&[][..], &["--template", "no-such-template"][..]] {
        let name = if extra.is_empty() { "alice" } else { "oddie" };
        let mut add = Command::new(BIN);
        add.args(["user", "add", name, "--password-stdin", "--state-dir"]).arg(&state).args(extra).env("RUST_LOG", "warn");
        add.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut child = add.spawn().unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(child.wait().unwrap().success(), "bootserver user add {name}");
    }

    let log = d.join("serve.log");
    let cfg = d.join("bootserver.toml");
    let _serve = testkit::serve_admin(lab.cmd(BIN), &["--config", cfg.to_str().unwrap()], &state, &d.join("boot"), ADMIN, &log).unwrap();
    let logs = || {
        let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
        format!("boot server:\n{}\nserver-host:\n{}", read("serve.log"), read("server-host.log"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !admin_get(&lab, &state, "/api/hosts").is_some_and(|b| b.to_string().contains("\"up\":true")) {
        assert!(Instant::now() < deadline, "the broker never saw server-host up:\n{}", logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let ca = state.join("ca/ca.pem");
    let broker: SocketAddr = format!("{s}:7000").parse().unwrap();
    let welcome = |a: &Agent| {
        assert!(matches!(a.next(Duration::from_secs(10), "welcome", &logs), Some(BrokerMessage::Welcome(_))));
    };
    let short = Duration::from_secs(10);

    // PC 1: the login screen, named after its MAC; a wrong password, then the right one.
    let pc1 = Agent::start(&lab, 1, broker, &ca, &macs[0], &ips[0]);
    welcome(&pc1);
    let (name, message, _) = prompt_message(pc1.next(short, "the login screen", &logs));
    let m = macs[0].replace(':', "");
    assert_eq!((name, message), (format!("pc-{}", &m[6..]), None));
    pc1.login("alice", "not alice's password");
    let (_, message, user) = prompt_message(pc1.next(short, "the answer to a wrong password", &logs));
    assert_eq!((message.as_deref(), user.as_deref()), (Some("wrong user name or password"), Some("alice")));
    assert!(desktops(&lab, &state).is_empty(), "a wrong password started a desktop");
    // A template the host does not have: said on the screen, nothing started.
    pc1.login("oddie", PASSWORD);
    assert!(matches!(pc1.next(short, "logged_in", &logs), Some(BrokerMessage::LoggedIn(_))));
    let (_, message, _) = prompt_message(pc1.next(short, "the answer to a missing template", &logs));
    let message = message.unwrap_or_default();
    assert!(message.contains("\"no-such-template\" is not installed"), "{message}");
    assert!(desktops(&lab, &state).is_empty(), "a login with a missing template started a desktop");
    pc1.login("alice", PASSWORD);
    match pc1.next(short, "logged_in", &logs) {
        Some(BrokerMessage::LoggedIn(l)) => assert_eq!((l.user.as_str(), l.logout_keys.as_str()), ("alice", "Ctrl+Alt+End")),
        other => panic!("expected logged_in, got {other:?}\n{}", logs()),
    }
    let t0 = Instant::now();
    assert!(matches!(pc1.next(VM_BOOT, "alice's desktop", &logs), Some(BrokerMessage::Assignment(_))), "{}", logs());
    eprintln!("cold login to assignment: {:.1} s", t0.elapsed().as_secs_f64());
    let first = desktops(&lab, &state);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, "user:alice");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("login of alice at {} failed", macs[0])), "the failure is not logged");
    assert!(!text.contains("not alice's password") && !text.contains(PASSWORD), "a password reached the log");

    // PC 2 (named by its group's rule): alice again. Same VM at once; PC 1 is told.
    let pc2 = Agent::start(&lab, 2, broker, &ca, &macs[1], &ips[1]);
    welcome(&pc2);
    assert_eq!(prompt_message(pc2.next(short, "the login screen", &logs)).0, "front desk");
    let t0 = Instant::now();
    pc2.login("alice", PASSWORD);
    assert!(matches!(pc2.next(short, "logged_in", &logs), Some(BrokerMessage::LoggedIn(_))));
    assert!(matches!(pc2.next(short, "the roaming desktop", &logs), Some(BrokerMessage::Assignment(_))), "{}", logs());
    eprintln!("roaming login to assignment: {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    let (_, message, _) = prompt_message(pc1.next(short, "PC 1 back to its login screen", &logs));
    assert_eq!(message.as_deref(), Some("alice logged in at front desk; this PC was logged out"));
    assert_eq!(desktops(&lab, &state), first, "roaming changed the desktops");

    // Logout at PC 2: the screen comes back, the VM keeps running through the grace period...
    pc2.send(AgentMessage::Logout);
    let (_, message, _) = prompt_message(pc2.next(short, "the screen after logout", &logs));
    assert_eq!(message.as_deref(), Some("logged out"));
    let t_out = Instant::now();
    assert_eq!(desktops(&lab, &state), first, "the desktop stopped at once");
    // ... then stops.
    while desktops(&lab, &state).iter().any(|(u, _)| u == "user:alice") {
        assert!(t_out.elapsed() < Duration::from_secs(120), "alice's desktop never stopped\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    let stopped = t_out.elapsed();
    assert!(stopped >= Duration::from_secs(3), "stopped before the grace period ended: {stopped:?}");
    eprintln!("desktop stopped {:.1} s after the logout (grace 3 s)", stopped.as_secs_f64());

    // PC 3 is disabled: refused in answer to its hello.
    let pc3 = Agent::start(&lab, 3, broker, &ca, &macs[2], &ips[2]);
    match pc3.next(short, "the refusal", &logs) {
        Some(BrokerMessage::Refused { reason }) => assert_eq!(reason, "this PC is disabled by the administrator"),
        other => panic!("the disabled PC got {other:?}"),
    }
    assert_eq!(pc3.next(short, "the end of the connection", &logs), None);

    // PC 4 is a kiosk: a desktop of its own, no login screen.
    let pc4 = Agent::start(&lab, 4, broker, &ca, &macs[3], &ips[3]);
    welcome(&pc4);
    match pc4.next(VM_BOOT, "the kiosk's desktop", &logs) {
        Some(BrokerMessage::Assignment(_)) => {}
        other => panic!("the kiosk got {other:?}\n{}", logs()),
    }
    assert_eq!(desktops(&lab, &state).iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(), vec![macs[3].clone()]);
    let kiosk = admin_get(&lab, &state, "/api/vms").unwrap();
    assert_eq!(kiosk[0]["one_time"], true, "{kiosk}");
    // A login from the kiosk is not taken.
    pc4.login("alice", PASSWORD);
    assert_eq!(pc4.quiet(Duration::from_secs(2)), None, "the kiosk answered a login");

    // An agent on plain TCP at a login PC (let in by agent_plain_tcp) is told why it gets no
    // login screen, and a login it sends anyway (a password in clear) is not taken.
    drop(pc1);
    let plain = Agent::start_plain(&lab, 1, broker, &macs[0], &ips[0]);
    welcome(&plain);
    match plain.next(short, "the message instead of a login screen", &logs) {
        Some(BrokerMessage::Command(proto::agent::Command::ShowMessage { text })) => {
            assert!(text.contains("encrypted connection"), "{text}")
        }
        other => panic!("a plain-TCP agent at a login PC got {other:?}\n{}", logs()),
    }
    plain.login("alice", PASSWORD);
    assert_eq!(plain.quiet(Duration::from_secs(2)), None, "a login over plain TCP was answered");
    drop(pc2);

    // The kiosk is switched off: its desktop stops after the kiosk grace, its disks go.
    let owner = format!("t{}", macs[3].replace(':', "-"));
    let disks = |lab: &Lab| {
        let mut c = lab.cmd("curl");
        c.args(["-sf", "-m", "10"]).args(pki.curl_args()).arg(format!("{HOST_API}/v1/users/{owner}"));
        let out = sh(c);
        assert!(out.status.success(), "GET /v1/users/{owner}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert!(disks(&lab)["data_disk_size"].is_u64(), "the kiosk's desktop has no data disk of its own: {}", disks(&lab));
    drop(pc4);
    let t_off = Instant::now();
    while !desktops(&lab, &state).is_empty() {
        assert!(t_off.elapsed() < Duration::from_secs(120), "the kiosk's desktop never stopped\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The desktop leaves the broker's list first; its VM then powers off and its disks go.
    loop {
        let left = disks(&lab);
        if left["vms"] == serde_json::json!([]) && left["data_disk_size"].is_null() && left["os_overlays"] == serde_json::json!([]) {
            break;
        }
        assert!(t_off.elapsed() < Duration::from_secs(120), "the kiosk's disks stayed: {left}\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("kiosk desktop stopped and thrown away {:.1} s after the PC went (grace 2 s)", t_off.elapsed().as_secs_f64());
}

/// The real `bootserver` command against the running serve, in the lab.
fn cli(lab: &Lab, state: &Path, args: &[&str]) -> (bool, String) {
    let mut c = lab.cmd(BIN);
    // The flags before the subcommand's own words (`client MAC approve`).
    c.arg(args[0]).arg("--state-dir").arg(state).args(&args[1..]);
    c.env("BOOTSERVER_ADMIN", ADMIN).env("RUST_LOG", "warn");
    let out = sh(c);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn approval_code(m: Option<BrokerMessage>, logs: &dyn Fn() -> String) -> String {
    match m {
        Some(BrokerMessage::Approval { code, .. }) => code,
        other => panic!("expected the approval screen, got {other:?}\n{}", logs()),
    }
}

/// `[pcs] enrolment = "approve"` with PCs played by lab hosts over TLS: a new PC waits with a
/// code (no desktop, its logins ignored), keeps the code across a reconnect, and moves on to its
/// login screen on the same connection once approved with the real CLI; a denied PC is refused,
/// then and at every later hello; a PC is approved by its code.
#[test]
fn new_pcs_wait_for_approval_and_move_on_without_a_reboot() {
    let templates = testkit::cache_dir().join("templates");
    assert!(templates.join("desktop").exists(), "no desktop template in the cache: run scripts/build-desktop-template");
    let subnet = "10.89.0";
    let lab = Lab::with_subnet(0, 3, subnet).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("bootserver");
    let pki = testkit::host_pki(Path::new(BIN), &state, "h1", &["127.0.0.1"]).unwrap();
    let (_vms, _host) = start_server_host(&lab, d, &pki, &templates);
    let (macs, ips) = lab_pcs(&lab, 3, subnet);
    let s = lab.server_addr();
    std::fs::write(
        d.join("bootserver.toml"),
        format!(
            r#"interface = "br0"
address = "{s}"
state_dir = "{}"

[pcs]
policy = "login"
enrolment = "approve"

{}"#,
            state.display(),
            testkit::desktops_toml(HOST_API, 512),
        ),
    )
    .unwrap();
    let log = d.join("serve.log");
    let cfg = d.join("bootserver.toml");
    let _serve = testkit::serve_admin(lab.cmd(BIN), &["--config", cfg.to_str().unwrap()], &state, &d.join("boot"), ADMIN, &log).unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ca = state.join("ca/ca.pem");
    let broker: SocketAddr = format!("{s}:7000").parse().unwrap();
    let short = Duration::from_secs(10);
    let welcome = |a: &Agent| {
        assert!(matches!(a.next(short, "welcome", &logs), Some(BrokerMessage::Welcome(_))), "{}", logs());
    };

    // PC 1: the approval screen with a code; the admin API shows it pending with that code.
    let pc1 = Agent::start(&lab, 1, broker, &ca, &macs[0], &ips[0]);
    welcome(&pc1);
    let code1 = approval_code(pc1.next(short, "the approval screen", &logs), &logs);
    assert!(code1.len() == 7 && !code1.contains(['0', 'O', '1', 'I']), "{code1}");
    let row = admin_get(&lab, &state, &format!("/api/clients/{}", macs[0])).expect("GET /api/clients/MAC");
    assert_eq!(row["enrolment"]["state"], "pending", "{row}");
    assert_eq!(row["enrolment"]["code"], code1.as_str(), "{row}");
    assert_eq!(row["enrolment"]["first_from"], ips[0].as_str(), "{row}");
    // A login from the approval screen is not taken, and no desktop runs.
    pc1.login("alice", "whatever");
    assert_eq!(pc1.quiet(Duration::from_secs(2)), None, "a pending PC's login was answered");
    assert!(desktops(&lab, &state).is_empty(), "a pending PC has a desktop");

    // PC 2 gets a code of its own; `bootserver clients` shows both pending with their codes.
    let pc2 = Agent::start(&lab, 2, broker, &ca, &macs[1], &ips[1]);
    welcome(&pc2);
    let code2 = approval_code(pc2.next(short, "the approval screen", &logs), &logs);
    assert_ne!(code1, code2);
    let (ok, table) = cli(&lab, &state, &["clients"]);
    assert!(ok, "{table}");
    assert!(table.contains(&format!("pending {code1}")) && table.contains(&format!("pending {code2}")), "{table}");

    // PC 3 keeps its code when it comes back (a reboot), then is approved by that code.
    let pc3 = Agent::start(&lab, 3, broker, &ca, &macs[2], &ips[2]);
    welcome(&pc3);
    let code3 = approval_code(pc3.next(short, "the approval screen", &logs), &logs);
    drop(pc3);
    let pc3 = Agent::start(&lab, 3, broker, &ca, &macs[2], &ips[2]);
    welcome(&pc3);
    assert_eq!(approval_code(pc3.next(short, "the approval screen again", &logs), &logs), code3);

    // Approval with the real CLI: PC 1's login screen comes on the same connection.
    let t0 = Instant::now();
    let (ok, out) = cli(&lab, &state, &["client", &macs[0], "approve"]);
    assert!(ok, "{out}");
    let (name, message, _) = prompt_message(pc1.next(short, "the login screen after approval", &logs));
    eprintln!("approval to login screen: {:.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    assert_eq!((name.starts_with("pc-"), message), (true, None));
    let row = admin_get(&lab, &state, &format!("/api/clients/{}", macs[0])).unwrap();
    assert_eq!(row["enrolment"]["state"], "approved", "{row}");
    assert_eq!(row["boots"], 1, "approval took a new boot: {row}");
    assert!(row["enrolment"].get("code").is_none(), "{row}");

    // Deny PC 2 through the API: refused on its live connection, which ends, and at its next hello.
    let mut c = lab.cmd("curl");
    c.args(["-sf", "-m", "10", "-X", "POST", "-H", "Content-Type: application/json", "-d", "{\"by\":\"test\"}"])
        .args(["-H", &testkit::admin_auth(&state).unwrap()])
        .arg(format!("http://{ADMIN}/api/clients/{}/deny", macs[1]));
    let out = sh(c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = |m: Option<BrokerMessage>| match m {
        Some(BrokerMessage::Refused { reason }) => assert!(reason.contains("denied"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}\n{}", logs()),
    };
    refused(pc2.next(short, "the refusal", &logs));
    assert_eq!(pc2.next(short, "the end of the connection", &logs), None);
    let pc2 = Agent::start(&lab, 2, broker, &ca, &macs[1], &ips[1]);
    refused(pc2.next(short, "the refusal of the next hello", &logs));

    // Approval by code (typed in lower case, no dash) with the CLI; a wrong code is an error.
    let (ok, out) = cli(&lab, &state, &["enrol", "2345ZZ"]);
    assert!(!ok && out.contains("no PC waits with code"), "{out}");
    let (ok, out) = cli(&lab, &state, &["enrol", &code3.to_lowercase().replace('-', "")]);
    assert!(ok, "{out}");
    prompt_message(pc3.next(short, "PC 3's login screen", &logs));
    // Pre-enrolment: a MAC never seen, approved beforehand.
    let (ok, out) = cli(&lab, &state, &["client", "52:54:00:89:00:99", "approve"]);
    assert!(ok && out.contains("approved"), "{out}");
    assert!(desktops(&lab, &state).is_empty());
    let text = logs();
    for (mac, verb) in [(&macs[0], "approved"), (&macs[1], "denied"), (&macs[2], "approved")] {
        assert!(text.contains(&format!("enrolment: {mac} {verb} by")), "no log line for {mac} {verb}");
    }
}
