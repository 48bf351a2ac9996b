//! Hard handoff end to end on one machine: a real `server-host` with the desktop template,
//! the orchestrator running the memory algorithm, the VNC proxy and a vnc-rs viewer. Memory is
//! scaled down so TCG copes: one host of 512 MiB, levels 256/128 MiB. The first user gets
//! 256 MiB, the second 128 MiB; when the third arrives the first is handed off to a 128 MiB VM
//! under its live viewer connection, which keeps showing the desktop, now the new VM's.

mod broker_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bootserver::broker::hosts::HostRegistry;
use bootserver::broker::memory::Action;
use bootserver::broker::orchestrator::{Orchestrator, Outcome};
use bootserver::broker::proxy::{Proxy, ProxyOptions};
use bootserver::broker::settings::{BrokerConfig, HostConfig};
use broker_common::{connect_viewer, host_tls, start_server_host, vm_screen, wait_same, ServerHost};

/// The broker on `host` (one 512 MiB host, levels 256/128 MiB) with its proxy on loopback.
async fn broker(
    host: &ServerHost,
    pool: usize,
) -> anyhow::Result<(std::sync::Arc<Orchestrator>, std::net::SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let cfg = BrokerConfig {
        levels_mib: vec![256, 128],
        health_interval_secs: 2,
        switch_timeout_secs: 400,
        stop_deadline_secs: 20,
        pool,
        hosts: vec![HostConfig {
            name: "h1".into(),
            url: host.url(),
            memory_mib: 512,
        }],
        ..Default::default()
    }
    .validate()
    .map_err(anyhow::Error::msg)?;
    let hosts = HostRegistry::new(&cfg.hosts, host_tls(host)?, cfg.health_interval(), cfg.health_failures)?;
    let t0 = Instant::now();
    while hosts.check_all().await.is_empty() && hosts.status()[0].last_ok_ms_ago.is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("server-host did not answer: {:?}", hosts.status());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let proxy = Proxy::new(ProxyOptions { legacy_vnc_auth: true, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    let server = tokio::spawn(proxy.clone().serve(listener, bootserver::net::limits::ConnLimiter::unbounded("proxy", bootserver::net::limits::Limits::default().proxy)));
    let (orch, _notices) = Orchestrator::new(cfg, hosts.clone(), proxy.clone(), proxy_addr)?;
    Ok((orch, proxy_addr, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_user_hands_the_first_off_under_its_live_viewer() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let host = start_server_host(dir.path())?;
    let (orch, proxy_addr, server) = broker(&host, 0).await?;

    let Outcome::Assigned { token, proxy: told } = orch.arrive("52:54:00:00:00:01").await? else {
        bail!("first user refused: {:?}", orch.decisions());
    };
    assert_eq!(told, proxy_addr);
    let first = orch.desktops()[0].clone();
    assert_eq!((first.host.as_str(), first.memory_mib), ("h1", 256));
    let viewer = connect_viewer(proxy_addr, &token).await?;
    wait_same(&viewer, &host, &first.vm, "first user's desktop").await?;
    // A token opens only its own VM: a made-up one is refused.
    assert!(connect_viewer(proxy_addr, "notmine1").await.is_err());

    // The second user fits at 128 MiB beside the first with the reserve kept; the third does
    // not, so the first (the newest above 128 MiB) moves down by hard handoff.
    for n in [2, 3] {
        let t_arrive = Instant::now();
        let Outcome::Assigned { .. } = orch.arrive(&format!("52:54:00:00:00:0{n}")).await? else {
            bail!("user {n} refused: {:?}", orch.decisions());
        };
        eprintln!("arrival {n} handled in {:?}", t_arrive.elapsed());
    }
    let record = orch.decisions().pop().context("a decision")?;
    eprintln!("{}", serde_json::to_string_pretty(&record)?);
    assert!(record.steps.iter().all(|s| s.ok), "{record:?}");
    let handoff = record
        .decision
        .actions
        .iter()
        .position(|a| matches!(a, Action::Handoff { user, .. } if user == "52:54:00:00:00:01"))
        .context("the first user is handed off")?;
    assert_eq!(record.steps[handoff].detail["viewer_connected"], true);
    let moved = orch.desktops().into_iter().find(|d| d.user == "52:54:00:00:00:01").context("first user")?;
    assert_eq!(moved.memory_mib, 128);
    assert_ne!(moved.vm, first.vm);
    wait_same(&viewer, &host, &moved.vm, "first user's desktop after the handoff").await?;
    {
        let s = viewer.state.lock().unwrap();
        assert!(!s.closed && s.error.is_none(), "viewer connection dropped: {:?}", s.error);
    }
    server.abort();
    drop(viewer);
    Ok(())
}

/// `pool = 1`: a VM is booted ahead with no user; the first arrival takes it, and the host gives
/// it the user's data disk (mounted by the guest) and the user's name strip on its screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_takes_the_pre_booted_vm_with_its_data_disk_and_name() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let host = start_server_host(dir.path())?;
    let (orch, proxy_addr, server) = broker(&host, 1).await?;
    let t0 = Instant::now();
    let pooled = loop {
        if let Some(p) = orch.pool().into_iter().find(|p| p.ready) {
            break p;
        }
        if t0.elapsed() > Duration::from_secs(400) {
            bail!("no pool VM ready: {:?}", orch.pool());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!((pooled.host.as_str(), pooled.memory_mib), ("h1", 256));
    let user = "52:54:00:00:00:01";
    let Outcome::Assigned { token, .. } = orch.arrive(user).await? else {
        bail!("refused: {:?}", orch.decisions());
    };
    let d = orch.desktops().into_iter().find(|d| d.user == user).context("desktop")?;
    assert_eq!(d.vm, pooled.vm, "the arrival takes the pool VM");
    let console = host.state.join("vms").join(&d.vm).join("console.log");
    testkit::wait_for_text(&console, "TC-DATA-MOUNTED", Duration::from_secs(120))?;
    testkit::wait_for_text(&console, "TC-ASSIGNED user=52-54-00-00-00-01", Duration::from_secs(120))?;
    let viewer = connect_viewer(proxy_addr, &token).await?;
    wait_same(&viewer, &host, &d.vm, "the pool VM's desktop").await?;
    // The strip: one 16-pixel grey block per byte of the user's name, '5' first.
    let screen = vm_screen(&host, &d.vm)?;
    assert_eq!(&screen.rgb[..3], &[b'5'; 3]);
    let last = (16 * "52-54-00-00-00-01".len() - 1) * 3;
    assert_eq!(&screen.rgb[last..last + 3], &[b'1'; 3]);
    // The pool refills where the next newcomer would go: 128 MiB beside the 256 MiB desktop.
    let t0 = Instant::now();
    while !orch.pool().iter().any(|p| p.memory_mib == 128) {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("pool not refilled: {:?}", orch.pool());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.abort();
    drop(viewer);
    Ok(())
}
