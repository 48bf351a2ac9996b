//! Real guests from the desktop template, driven through server-host's HTTP API. Runs as root
//! with the packages of scripts/setup; guests run under TCG (or KVM when the probe says so).
//! The guests are few and shared across assertions to keep the suite fast.

mod common;

use common::*;
use serde_json::Value;

fn create(h: &Host, name: &str, user: &str, persistent: bool) -> Value {
    let body = format!(
        r#"{{"name":"{name}","template":"desktop","memory_mib":160,"user":"{user}","persistent":{persistent}}}"#
    );
    let (code, v) = h.json("POST", "/vms", Some(&body));
    assert_eq!(code, 201, "creating {name}: {v}\n{}", h.log());
    v
}

fn stop(h: &Host, name: &str) -> Value {
    let (code, v) = h.json("POST", &format!("/vms/{name}/stop"), Some(r#"{"deadline_secs":120}"#));
    assert_eq!(code, 200, "stopping {name}: {v}");
    v
}

#[test]
fn desktops_screens_balloon_restart_crash_and_user_disks() {
    let mut h = Host::start("accel = \"auto\"\nkvm_probe_secs = 20\ndata_disk_mib = 32");
    let state = h.state();
    let templates = templates();

    // Two desktops: a persistent user and a one-time user.
    let a = create(&h, "alice-1", "alice", true);
    let b = create(&h, "bob-1", "bob", false);
    assert_eq!(a["data_disk"], "attached");
    let (_, facts) = h.json("GET", "/host", None);
    assert!(facts["accel"] == "tcg" || facts["accel"] == "kvm", "{facts}");
    assert!(!facts["accel_reason"].as_str().unwrap().is_empty());
    assert_eq!(facts["balloon"], true);
    assert_eq!(facts["memory_committed_mib"], 320);
    assert_eq!(facts["vms"].as_array().unwrap().len(), 2);

    // A duplicate name is refused and leaves the first VM alone.
    let (code, v) = h.json("POST", "/vms", Some(r#"{"name":"alice-1","template":"desktop","memory_mib":160,"user":"carol"}"#));
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already exists"), "{v}");
    assert!(!state.join("users/carol").exists(), "nothing made for a refused request");

    let mut ca = Console::open(&state, "alice-1");
    let mut cb = Console::open(&state, "bob-1");
    ca.wait_ok("grep -q ' /data ' /proc/mounts", 120);
    cb.wait_ok("grep -q ' /data ' /proc/mounts", 120);

    // The screen: QMP screendump and a VNC client both see exactly the template's picture.
    let (code, ppm) = h.get("/vms/alice-1/screen");
    assert_eq!(code, 200);
    let (w, hh, dump) = parse_ppm(&ppm);
    let (ew, eh, expected) = expected_screen(&templates, "alice");
    assert_eq!((w, hh), (ew, eh));
    assert_eq!(diff(&dump, &expected), 0, "screendump differs from the known screen");
    let sock = a["vnc"]["unix"].as_str().unwrap();
    let (vw, vh, frame) = vnc_frame(sock.as_ref(), a["vnc_password"].as_str().unwrap());
    assert_eq!((vw, vh), (ew, eh));
    assert_eq!(diff(&frame, &dump), 0, "VNC frame differs from the screendump");
    // The VNC password is per session: a new one locks the old one out.
    let (code, _) = h.json("POST", "/vms/bob-1/vnc-password", Some(r#"{"password":"s3cret"}"#));
    assert_eq!(code, 204);
    let (_, _, bob_frame) = vnc_frame(b["vnc"]["unix"].as_str().unwrap().as_ref(), "s3cret");
    assert_eq!(diff(&bob_frame, &expected_screen(&templates, "bob").2), 0);

    // Data written inside the guests.
    ca.wait_ok("echo note-from-alice-1 > /data/note && sync", 30);
    cb.wait_ok("echo bob-was-here > /data/tmp && sync", 30);

    // Balloon alice down; the guest's driver gives the memory back.
    let (code, v) = h.json("POST", "/vms/alice-1/balloon", Some(r#"{"memory_mib":112}"#));
    assert_eq!(code, 200, "{v}");
    let (code, v) = h.json("POST", "/vms/alice-1/balloon", Some(r#"{"memory_mib":4096}"#));
    assert_eq!(code, 400, "beyond the boot size: {v}");
    let t = std::time::Instant::now();
    loop {
        let (_, v) = h.json("GET", "/vms/alice-1", None);
        if v["balloon_mib"].as_u64().unwrap_or(0) <= 116 {
            break;
        }
        assert!(t.elapsed().as_secs() < 180, "balloon never shrank: {v}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let total_kb: u64 = ca.run("sed -n 's/MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo").1.parse().unwrap();
    assert!(total_kb < 120 * 1024, "guest still sees {total_kb} kB");

    // Restart server-host mid-way: both VMs are still managed (QMP answers, screen works).
    let pids: Vec<u64> = ["alice-1", "bob-1"].iter().map(|n| h.json("GET", &format!("/vms/{n}"), None).1["pid"].as_u64().unwrap()).collect();
    h.restart();
    let (_, vms) = h.json("GET", "/vms", None);
    let vms = vms.as_array().unwrap().clone();
    assert_eq!(vms.len(), 2, "{vms:?}");
    for (v, pid) in vms.iter().zip(&pids) {
        assert_eq!(v["state"], "running");
        assert_eq!(v["pid"].as_u64().unwrap(), *pid);
        assert!(v["balloon_mib"].is_u64(), "QMP re-adopted: {v}");
    }
    assert_eq!(h.get("/vms/bob-1/screen").0, 200);
    h.wait_event("adopted", "alice-1", 10);

    // Watch the event stream while bob's QEMU is killed by PID: a crash event.
    let mut sse = std::process::Command::new("curl")
        .args(["-s", "-N"])
        .args(h.pki.curl_args())
        .arg(h.url("/events"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    unsafe { libc::kill(pids[1] as i32, libc::SIGKILL) };
    let crash = h.wait_event("crashed", "bob-1", 60);
    assert_eq!(crash["user"], "bob");
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(sse.id() as i32, libc::SIGTERM) };
    let mut streamed = String::new();
    std::io::Read::read_to_string(sse.stdout.as_mut().unwrap(), &mut streamed).unwrap();
    let _ = sse.wait();
    assert!(streamed.contains("\"kind\":\"crashed\"") && streamed.contains("bob-1"), "SSE: {streamed}");
    assert!(!state.join("vms/bob-1").exists(), "one-time disks are deleted at the end");

    // A second VM for alice while the first runs does not get her data disk...
    let a2 = create(&h, "alice-2", "alice", true);
    assert_eq!(a2["data_disk"], "waiting");
    assert_eq!(a2["os_overlay_temporary"], true);
    // ...a one-time user's next VM starts clean...
    let _b2 = create(&h, "bob-2", "bob", false);
    let mut ca2 = Console::open(&state, "alice-2");
    let (code, _) = ca2.run("grep -q ' /data ' /proc/mounts");
    assert_ne!(code, 0, "alice-2 must not have the data disk while alice-1 holds it");
    let mut cb2 = Console::open(&state, "bob-2");
    cb2.wait_ok("grep -q ' /data ' /proc/mounts", 120);
    assert_eq!(cb2.run("ls /data | grep -v lost+found | wc -l").1, "0");
    // ...until alice-1 stops gracefully; then it is hot-plugged with her file on it.
    let ev = stop(&h, "alice-1");
    assert_eq!(ev["kind"], "stopped", "{ev}");
    h.wait_event("data_disk_attached", "alice-2", 30);
    assert_eq!(ca2.wait_ok("cat /data/note", 120), "note-from-alice-1");
    ca2.wait_ok("echo second > /data/second && sync", 30);
    let (code, v) = h.json("POST", "/users/alice/backup", None);
    assert_eq!(code, 409, "no backup while alice runs: {v}");
    stop(&h, "alice-2");
    stop(&h, "bob-2");
    assert!(qemu_pids(&state).is_empty());

    // Backup, reset and restore, each checked inside a guest.
    let (code, bk) = h.json("POST", "/users/alice/backup", None);
    assert_eq!(code, 200, "{bk}");
    assert!(bk["size"].as_u64().unwrap() > 0);
    let (_, user) = h.json("GET", "/users/alice", None);
    let backup_id = user["backups"][0]["id"].as_i64().unwrap();
    let (code, rs) = h.json("POST", "/users/alice/reset", None);
    assert_eq!(code, 200, "{rs}");
    let _a3 = create(&h, "alice-3", "alice", true);
    let mut ca3 = Console::open(&state, "alice-3");
    ca3.wait_ok("grep -q ' /data ' /proc/mounts", 120);
    assert_ne!(ca3.run("test -e /data/note").0, 0, "reset gives an empty data disk");
    stop(&h, "alice-3");
    let (code, v) = h.json("POST", "/users/alice/restore", Some(&format!(r#"{{"backup":{backup_id}}}"#)));
    assert_eq!(code, 200, "{v}");
    let _a4 = create(&h, "alice-4", "alice", true);
    let mut ca4 = Console::open(&state, "alice-4");
    assert_eq!(ca4.wait_ok("cat /data/note /data/second", 120), "note-from-alice-1\nsecond");
    stop(&h, "alice-4");

    // Everything is in the history with time and size.
    let (_, hist) = h.json("GET", "/history?user=alice", None);
    let kinds: Vec<&str> = hist.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in ["created", "ballooned", "adopted", "stopped", "data_disk_attached", "backup", "reset", "restore"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    for e in hist.as_array().unwrap().iter().filter(|e| ["backup", "reset", "restore"].contains(&e["kind"].as_str().unwrap())) {
        assert!(e["size"].as_u64().unwrap() > 0 && e["at_ms"].as_u64().unwrap() > 0, "{e}");
    }
    assert!(qemu_pids(&state).is_empty());
}
