//! The agent's DHCP client (smoltcp over a packet socket) against dnsmasq, in a lab host
//! namespace: it must lease an address, read the broker option, and apply it through netlink.

use std::process::Stdio;
use std::time::Duration;

use testkit::{KillOnDrop, Lab};

#[test]
fn agent_dhcp_leases_from_dnsmasq_and_applies_it() {
    let lab = Lab::with_subnet(0, 1, "10.78.0").expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases");
    let mut dnsmasq = KillOnDrop::spawn(
        lab.cmd("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=br0"])
            .args(["--bind-interfaces", "--dhcp-range=10.78.0.100,10.78.0.150,255.255.255.0,1h"])
            .args(["--dhcp-option=3,10.78.0.1", "--dhcp-option=6,10.78.0.1"])
            .arg("--dhcp-option=224,\"10.78.0.1:7000\"")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("dnsmasq");
    std::thread::sleep(Duration::from_millis(500));

    let resolv = dir.path().join("resolv.conf");
    let out = lab
        .host_cmd(1, env!("CARGO_BIN_EXE_thinclient"))
        .args(["agent", "dhcp", "--interface", "eth0", "--apply", "--timeout", "60"])
        .arg("--resolv-conf")
        .arg(&resolv)
        .output()
        .expect("running thinclient agent dhcp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "agent dhcp failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let field = |k: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("{k}: "))).unwrap_or_default().to_string()
    };
    let addr = field("address");
    assert!(addr.starts_with("10.78.0.") && addr.ends_with("/24"), "{stdout}");
    let host: u8 = addr.trim_end_matches("/24").rsplit('.').next().unwrap().parse().unwrap();
    assert!((100..=150).contains(&host), "{stdout}");
    assert_eq!(field("router"), "10.78.0.1");
    assert_eq!(field("broker"), "10.78.0.1:7000");
    assert_eq!(field("lease_secs"), "3600");

    // The kernel holds what the agent applied, and dnsmasq recorded the same MAC.
    let ip = lab.host_cmd(1, "ip").args(["-4", "addr", "show", "dev", "eth0"]).output().unwrap();
    let ip = String::from_utf8_lossy(&ip.stdout);
    assert!(ip.contains(&format!("inet {addr}")), "{ip}");
    let route = lab.host_cmd(1, "ip").args(["route", "show", "default"]).output().unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains("via 10.78.0.1 dev eth0"));
    assert!(std::fs::read_to_string(&resolv).unwrap().contains("nameserver 10.78.0.1"));
    let mac = field("mac");
    assert!(std::fs::read_to_string(&leases).unwrap().contains(&mac), "lease file lacks {mac}");
    let ping = lab.host_cmd(1, "busybox").args(["ping", "-c", "1", "-W", "5", "10.78.0.1"]).status().unwrap();
    assert!(ping.success(), "the applied address does not reach the server");
    dnsmasq.stop(Duration::from_secs(2));
}
