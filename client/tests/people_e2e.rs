//! People, not PCs, in the lab with real QEMU PCs: two PCs network-boot into the login screen
//! of one boot server whose broker starts desktops on one real `server-host`, and the keys are
//! typed on the PCs' keyboards (QMP `send-key`). One test, sharing the PCs and the host across
//! its steps:
//!
//! 1. Refusals on PC 2: a wrong password, a disabled account and an unknown name each show
//!    their message on the PC's screen (its serial console) and start no VM.
//! 2. alice logs in on PC 1 and writes a file on her data disk (through her VM's serial
//!    console), logs out with Ctrl+Alt+End; bob logs in on PC 1 and does not see the file.
//! 3. alice logs in on PC 2, once her first desktop has stopped, and finds her file.
//! 4. While alice is on PC 2 she logs in on PC 1: PC 2 returns to its login screen, and only one
//!    VM of hers runs (the broker's desktops and the host's own VM list).
//! 0. Enrolment (`enrolment = "approve"`): PC 1 and the kiosk are approved before they are
//!    ever seen; PC 2 is not: it shows its approval code and starts no VM, and once the real
//!    CLI approves that code it shows its login screen with no reboot.
//!
//! Along the way PC 1's boot-stage report (`/api/clients/{mac}`) must list its stages in order,
//! from the DHCP offer to the login.
//!
//! 5. LDAP: erin, a user of Debian's slapd (in a second lab host, over ldaps:// with its own
//!    CA) whose group gives one-time desktops, logs in on PC 1 by typed keys; her desktop is
//!    one-time: a file written there is gone at her next login.
//! 6. PC 2 is switched off and a kiosk PC boots on its wire: a desktop with no login, one-time;
//!    a file is written on it, the PC is reset (a fresh boot), and the new desktop has no file.
//!
//! Needs root (network namespaces), qemu-system-x86_64, the static agent
//! (scripts/build-client), the kernel and desktop template in `.cache`. Subnet 10.94.0.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const PC1: &str = "52:54:00:94:00:01";
const PC2: &str = "52:54:00:94:00:02";
const KIOSK: &str = "52:54:00:94:00:09";
const ADMIN: &str = "127.0.0.1:7001";
const HOST_API: &str = "127.0.0.1:8470";
const WAIT: Duration = Duration::from_secs(600);

/// `server-host` inside the lab; dropping it kills it and every QEMU of its state folder
/// (QEMU daemonizes, so killing server-host alone would leave the guests running).
struct Host {
    proc: KillOnDrop,
    state: PathBuf,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(2));
        for pid in testkit::server_host_qemu_pids(&self.state) {
            // SAFETY: kill(2) on a QEMU of this test's server-host state folder.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

struct Scenario<'a> {
    lab: &'a Lab,
    dir: PathBuf,
    auth: String,
    pki: testkit::HostPki,
}

impl Scenario<'_> {
    fn admin(&self, path: &str) -> serde_json::Value {
        let out = self
            .lab
            .cmd("curl")
            .args(["-sf", "-m", "10", "-H", &self.auth])
            .arg(format!("http://{ADMIN}/api/{path}"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "GET /api/{path}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("/api/{path}: {e}"))
    }

    /// POSTs JSON `body` to the admin API.
    fn post(&self, path: &str, body: &str) -> serde_json::Value {
        let out = self
            .lab
            .cmd("curl")
            .args(["-sf", "-m", "10", "-X", "POST", "-H", "Content-Type: application/json", "-d", body, "-H", &self.auth])
            .arg(format!("http://{ADMIN}/api/{path}"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "POST /api/{path}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The broker's desktops of orchestrator user `user`.
    fn desktops_of(&self, user: &str) -> Vec<serde_json::Value> {
        self.admin("vms").as_array().unwrap().iter().filter(|d| d["user"] == user).cloned().collect()
    }

    /// The host's own VMs of its user `owner`.
    fn host_vms_of(&self, owner: &str) -> Vec<String> {
        let out = self
            .lab
            .cmd("curl")
            .args(["-sf", "-m", "10"])
            .args(self.pki.curl_args())
            .arg(format!("https://{HOST_API}/v1/vms"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "GET /v1/vms: {}", String::from_utf8_lossy(&out.stderr));
        let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        vms.as_array().unwrap().iter().filter(|v| v["user"] == owner).map(|v| v["name"].as_str().unwrap().to_string()).collect()
    }

    /// Waits until `user` has a desktop whose VM is not `not`; returns the VM.
    fn wait_desktop(&self, user: &str, not: Option<&str>) -> String {
        let t = Instant::now();
        while t.elapsed() < WAIT {
            if let Some(d) = self.desktops_of(user).first() {
                let vm = d["vm"].as_str().unwrap().to_string();
                if Some(vm.as_str()) != not {
                    return vm;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{user} got no desktop within {WAIT:?}; logs in {}", self.dir.display());
    }

    fn wait_no_desktop(&self, user: &str) {
        let t = Instant::now();
        while t.elapsed() < WAIT {
            if self.desktops_of(user).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{user}'s desktop never stopped; logs in {}", self.dir.display());
    }

    /// Runs `cmd` in the VM's serial-console shell once its data disk is mounted; its output's
    /// last line.
    fn console(&self, vm: &str, cmd: &str) -> String {
        let sock = self.dir.join("server-host/vms").join(vm).join("console.sock");
        let full = format!("n=0; until grep -q ' /data ' /proc/mounts || [ $n -ge 300 ]; do sleep 1; n=$((n+1)); done; {cmd}");
        let out = Command::new(testkit::repo_root().join("scripts/lab-probe"))
            .arg("console")
            .arg(&sock)
            .arg(&full)
            .arg("600")
            .output()
            .expect("scripts/lab-probe");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{cmd} in {vm}: {text} {}", String::from_utf8_lossy(&out.stderr));
        text.lines().last().unwrap_or_default().to_string()
    }

    fn power_on(&self, name: &str, mac: &str, tap: u32) -> Pc {
        let qmp = self.dir.join(format!("{name}.qmp"));
        let serial = self.dir.join(format!("{name}-serial.log"));
        let _ = std::fs::remove_file(&serial);
        let proc = KillOnDrop::spawn(
            self.lab
                .cmd("qemu-system-x86_64")
                .args(testkit::accel_args())
                .args(["-m", "128", "-boot", "n", "-vga", "std", "-display", "none"])
                .arg("-netdev")
                .arg(format!("tap,id=n0,ifname=tap{tap},script=no,downscript=no"))
                .arg("-device")
                .arg(format!("e1000,netdev=n0,mac={mac}"))
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()))
                .arg("-serial")
                .arg(format!("file:{}", serial.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.dir.join(format!("{name}-qemu.log"))).unwrap()),
        )
        .expect("starting a PC");
        Pc { proc, qmp, serial }
    }
}

struct Pc {
    proc: KillOnDrop,
    qmp: PathBuf,
    serial: PathBuf,
}

impl Pc {
    /// Types `text` on the PC's keyboard (US layout, `\t` and `\n` as Tab and Enter).
    fn typ(&self, text: &str) {
        let st = Command::new(testkit::repo_root().join("scripts/screen")).arg("type").arg(&self.qmp).arg(text).status().unwrap();
        assert!(st.success(), "typing on {}", self.qmp.display());
    }

    /// Logs `user` in: Escape first, since the form keeps the last name after a refusal and
    /// waits in the password field.
    fn login(&self, user: &str, password: &str) {
        self.keys(&["esc"]);
        self.typ(&format!("{user}\t{password}\n"));
    }

    /// A QMP command with `arguments`.
    fn qmp(&self, execute: &str, arguments: serde_json::Value) {
        let s = UnixStream::connect(&self.qmp).unwrap_or_else(|e| panic!("{}: {e}", self.qmp.display()));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        // The greeting, then each command's answer; events in between are skipped.
        let answer = |r: &mut BufReader<UnixStream>| loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "QEMU closed its monitor");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("return").is_some() || v.get("QMP").is_some() {
                return;
            }
            assert!(v.get("error").is_none(), "QMP {execute}: {line}");
        };
        answer(&mut r);
        writeln!(w, "{}", serde_json::json!({"execute": "qmp_capabilities"})).unwrap();
        answer(&mut r);
        writeln!(w, "{}", serde_json::json!({"execute": execute, "arguments": arguments})).unwrap();
        answer(&mut r);
    }

    fn keys(&self, keys: &[&str]) {
        let keys: Vec<_> = keys.iter().map(|k| serde_json::json!({"type": "qcode", "data": k})).collect();
        self.qmp("send-key", serde_json::json!({ "keys": keys }));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the serial log holds `needle` at least `n` times.
    fn wait_for(&self, needle: &str, n: usize) -> String {
        let t = Instant::now();
        while t.elapsed() < WAIT {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = self.log();
        panic!("{needle:?} (x{n}) never showed on {}:\n{}", self.serial.display(), &log[log.len().saturating_sub(3000)..]);
    }
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn run(cmd: &mut Command, stdin: &str) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn people_log_in_roam_and_are_refused_and_kiosks_forget() {
    let bin = Path::new(env!("CARGO_BIN_EXE_thinclient")).parent().unwrap().to_path_buf();
    for b in ["bootserver", "server-host", "initramfs"] {
        assert!(bin.join(b).exists(), "{} is missing: build the workspace binaries", bin.join(b).display());
    }
    let client = testkit::repo_root().join("target/x86_64-unknown-linux-gnu/release/thinclient");
    assert!(client.exists(), "{} is missing: run scripts/build-client", client.display());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let cache = testkit::cache_dir();
    let state = dir.join("bootserver");
    let bootserver = bin.join("bootserver");

    // The CA, the host's and the broker's certificates, the boot image that trusts the CA.
    let ca = testkit::ca_init(&bootserver, &state).unwrap();
    let pki = testkit::host_pki(&bootserver, &state, "h1", &["127.0.0.1"]).unwrap();
    write_file(
        &dir.join("image.toml"),
        &format!(
            "compression = \"zstd\"\ninit = \"{}\"\nca_cert = \"{}\"\n[modules]\nnames = [\"e1000\", \"bochs\", \"evdev\"]\n\
             {}[[devices]]\npath = \"/dev/console\"\nkind = \"char\"\nmajor = 5\nminor = 1\nmode = 0o600\n",
            client.display(),
            ca.display(),
            ["/proc", "/sys", "/dev", "/etc", "/run"].iter().map(|d| format!("[[dirs]]\npath = \"{d}\"\n")).collect::<String>()
                + "[[dirs]]\npath = \"/tmp\"\nmode = 0o1777\n"
        ),
    );
    let image = dir.join("thinclient.img");
    let st = Command::new(bin.join("initramfs"))
        .args(["build", "--config"])
        .arg(dir.join("image.toml"))
        .arg("--out")
        .arg(&image)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success(), "initramfs build");

    // Accounts: alice and bob, carol disabled.
    for (name, pw) in [("alice", "alice-pass-1"), ("bob", "bob-pass-22"), ("carol", "carol-pass-333")] {
        run(Command::new(&bootserver).args(["user", "add", name, "--password-stdin", "--state-dir"]).arg(&state), &format!("{pw}\n"));
    }
    run(Command::new(&bootserver).args(["user", "disable", "carol", "--state-dir"]).arg(&state), "");

    let lab = Lab::with_subnet(2, 1, "10.94.0").unwrap();
    let s = lab.server_addr();
    // The directory: erin in the group "once" (one-time desktops), in lab host 1.
    let slapd_ip = format!("{}.2", lab.subnet);
    let ldap_dir = dir.join("slapd");
    let ldap_ca = testkit::ldap::directory(&ldap_dir, &slapd_ip, &[("erin", "erin-pass-4444")], &[("once", &["erin"])]).unwrap();
    let st = lab.host_cmd(1, "ip").args(["addr", "add", &format!("{slapd_ip}/24"), "dev", "eth0"]).status().unwrap();
    assert!(st.success());
    let _slapd = testkit::ldap::slapd(&lab, 1, &ldap_dir, &slapd_ip, &dir.join("slapd.log")).unwrap();
    let sh_cfg = dir.join("server-host.toml");
    write_file(&sh_cfg, &testkit::server_host_config(&pki.tls_dir, HOST_API, &dir.join("server-host"), &cache.join("templates")));
    let host = Host {
        proc: KillOnDrop::spawn(
            lab.cmd(bin.join("server-host"))
                .args(["serve", "--config"])
                .arg(&sh_cfg)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("server-host.log")).unwrap()),
        )
        .unwrap(),
        state: dir.join("server-host"),
    };
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let bs_cfg = dir.join("bootserver.toml");
    write_file(
        &bs_cfg,
        &format!(
            r#"interface = "br0"
address = "{s}"
range = "{subnet}.100-{subnet}.150"
boot_dir = "{boot}"
state_dir = "{state}"
kernel = "{cache}/kernel/vmlinuz"
initrd = "{image}"
cmdline = "console=ttyS0 tc.error_delay=5"

[pcs]
policy = "login"
enrolment = "approve"

[[pcs.rule]]
match = "{PC1}"
name = "pc-one"
[[pcs.rule]]
match = "{PC2}"
name = "pc-two"
[[pcs.rule]]
match = "{KIOSK}"
policy = "kiosk"

[auth]
backends = ["local", "ldap"]
[auth.ldap]
url = "ldaps://{slapd_ip}"
user_dn = "uid={{user}},ou=people,{suffix}"
group_base = "ou=groups,{suffix}"
ca_file = "{ldap_ca}"
[[auth.ldap.group]]
name = "once"
desktop = "one-time"

[desktops]
# One level: no handoffs, which would only slow the steps down here.
levels_mib = [160]
template = "desktop"
health_interval_secs = 2
switch_timeout_secs = 400
stop_deadline_secs = 10
# A desktop stops soon after its logout, so that the next login starts it again from its disk.
disconnect_grace_secs = 3
kiosk_grace_secs = 3

[[desktops.hosts]]
name = "h1"
url = "https://{HOST_API}"
memory_mib = 800
"#,
            subnet = lab.subnet,
            boot = dir.join("boot").display(),
            state = state.display(),
            cache = cache.display(),
            image = image.display(),
            suffix = testkit::ldap::SUFFIX,
            ldap_ca = ldap_ca.display(),
        ),
    );
    let bs_log = dir.join("bootserver.log");
    let _server = KillOnDrop::spawn(
        lab.cmd(&bootserver)
            .args(["serve", "--config"])
            .arg(&bs_cfg)
            .env("BOOTSERVER_ADMIN", ADMIN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&bs_log).unwrap()),
    )
    .unwrap();
    testkit::wait_for_text(&bs_log, "admin API on", Duration::from_secs(60)).unwrap();
    let sc = Scenario { auth: testkit::admin_auth(&state).unwrap(), lab: &lab, dir: dir.clone(), pki };
    let t = Instant::now();
    while !sc.admin("hosts").to_string().contains("\"up\":true") {
        assert!(t.elapsed() < Duration::from_secs(60), "the host never came up");
        std::thread::sleep(Duration::from_millis(500));
    }

    // 0. Enrolment: PC 1 and the kiosk approved ahead, PC 2 waits with its code.
    for mac in [PC1, KIOSK] {
        sc.post(&format!("clients/{mac}/approve"), "{}");
    }
    let t0 = Instant::now();
    let pc1 = sc.power_on("pc1", PC1, 0);
    let mut pc2 = sc.power_on("pc2", PC2, 1);
    pc1.wait_for("login screen reads", 1);
    let log = pc2.wait_for("== Waiting for approval ==", 1);
    let code: String = log.split("Code: ").nth(1).expect("the approval screen shows a code").chars().take(7).collect();
    let entry = sc.admin(&format!("clients/{PC2}"));
    assert_eq!(entry["enrolment"]["state"], "pending", "{entry}");
    assert_eq!(entry["enrolment"]["code"], code.as_str(), "{entry}");
    assert_eq!(sc.admin("vms"), serde_json::json!([]), "a PC waiting for approval started a desktop");
    let out = sc
        .lab
        .cmd(&bootserver)
        .args(["enrol", &code, "--state-dir"])
        .arg(&state)
        .env("BOOTSERVER_ADMIN", ADMIN)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "bootserver enrol {code}: {}", String::from_utf8_lossy(&out.stderr));
    pc2.wait_for("pc-two (enrolled): waiting for a login", 1);
    let entry = sc.admin(&format!("clients/{PC2}"));
    assert_eq!(entry["enrolment"]["state"], "approved", "{entry}");
    assert_eq!(entry["boots"], 1, "PC 2 rebooted to move on: {entry}");
    eprintln!("people: PC 2 waited with code {code}, no VM; approved by the CLI, it shows its login screen with no reboot");
    eprintln!("people: both PCs show their login screens after {:.0} s", t0.elapsed().as_secs_f64());

    // 1. Refusals, each with its message and no VM.
    pc2.login("alice", "wrong-password");
    pc2.wait_for("pc-two (enrolled): wrong user name or password", 1);
    pc2.login("carol", "carol-pass-333");
    pc2.wait_for("pc-two (enrolled): this account is disabled", 1);
    pc2.login("zed", "some-password");
    pc2.wait_for("pc-two (enrolled): wrong user name or password", 2);
    assert_eq!(sc.admin("vms"), serde_json::json!([]), "a refused login started a desktop");
    assert_eq!(sc.host_vms_of("user-carol").len() + sc.host_vms_of("user-zed").len() + sc.host_vms_of("user-alice").len(), 0);
    eprintln!("people: wrong password, disabled account and unknown user refused on PC 2, no VM");

    // 2. alice on PC 1 writes a note, logs out; bob on PC 1 does not see it.
    let t = Instant::now();
    pc1.login("alice", "alice-pass-1");
    let alice_vm = sc.wait_desktop("user:alice", None);
    // No quote in it: the command goes to the guest's shell inside single quotes.
    let note = format!("note-of-alice-{}", std::process::id());
    assert_eq!(sc.console(&alice_vm, &format!("echo '{note}' >/data/alice-note && sync && cat /data/alice-note")), note);
    eprintln!("people: alice's desktop {alice_vm} on PC 1 in {:.0} s; note written", t.elapsed().as_secs_f64());
    assert_eq!(sc.desktops_of("user:alice")[0]["one_time"], false);
    // PC 1's boot, stage by stage, up to alice's desktop on its screen (the agent reports its
    // viewer's first frame drawn, which may come a moment after the note).
    let want = ["dhcp_offered", "boot_file", "agent_hello", "login", "desktop_shown"];
    let shown_by = Instant::now() + Duration::from_secs(120);
    let (v, names) = loop {
        let v = sc.admin(&format!("clients/{PC1}"));
        let names: Vec<String> =
            v["stages"]["current"].as_array().into_iter().flatten().map(|s| s["stage"].as_str().unwrap_or("").to_string()).collect();
        if names.iter().any(|n| n == "desktop_shown") || Instant::now() > shown_by {
            break (v, names);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let firsts: Vec<usize> = want.iter().map(|w| names.iter().position(|n| n == w).unwrap_or_else(|| panic!("no {w}: {v}"))).collect();
    assert!(firsts.windows(2).all(|p| p[0] < p[1]), "PC 1's stages out of order: {}", v["stages"]);
    eprintln!("people: PC 1's boot report lists {want:?} in order");
    pc1.keys(&["ctrl", "alt", "end"]);
    pc1.wait_for("pc-one (enrolled): logged out", 1);
    sc.wait_no_desktop("user:alice");
    pc1.login("bob", "bob-pass-22");
    let bob_vm = sc.wait_desktop("user:bob", None);
    assert_eq!(sc.console(&bob_vm, "test -e /data/alice-note && echo PRESENT || echo ABSENT"), "ABSENT");
    eprintln!("people: bob on PC 1 ({bob_vm}) does not see alice's note");

    // 3. alice on PC 2: a new VM on her own disk.
    pc2.login("alice", "alice-pass-1");
    let alice_vm2 = sc.wait_desktop("user:alice", Some(&alice_vm));
    assert_eq!(sc.console(&alice_vm2, "cat /data/alice-note"), note);
    eprintln!("people: alice on PC 2 ({alice_vm2}) finds her note");

    // 4. alice on PC 1 while on PC 2: PC 2 back to its login screen, one VM of hers.
    pc1.keys(&["ctrl", "alt", "end"]);
    pc1.wait_for("pc-one (enrolled): logged out", 2);
    pc1.login("alice", "alice-pass-1");
    pc2.wait_for("alice logged in at pc-one; this PC was logged out", 1);
    let mine = sc.desktops_of("user:alice");
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["vm"], alice_vm2.as_str(), "alice's desktop was not taken over as it ran");
    assert_eq!(sc.host_vms_of("user-alice"), vec![alice_vm2.clone()], "the host runs another VM of alice's");
    eprintln!("people: alice took her desktop to PC 1; PC 2 shows its login screen; one VM of hers");

    // 5. erin, from the directory, on PC 1: her group's one-time desktop forgets her note.
    pc1.keys(&["ctrl", "alt", "end"]);
    pc1.wait_for("pc-one (enrolled): logged out", 3);
    pc1.login("erin", "erin-pass-4444");
    let erin_vm = sc.wait_desktop("user:erin", None);
    assert_eq!(sc.desktops_of("user:erin")[0]["one_time"], true, "erin's group gives one-time desktops");
    let enote = format!("note-of-erin-{}", std::process::id());
    assert_eq!(sc.console(&erin_vm, &format!("echo '{enote}' >/data/erin-note && sync && cat /data/erin-note")), enote);
    pc1.keys(&["ctrl", "alt", "end"]);
    pc1.wait_for("pc-one (enrolled): logged out", 4);
    sc.wait_no_desktop("user:erin");
    pc1.login("erin", "erin-pass-4444");
    let erin_vm2 = sc.wait_desktop("user:erin", Some(&erin_vm));
    assert_eq!(sc.console(&erin_vm2, "test -e /data/erin-note && echo PRESENT || echo ABSENT"), "ABSENT");
    eprintln!("people: erin (LDAP, group once) logged in on PC 1; her note is gone at her next login ({erin_vm} -> {erin_vm2})");

    // 6. A kiosk PC on PC 2's wire: one-time desktop, gone after a reset.
    pc2.proc.stop(Duration::from_secs(2));
    let kiosk = sc.power_on("kiosk", KIOSK, 1);
    let k_vm = sc.wait_desktop(KIOSK, None);
    let d = sc.desktops_of(KIOSK);
    assert_eq!(d[0]["one_time"], true, "{d:?}");
    let knote = format!("kiosk-note-{}", std::process::id());
    assert_eq!(sc.console(&k_vm, &format!("echo '{knote}' >/data/kiosk-note && sync && cat /data/kiosk-note")), knote);
    kiosk.qmp("system_reset", serde_json::json!({}));
    let k_vm2 = sc.wait_desktop(KIOSK, Some(&k_vm));
    assert_eq!(sc.console(&k_vm2, "test -e /data/kiosk-note && echo PRESENT || echo ABSENT"), "ABSENT");
    assert_eq!(sc.host_vms_of(&format!("t{}", KIOSK.replace(':', "-"))), vec![k_vm2.clone()]);
    eprintln!("people: the kiosk's note is gone after its reset ({k_vm} -> {k_vm2}); whole run {:.0} s", t0.elapsed().as_secs_f64());
    drop(host);
}
