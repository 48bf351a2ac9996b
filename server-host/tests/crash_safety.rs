//! What a crash or a failure half-way leaves: server-host killed (SIGKILL) just before and just
//! after it launches QEMU, a restore that fails in the middle, and the modes of the state it
//! keeps. No guest is waited for: QEMU only has to start.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Live processes whose command line names `state` (QEMUs of that state folder, whether or not
/// a pidfile knows them).
fn procs_naming(state: &Path) -> Vec<u32> {
    let needle = state.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmd).contains(&needle)
        })
        .collect()
}

/// Kills what `procs_naming` finds when the test ends, passed or not.
struct KillLeftovers(std::path::PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in procs_naming(&self.0) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

fn wait_dead(h: &Host) {
    let t = Instant::now();
    while h.call("GET", "/host", None).0 != 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "server-host still answers:\n{}", h.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create(h: &Host, name: &str) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"name":"{name}","template":"desktop","memory_mib":96,"user":"alice","persistent":true}}"#);
    h.json("POST", "/vms", Some(&body))
}

#[test]
fn server_host_killed_around_the_qemu_launch_leaves_nothing_unknown() {
    let tools = tempfile::tempdir().unwrap();
    let mode_file = tools.path().join("mode");
    let wrapper = tools.path().join("qemu");
    // Stands in for QEMU: `before` kills server-host (its parent) before QEMU starts, `after`
    // right after QEMU has daemonized; once the mode is used up it is plain QEMU.
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nmode=$(cat '{m}' 2>/dev/null); : > '{m}'\ncase \"$mode\" in\n\
             before) kill -9 \"$PPID\"; exit 1 ;;\n\
             after) qemu-system-x86_64 \"$@\"; rc=$?; kill -9 \"$PPID\"; exit $rc ;;\nesac\n\
             exec qemu-system-x86_64 \"$@\"\n",
            m = mode_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = Host::start(&format!("accel = \"tcg\"\nqemu = \"{}\"\ndata_disk_mib = 16", wrapper.display()));
    let state = h.state();
    let _guard = KillLeftovers(state.clone());

    // An older version could leave the data disk sized but never formatted: it is formatted now.
    let users = state.join("users/alice");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::File::create(users.join("data.img")).unwrap().set_len(16 << 20).unwrap();

    for (round, (when, name)) in [("before", "alice-1"), ("after", "alice-2")].into_iter().enumerate() {
        std::fs::write(&mode_file, when).unwrap();
        let (code, v) = create(&h, name);
        assert_eq!(code, 0, "{when}: server-host must have died mid-request: {v}");
        wait_dead(&h);
        if when == "after" {
            assert!(!procs_naming(&state).is_empty(), "the QEMU launched just before the crash runs on");
        }
        h.restart();
        let (_, vms) = h.json("GET", "/vms", None);
        assert_eq!(vms, serde_json::json!([]), "{when}:\n{}", h.log());
        assert!(procs_naming(&state).is_empty(), "{when}: a QEMU nobody knows is still running:\n{}", h.log());
        assert_eq!(std::fs::read_dir(state.join("vms")).unwrap().count(), 0, "{when}: VM folder left");
        let ev = h.wait_event("crashed", name, 10);
        assert!(ev["detail"].as_str().unwrap().contains("interrupted"), "{ev}");
        let (_, hist) = h.json("GET", "/history?user=alice", None);
        assert_eq!(hist.as_array().unwrap().len(), round + 1, "{hist}");
    }
    let data = std::fs::read(users.join("data.img")).unwrap();
    assert_eq!(&data[1080..1082], &[0x53, 0xef], "ext4 superblock magic: the unformatted disk was formatted");

    // Nothing holds alice's disks any more (QEMU locks the images it has open): her next VM
    // starts with them, and ends on request.
    let (code, v) = create(&h, "alice-3");
    assert_eq!(code, 201, "{v}\n{}", h.log());
    assert_eq!(v["data_disk"], "attached");
    assert_eq!(v["os_overlay_temporary"], false);
    for p in [state.clone(), state.join("vms"), state.join("vms/alice-3"), state.join("users"), users.clone(), state.join("backups")] {
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    for p in [state.join("state.db"), users.join("data.img"), users.join("os-desktop.qcow2")] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let (code, v) = h.json("POST", "/vms/alice-3/stop", Some(r#"{"deadline_secs":0}"#));
    assert_eq!(code, 200, "{v}");
    assert!(procs_naming(&state).is_empty());
}

#[test]
fn a_failed_restore_leaves_the_current_disk_and_state_is_private() {
    let mut h = Host::start("accel = \"tcg\"\nqemu = \"false\"\ndata_disk_mib = 16");
    let state = h.state();
    let users = state.join("users/alice");

    // What an older version left: folders and a disk readable by all, and a copy cut short.
    std::fs::create_dir_all(&users).unwrap();
    for d in [&state, &state.join("users"), &users] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let v1: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(users.join("data.img"), &v1).unwrap();
    std::fs::set_permissions(users.join("data.img"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(users.join(".data.img.tmp"), b"half a copy").unwrap();
    h.restart();
    for p in [state.clone(), state.join("vms"), state.join("users"), users.clone(), state.join("backups")] {
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    assert_eq!(mode(&users.join("data.img")), 0o600);
    assert_eq!(mode(&state.join("state.db")), 0o600);
    assert!(!users.join(".data.img.tmp").exists(), "the leftover copy is removed at start");

    let (code, v) = h.json("POST", "/users/alice/backup", None);
    assert_eq!(code, 200, "{v}");
    let (_, info) = h.json("GET", "/users/alice", None);
    let id = info["backups"][0]["id"].as_i64().unwrap();
    let bdir = std::fs::read_dir(state.join("backups/alice")).unwrap().next().unwrap().unwrap().path();
    assert_eq!((mode(&state.join("backups/alice")), mode(&bdir)), (0o700, 0o700));
    assert_eq!(mode(&bdir.join("data.img")), 0o600);

    // The current disk has moved on; the backup is damaged (an entry that cannot be copied).
    let v2 = vec![7u8; 1 << 20];
    std::fs::write(users.join("data.img"), &v2).unwrap();
    std::fs::create_dir(bdir.join("zz-damaged.img")).unwrap();
    let restore = format!(r#"{{"backup":{id}}}"#);
    let (code, v) = h.json("POST", "/users/alice/restore", Some(&restore));
    assert_eq!(code, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("zz-damaged.img"), "{v}");
    assert!(std::fs::read(users.join("data.img")).unwrap() == v2, "a failed restore must leave the current disk");
    let names: Vec<String> = std::fs::read_dir(&users).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["data.img"], "no copy left behind");

    // Repaired, the restore replaces the disk and drops images the backup does not have.
    std::fs::remove_dir(bdir.join("zz-damaged.img")).unwrap();
    std::fs::write(users.join("os-desktop.qcow2"), b"newer than the backup").unwrap();
    let (code, v) = h.json("POST", "/users/alice/restore", Some(&restore));
    assert_eq!(code, 200, "{v}");
    assert!(std::fs::read(users.join("data.img")).unwrap() == v1, "restored contents");
    assert_eq!(mode(&users.join("data.img")), 0o600);
    assert!(!users.join("os-desktop.qcow2").exists());
}
