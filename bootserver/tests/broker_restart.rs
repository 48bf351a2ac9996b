//! Broker restart end to end on loopback: a real `server-host` with the desktop template, the
//! real `bootserver serve` with only the broker, a client driven by the agent's own session
//! core (`proto::agent::Session`) over TLS, checking the broker against the CA `serve` made,
//! and a vnc-rs viewer through the proxy (that release speaks VNC authentication only, which
//! the config turns on with `legacy_vnc_auth`). The boot server is
//! killed (SIGKILL, no chance to tidy up) and started again on the same state dir: the same
//! desktop is listed, the client reconnects by itself and gets a new token (the store kept only
//! the old one's hash), which opens the same VM while the old one opens nothing, and no second
//! VM was made; a VM of the broker's naming that no session claims (left by a crash between
//! making a VM and storing its session) is stopped.

mod broker_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use broker_common::{connect_viewer, host_vms, start_server_host, wait_same};
use proto::agent::{
    encode, Assignment, BrokerMessage, Decoder, Hello, Input, MacAddr, Output, Session, SessionConfig, PROTOCOL,
};
use testkit::KillOnDrop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const MAC: &str = "52:54:00:00:00:31";

/// What the client saw from the broker.
#[derive(Default)]
struct Seen {
    welcomes: u32,
    /// Every assignment message, repeats included.
    assignments: Vec<Assignment>,
}

/// A TLS link to the broker, trusting the CA at `ca` (read at every attempt: `serve` makes it
/// at its start).
async fn connect(broker: SocketAddr, ca: &Path) -> anyhow::Result<TlsStream<TcpStream>> {
    let tls = tokio_rustls::TlsConnector::from(proto::tls::client_config(ca)?);
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(broker)).await??;
    Ok(tokio::time::timeout(Duration::from_secs(5), tls.connect(proto::tls::server_name(broker.ip()), tcp)).await??)
}

/// A PC's agent as far as the broker can tell: the agent's session state machine over TLS,
/// reconnecting with its backoff whenever the broker goes away.
fn spawn_agent(broker: SocketAddr, ca: PathBuf) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let hello = Hello {
        version: PROTOCOL,
        mac: MacAddr([0x52, 0x54, 0, 0, 0, 0x31]),
        ipv4: "127.0.0.1".parse().expect("address"),
        cpu_model: "QEMU".into(),
        cpu_count: 1,
        ram_bytes: 256 << 20,
        display_modes: Vec::new(),
        agent_version: "test".into(),
        boot_ms: 1000,
        boot_phases: Vec::new(),
        resume_token: None,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let cfg = SessionConfig { backoff_max_ms: 4000, ..Default::default() };
        let mut session = Session::new(cfg, hello, 31);
        let epoch = Instant::now();
        let now = || epoch.elapsed().as_millis() as u64;
        let mut conn: Option<(TlsStream<TcpStream>, Decoder<BrokerMessage>)> = None;
        let mut inputs = vec![Input::Start];
        loop {
            while !inputs.is_empty() {
                let input = inputs.remove(0);
                for out in session.handle(now(), input) {
                    match out {
                        Output::Connect => {
                            conn = None;
                            match connect(broker, &ca).await {
                                Ok(c) => {
                                    conn = Some((c, Decoder::new()));
                                    inputs.push(Input::Connected);
                                }
                                Err(e) => inputs.push(Input::ConnectFailed { reason: format!("{e:#}") }),
                            }
                        }
                        Output::Send(msg) => {
                            let res = match (&mut conn, encode(&msg)) {
                                (Some((c, _)), Ok(bytes)) => {
                                    let sent = c.write_all(&bytes).await;
                                    sent.and(c.flush().await).map_err(|e| e.to_string())
                                }
                                (None, _) => Err("not connected".into()),
                                (_, Err(e)) => Err(e.to_string()),
                            };
                            if let Err(reason) = res {
                                inputs.push(Input::Closed { reason });
                            }
                        }
                        Output::Close { .. } => conn = None,
                        _ => {}
                    }
                }
            }
            if let Some((c, dec)) = &mut conn {
                let mut buf = [0u8; 8192];
                match tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await {
                    Ok(Ok(0)) => inputs.push(Input::Closed { reason: "closed by the broker".into() }),
                    Ok(Ok(n)) => {
                        for m in dec.feed(&buf[..n]) {
                            match m {
                                Ok(m) => {
                                    match &m {
                                        BrokerMessage::Welcome(_) => s.lock().unwrap().welcomes += 1,
                                        BrokerMessage::Assignment(a) => s.lock().unwrap().assignments.push(a.clone()),
                                        _ => {}
                                    }
                                    inputs.push(Input::Received(m));
                                }
                                Err(e) => inputs.push(Input::DecodeError(e)),
                            }
                        }
                    }
                    Ok(Err(e)) => inputs.push(Input::Closed { reason: e.to_string() }),
                    Err(_) => {}
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if session.deadline().is_some_and(|d| now() >= d) {
                inputs.push(Input::Tick);
            }
        }
    });
    (seen, task)
}

/// An empty boot dir beside the state dir (a boot dir holding the state dir is refused).
fn boot_dir(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot)?;
    Ok(boot)
}

/// `bootserver serve` with only the broker, on loopback.
fn start_bootserver(dir: &Path, broker: SocketAddr, admin: SocketAddr) -> anyhow::Result<KillOnDrop> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("bootserver.log"))?;
    KillOnDrop::spawn(
        Command::new(env!("CARGO_BIN_EXE_bootserver"))
            .args(["serve", "--interface", "lo", "--address", "127.0.0.1", "--no-dhcp", "--no-tftp", "--no-http"])
            // The client is on loopback: no lease, no ARP, nothing to bind its hello to.
            .arg("--no-hello-binding")
            .arg("--broker")
            .arg(broker.to_string())
            .arg("--config")
            .arg(dir.join("bootserver.toml"))
            .arg("--state-dir")
            .arg(dir.join("bs-state"))
            .arg("--boot-dir")
            .arg(boot_dir(dir)?)
            .env("BOOTSERVER_ADMIN", admin.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null()),
    )
}

fn admin_get(dir: &Path, admin: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "30", "-H", &testkit::admin_auth(&dir.join("bs-state"))?])
        .arg(format!("http://{admin}{path}"))
        .output()?;
    if !out.status.success() {
        bail!("admin API {path}: curl {}", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("admin API {path}"))
}

/// Polls `f` until it gives a value, for at most `secs`.
async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!("{what}: not within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The desktops the admin API lists, as (user, VM name).
fn desktops(dir: &Path, admin: SocketAddr) -> Vec<(String, String)> {
    let Ok(v) = admin_get(dir, admin, "/api/vms") else { return Vec::new() };
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|d| (d["user"].as_str().unwrap_or("").to_string(), d["vm"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_finds_its_desktop_and_the_client_its_session() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let res = restart(dir.path()).await;
    if res.is_err() {
        for log in ["server-host.log", "bootserver.log"] {
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- {log} (last lines) ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
    res
}

async fn restart(dir: &Path) -> anyhow::Result<()> {
    let host = start_server_host(dir)?;
    let (broker, admin, proxy_port) = (testkit::free_port(), testkit::free_port(), testkit::free_port());
    let broker: SocketAddr = format!("127.0.0.1:{broker}").parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse()?;
    std::fs::write(
        dir.join("bootserver.toml"),
        format!(
            "[pcs]\npolicy = \"kiosk\"\n[desktops]\nlevels_mib = [256, 128]\nproxy_port = {proxy_port}\nhealth_interval_secs = 2\n\
             switch_timeout_secs = 400\nstop_deadline_secs = 20\nlegacy_vnc_auth = true\n\
             [[desktops.hosts]]\nname = \"h1\"\nurl = \"{}\"\nmemory_mib = 512\n",
            host.url()
        ),
    )?;
    wait_for(60, "server-host answering", || host_vms(&host).ok()).await?;
    let mut server = start_bootserver(dir, broker, admin)?;
    let (seen, agent) = spawn_agent(broker, dir.join("bs-state/ca/ca.pem"));

    // The first VM boots under TCG: minutes.
    let assignment =
        wait_for(600, "an assignment", || seen.lock().unwrap().assignments.first().cloned()).await?;
    assert_eq!(assignment.vnc, proxy);
    let token = assignment.session_token.clone();
    let listed = desktops(dir, admin);
    let vm = match listed.as_slice() {
        [(user, vm)] if user == MAC => vm.clone(),
        other => bail!("admin API lists {other:?}"),
    };
    let viewer = connect_viewer(proxy, &token).await?;
    wait_same(&viewer, &host, &vm, "the desktop before the restart").await?;
    drop(viewer);

    // Kill the boot server outright and start it again on the same state.
    let pid = server.id();
    drop(server);
    eprintln!("killed bootserver {pid}");
    let t_restart = Instant::now();
    // What a crash between making a VM and storing its session leaves behind: a VM of the
    // broker's naming that no session claims. The restarted broker must stop it.
    let orphan = "52-54-00-00-00-32-12345";
    let made = Command::new("curl")
        .args(["-sf", "-m", "300", "-X", "POST"])
        .args(host.pki.curl_args())
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(format!(
            r#"{{"name":"{orphan}","template":"desktop","memory_mib":128,"user":"52-54-00-00-00-32"}}"#
        ))
        .arg(format!("{}/v1/vms", host.url()))
        .output()?;
    if !made.status.success() {
        bail!("making the orphan VM: curl {}", made.status);
    }
    server = start_bootserver(dir, broker, admin)?;

    // The admin API lists the same desktop, adopted.
    let again = wait_for(120, "the desktop listed again", || {
        let d = desktops(dir, admin);
        (!d.is_empty()).then_some(d)
    })
    .await?;
    assert_eq!(again, vec![(MAC.to_string(), vm.clone())], "same user, same VM");
    let decisions = admin_get(dir, admin, "/api/decisions")?;
    let steps = |prefix: &str, vm: &str| {
        decisions
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["steps"].as_array().cloned().unwrap_or_default())
            .any(|s| s["ok"] == true && s["action"].as_str().is_some_and(|a| a.starts_with(prefix) && a.contains(vm)))
    };
    assert!(steps("adopt ", &vm), "no adopt decision: {decisions:#}");
    assert!(steps("stop VM ", orphan), "the orphan VM was not stopped: {decisions:#}");

    // The client reconnected by itself and was given a new token for the same desktop.
    let (welcomes, second) = wait_for(120, "a second assignment", || {
        let s = seen.lock().unwrap();
        (s.assignments.len() >= 2).then(|| (s.welcomes, s.assignments[1].clone()))
    })
    .await?;
    assert!(welcomes >= 2, "the client announced itself again");
    assert_ne!(second.session_token, token, "the token was not rotated at the reconnect");
    assert_eq!(second.vnc, proxy);
    let store = std::fs::read(dir.join("bs-state/sessions.sqlite"))?;
    for t in [&token, &second.session_token] {
        assert!(!store.windows(t.len()).any(|w| w == t.as_bytes()), "a token is in the session store");
    }

    // The new token opens the same VM through the restarted proxy; the old one nothing.
    let viewer = connect_viewer(proxy, &second.session_token).await?;
    wait_same(&viewer, &host, &vm, "the desktop after the restart").await?;
    eprintln!("desktop shown again {:?} after the restart", t_restart.elapsed());
    assert!(connect_viewer(proxy, &token).await.is_err(), "the old token still opens the desktop");

    // One VM, the same one, runs on the host: no second VM, and the orphan is gone (its stop
    // runs in the background and may wait out the guest's power-off deadline).
    let running = || -> Vec<String> {
        let vms = host_vms(&host).unwrap_or_default();
        vms.into_iter().filter(|v| v.state == proto::host::VmState::Running).map(|v| v.name).collect()
    };
    let only = wait_for(120, "the orphan VM stopped", || {
        let r = running();
        (r.len() == 1).then_some(r)
    })
    .await;
    assert_eq!(only?, vec![vm], "no second VM");
    {
        let s = viewer.state.lock().unwrap();
        assert!(!s.closed, "viewer connection dropped: {:?}", s.error);
    }
    agent.abort();
    drop(viewer);
    server.stop(Duration::from_secs(10));
    Ok(())
}
