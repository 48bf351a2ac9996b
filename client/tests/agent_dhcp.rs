//! The agent's DHCP client against dnsmasq, in a lab host namespace: it must lease an address
//! (smoltcp over a packet socket), read the broker option, apply it through netlink, and keep
//! it as RFC 2131 says (renewing by unicast, rebinding by broadcast, starting over after a NAK).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use testkit::{wait_for_text, KillOnDrop, Lab};

/// dnsmasq serving DHCP on the lab's bridge, with `args` added (range, options, log).
fn dnsmasq(lab: &Lab, dir: &Path, args: &[String]) -> KillOnDrop {
    let dnsmasq = KillOnDrop::spawn(
        lab.cmd("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--interface=br0"])
            .arg("--bind-interfaces")
            .args(args)
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("dnsmasq");
    std::thread::sleep(Duration::from_millis(500));
    dnsmasq
}

#[test]
fn agent_dhcp_leases_from_dnsmasq_and_applies_it() {
    let lab = Lab::with_subnet(0, 1, "10.78.0").expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases");
    let mut dnsmasq = dnsmasq(
        &lab,
        dir.path(),
        &[
            "--dhcp-range=10.78.0.100,10.78.0.150,255.255.255.0,1h".into(),
            "--dhcp-option=3,10.78.0.1".into(),
            "--dhcp-option=6,10.78.0.1".into(),
            "--dhcp-option=224,\"10.78.0.1:7000\"".into(),
            format!("--dhcp-leasefile={}", leases.display()),
        ],
    );

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

/// The DHCP lines of dnsmasq's log (`--log-dhcp`), as `DHCPREQUEST(br0) 10.79.0.1xx mac`.
fn dhcp_events(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let at = l.find(" DHCP")?;
            let words: Vec<&str> = l[at + 1..].split_whitespace().take(3).collect();
            (words.len() >= 2 && words[0].ends_with("(br0)")).then(|| words.join(" "))
        })
        .collect()
}

fn count(events: &[String], prefix: &str) -> usize {
    events.iter().filter(|e| e.starts_with(prefix)).count()
}

/// A 2-minute lease (dnsmasq's shortest) with T1 = 8 s and T2 = 16 s from options 58 and 59:
/// renewals must be a unicast DHCPREQUEST answered by a DHCPACK for the same address, with no
/// DHCPDISCOVER; with the unicast blocked the client must rebind by broadcast; and when a
/// restarted, authoritative dnsmasq refuses the address the client must drop it and DISCOVER.
#[test]
fn agent_dhcp_renews_rebinds_and_starts_over_after_nak() {
    let lab = Lab::with_subnet(0, 1, "10.79.0").expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let dlog = dir.path().join("dnsmasq.log");
    let common = |range: &str, leases: &str| -> Vec<String> {
        vec![
            format!("--dhcp-range={range},255.255.255.0,2m"),
            "--dhcp-option=3,10.79.0.1".into(),
            "--dhcp-option=58,8".into(),
            "--dhcp-option=59,16".into(),
            "--log-dhcp".into(),
            format!("--log-facility={}", dlog.display()),
            format!("--dhcp-leasefile={}", dir.path().join(leases).display()),
        ]
    };
    let mut server = dnsmasq(&lab, dir.path(), &common("10.79.0.100,10.79.0.150", "leases"));

    let clog = dir.path().join("client.log");
    let out = std::fs::File::create(&clog).unwrap();
    let mut client = KillOnDrop::spawn(
        lab.host_cmd(1, env!("CARGO_BIN_EXE_thinclient"))
            .env("RUST_LOG", "info")
            .args(["agent", "dhcp", "--interface", "eth0", "--apply", "--keep", "--timeout", "120"])
            .arg("--resolv-conf")
            .arg(dir.path().join("resolv.conf"))
            .stdout(out.try_clone().unwrap())
            .stderr(out),
    )
    .expect("thinclient agent dhcp --keep");
    let wait = |needle: &str| {
        wait_for_text(&clog, needle, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{e}\ndnsmasq: {:#?}", dhcp_events(&dlog)))
    };
    let text = wait("applied");
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}: "))).unwrap_or_default().to_string();
    assert_eq!((field("renew_secs"), field("rebind_secs"), field("lease_secs")), ("8".into(), "16".into(), "120".into()));
    let addr = field("address").trim_end_matches("/24").to_string();
    let mac = field("mac");
    let ip_addr = || {
        let o = lab.host_cmd(1, "ip").args(["-4", "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // Renewing: one more REQUEST/ACK for the same address, and still the one DISCOVER.
    wait("DHCPACK in Renewing");
    let events = dhcp_events(&dlog);
    assert_eq!(count(&events, "DHCPDISCOVER"), 1, "{events:#?}");
    let request = format!("DHCPREQUEST(br0) {addr} {mac}");
    let ack = format!("DHCPACK(br0) {addr} {mac}");
    assert!(count(&events, &request) >= 2 && count(&events, &ack) >= 2, "{events:#?}");
    let last_discover = events.iter().rposition(|e| e.starts_with("DHCPDISCOVER")).unwrap();
    assert!(events[last_discover..].windows(2).filter(|w| w[0] == request && w[1] == ack).count() >= 2, "{events:#?}");
    assert!(ip_addr().contains(&format!("inet {addr}/24")));

    // Rebinding: with the server's MAC address replaced by one nobody has, the unicast
    // requests of RENEWING go nowhere; only the broadcast of REBINDING reaches dnsmasq, at T2.
    // (A routing rule cannot block them: with the socket bound to the interface the kernel
    // sends "on link" when the route lookup fails.)
    let requests_before = count(&dhcp_events(&dlog), &request);
    let acks_before = count(&dhcp_events(&dlog), &ack);
    let neigh = ["neigh", "replace", "10.79.0.1", "lladdr", "02:00:00:00:00:01", "nud", "permanent", "dev", "eth0"];
    assert!(lab.host_cmd(1, "ip").args(neigh).status().unwrap().success());
    let text = wait("DHCPACK in Rebinding");
    let blocked = text.rsplit("DHCPACK in Renewing").next().unwrap();
    assert!(blocked.contains("T2: no answer from 10.79.0.1; rebinding"), "{text}");
    let events = dhcp_events(&dlog);
    // The unicast attempts between T1 and T2 never arrived: dnsmasq saw one request, the broadcast.
    assert_eq!(count(&events, &request), requests_before + 1, "{events:#?}");
    assert_eq!(count(&events, &ack), acks_before + 1, "{events:#?}");
    assert_eq!(count(&events, "DHCPDISCOVER"), 1, "{events:#?}");
    assert!(ip_addr().contains(&format!("inet {addr}/24")));
    assert!(lab.host_cmd(1, "ip").args(["neigh", "del", "10.79.0.1", "dev", "eth0"]).status().unwrap().success());

    // A new, authoritative server that knows nothing of the lease refuses it: the client drops
    // the address and leases anew from the new range.
    server.stop(Duration::from_secs(5));
    let mut args = common("10.79.0.200,10.79.0.250", "leases2");
    args.push("--dhcp-authoritative".into());
    let mut server = dnsmasq(&lab, dir.path(), &args);
    let text = wait("new lease 10.79.0.2");
    assert!(text.contains("refused the lease (DHCPNAK"), "{text}");
    assert!(text.contains(&format!("removing {addr}/24 and starting over with DHCPDISCOVER")), "{text}");
    let events = dhcp_events(&dlog);
    let nak = events.iter().position(|e| e.starts_with(&format!("DHCPNAK(br0) {addr} {mac}"))).expect("no NAK");
    assert!(events[nak..].iter().any(|e| e.starts_with("DHCPDISCOVER(br0)")), "{events:#?}");
    let now = ip_addr();
    assert!(!now.contains(&format!("inet {addr}/")) && now.contains("inet 10.79.0.2"), "{now}");

    eprintln!("dnsmasq's DHCP log: {events:#?}");
    client.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
}
