//! Pool VMs given to users, on real guests: the host answers the assignment at once, before
//! the guest has even finished booting (a person is waiting for that answer), and the data disk
//! that follows is the user's own and never on two VMs at a time.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn create_pool_vm(h: &Host, name: &str) {
    let body = format!(r#"{{"name":"{name}","template":"desktop","memory_mib":128,"user":"","pool":true}}"#);
    let (code, v) = h.json("POST", "/vms", Some(&body));
    assert_eq!(code, 201, "creating {name}: {v}\n{}", h.log());
    assert_eq!(v["data_disk"], "none", "{v}");
}

fn assign(h: &Host, vm: &str, user: &str) -> serde_json::Value {
    let (code, v) = h.json("POST", &format!("/vms/{vm}/assign"), Some(&format!(r#"{{"user":"{user}"}}"#)));
    assert_eq!(code, 200, "assigning {vm} to {user}: {v}\n{}", h.log());
    v
}

fn console_log(h: &Host, vm: &str) -> String {
    std::fs::read_to_string(h.state().join("vms").join(vm).join("console.log")).unwrap_or_default()
}

fn wait_console(h: &Host, vm: &str, text: &str, secs: u64) {
    let t = Instant::now();
    while !console_log(h, vm).contains(text) {
        assert!(t.elapsed() < Duration::from_secs(secs), "no {text:?} from {vm}:\n{}\n{}", console_log(h, vm), h.log());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_pool_vm_is_given_at_once_and_gets_its_users_disk_alone() {
    let h = Host::start("accel = \"tcg\"\ndata_disk_mib = 16");
    create_pool_vm(&h, "pool-a");
    create_pool_vm(&h, "pool-b");

    // Right after its creation the guest is still booting: the answer does not wait for it
    // (the old path sent the user's name only after the guest's TC-READY, and answered after).
    let a = assign(&h, "pool-a", "alice");
    assert!(!console_log(&h, "pool-a").contains("TC-READY"), "the answer waited for the guest to boot");
    assert_eq!((a["user"].as_str(), a["data_disk"].as_str()), (Some("alice"), Some("attached")), "{a}");
    // A second pool VM of alice's waits for her disk: never two writers on it.
    let b = assign(&h, "pool-b", "alice");
    assert_eq!(b["data_disk"], "waiting", "{b}");

    // What followed in the background: her disk in pool-a and her name on its screen.
    wait_console(&h, "pool-a", "TC-DATA-MOUNTED", 600);
    wait_console(&h, "pool-a", "TC-ASSIGNED user=alice", 120);
    wait_console(&h, "pool-b", "TC-ASSIGNED user=alice", 600);
    assert!(!console_log(&h, "pool-b").contains("TC-DATA-MOUNTED"), "pool-b mounted a disk while pool-a holds alice's");
}
