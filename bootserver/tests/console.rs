//! The web console in headless Chromium (Debian's `chromium`, driven through `chromedriver`),
//! against the real `bootserver serve` in a lab with a real `server-host`, and PCs played by
//! lab hosts that speak the agent protocol over TLS from their own addresses:
//!
//! - a wrong password is refused, an ordinary user is refused, an admin logs in;
//! - a PC that announces itself appears on the PCs page without a reload (server-sent
//!   events), waiting for approval under `enrolment = "approve"`; approved from the page, its
//!   row changes and the PC gets its login screen;
//! - a request with the session's cookie but without its CSRF token is refused (403);
//! - a read-only account sees the pages, but its approve and its stop are refused;
//! - a person logs in at the PC and gets a desktop VM; Stop on the Desktops page stops it (its
//!   QEMU ends);
//! - from a second lab host the console cannot be reached: it listens on loopback;
//! - the Hosts page draws the host's five charts from the broker's samples (one a second
//!   here), and new samples appear without a reload; the Analysis page draws the week.
//!
//! Each page is saved as a PNG in docs/screenshots/.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use proto::agent::BrokerMessage;
use testkit::{Agent, KillOnDrop, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_bootserver");
const SUBNET: &str = "10.85.0";
const ADMIN: &str = "127.0.0.1:7001";
const HOST_API: &str = "https://127.0.0.1:8470";
const DRIVER_PORT: u16 = 9515;
const ROOT_PW: &str = "root's password";
const VIEWER_PW: &str = "viewer's password";
const ALICE_PW: &str = "alice's password";
const SHORT: Duration = Duration::from_secs(15);
/// A desktop VM's first frame and a stop, under TCG on a busy machine.
const LONG: Duration = Duration::from_secs(300);

/// A PC's agent from lab host `k`, over TLS to the broker on the bridge.
fn agent(lab: &Lab, k: u32, ca: &Path, mac: &str, ip: &str) -> Agent {
    let broker: SocketAddr = format!("{SUBNET}.1:7000").parse().unwrap();
    Agent::start(lab, k, broker, ca, mac, ip)
}

/// The PC's next message of the kind `pick` takes, skipping others.
fn next_of<T>(pc: &Agent, within: Duration, what: &str, pick: impl Fn(BrokerMessage) -> Option<T>) -> T {
    loop {
        match pc.next(within, what, &String::new) {
            Some(m) => {
                if let Some(t) = pick(m) {
                    return t;
                }
            }
            None => panic!("the broker closed the PC's connection while waiting for {what}"),
        }
    }
}

/// Chromium's processes of this test (found by their profile folder, which only they name),
/// killed by PID when the test ends: chromedriver leaves them when it is killed mid-session.
struct Profile(tempfile::TempDir);

impl Drop for Profile {
    fn drop(&mut self) {
        let needle = self.0.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: kill(2) on a Chromium started with this test's own profile folder.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn screenshots() -> PathBuf {
    testkit::repo_root().join("docs/screenshots")
}

/// Polls the text of the first element at `css` until `ok` holds.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool, within: Duration) -> String {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < within {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: still {last:?} after {within:?}");
}

/// Waits until the chart at `css` holds at least `n` points (the page writes how many it drew
/// into `data-points`); returns how many.
async fn chart_points(c: &Client, css: &str, n: u64, within: Duration) -> u64 {
    let t0 = Instant::now();
    let mut last = 0;
    while t0.elapsed() < within {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.attr("data-points").await.ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0);
            if last >= n && c.find(Locator::Css(&format!("{css} canvas"))).await.is_ok() {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = match c.find(Locator::Id("status")).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let heading = match c.find(Locator::Css("main h2")).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    panic!("{css}: {last} points after {within:?}, not {n}; the page says {status:?}, {heading:?}");
}

async fn log_in(c: &Client, name: &str, password: &str) {
    c.goto(&format!("http://{ADMIN}/login")).await.unwrap();
    c.find(Locator::Id("name")).await.unwrap().send_keys(name).await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
    c.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// A POST from the page's own script with the session's cookie; returns the status.
async fn post_from_page(c: &Client, path: &str, csrf: bool) -> u64 {
    let js = r#"
        const [path, csrf, done] = arguments;
        const headers = { "Content-Type": "application/json" };
        if (csrf) headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;
        fetch(path, { method: "POST", headers, body: "{}" }).then((r) => done(r.status), () => done(0));
    "#;
    c.execute_async(js, vec![path.into(), csrf.into()]).await.unwrap().as_u64().unwrap()
}

#[test]
fn the_console_logs_in_shows_pcs_live_and_acts_through_the_api() {
    let t_all = Instant::now();
    let templates = testkit::cache_dir().join("templates");
    assert!(templates.join("desktop").exists(), "no desktop template in the cache: run scripts/build-desktop-template");
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("bootserver");
    let pki = testkit::host_pki(Path::new(BIN), &state, "h1", &["127.0.0.1"]).unwrap();
    let (_vms, _host) = testkit::lab_server_host(&lab, &Path::new(BIN).with_file_name("server-host"), d, &pki, &templates).unwrap();
    let macs = [lab.host_mac(1).unwrap(), lab.host_mac(2).unwrap()];
    let ips = [format!("{SUBNET}.2"), format!("{SUBNET}.3")];
    lab.host_address(1, &ips[0]).unwrap();
    lab.host_address(2, &ips[1]).unwrap();
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

[metrics]
sample_secs = 1

{}"#,
            state.display(),
            testkit::desktops_toml(HOST_API, 768),
        ),
    )
    .unwrap();
    for (name, flag, pw) in [("root", "--admin", ROOT_PW), ("viewer", "--readonly", VIEWER_PW), ("alice", "--one-time", ALICE_PW)] {
        let mut c = Command::new(BIN);
        c.args(["user", "add", name, flag, "--password-stdin", "--state-dir"]).arg(&state);
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(format!("{pw}\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "user add {name}");
    }
    let log = d.join("serve.log");
    let cfg = d.join("bootserver.toml");
    let _serve = testkit::serve_admin(lab.cmd(BIN), &["--config", cfg.to_str().unwrap()], &state, &d.join("boot"), ADMIN, &log).unwrap();
    let logs = move || std::fs::read_to_string(&log).unwrap_or_default();
    let t_ready = t_all.elapsed();

    let profile = Profile(tempfile::tempdir().unwrap());
    let mut driver = KillOnDrop::spawn(
        lab.cmd("chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    std::fs::create_dir_all(screenshots()).unwrap();
    let ca = state.join("ca/ca.pem");
    let lab = std::sync::Arc::new(lab);
    let user_data = profile.0.path().to_string_lossy().into_owned();
    let (l, macs2, ips2, state2, host_state) = (lab.clone(), macs.clone(), ips.clone(), state.clone(), d.join("server-host"));
    let figures = lab.in_lab(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(browse(&l, &user_data, &ca, &macs2, &ips2, &state2, host_state))
    });
    driver.stop(Duration::from_secs(2));
    drop(profile);

    // From the second lab host the console is not there at all: it listens on loopback.
    for url in [format!("http://{s}:7001/login"), format!("http://{ADMIN}/login")] {
        let out = lab.host_cmd(2, "curl").args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", &url]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "{url} answered from a lab host\n{}", logs());
    }
    eprintln!(
        "console test: server ready {:.1} s, browser session {:.1} s, a new PC on the page {:.2} s after its hello, \
         approve to the row's change {:.2} s, two new samples on the chart {:.2} s, \
         login to desktop {:.1} s, stop click to the row's removal {:.2} s, whole test {:.1} s",
        t_ready.as_secs_f64(),
        figures.session.as_secs_f64(),
        figures.pc_appears.as_secs_f64(),
        figures.approve.as_secs_f64(),
        figures.chart_grows.as_secs_f64(),
        figures.desktop.as_secs_f64(),
        figures.stop.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}

struct Figures {
    session: Duration,
    pc_appears: Duration,
    approve: Duration,
    chart_grows: Duration,
    desktop: Duration,
    stop: Duration,
}

async fn browse(lab: &Lab, user_data: &str, ca: &Path, macs: &[String; 2], ips: &[String; 2], state: &Path, host_state: PathBuf) -> Figures {
    let t0 = Instant::now();
    let mut caps = serde_json::Map::new();
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,800",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={user_data}"));
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut c = None;
    // chromedriver takes a moment to listen.
    for _ in 0..50 {
        match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{DRIVER_PORT}")).await {
            Ok(client) => {
                c = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let c = c.expect("a chromedriver session");

    // A wrong password and an ordinary user are refused; the admin gets in.
    log_in(&c, "root", "not the password").await;
    wait_text(&c, "#message", |t| t.contains("Wrong user name or password"), SHORT).await;
    shot(&c, "login").await;
    log_in(&c, "alice", ALICE_PW).await;
    wait_text(&c, "#message", |t| t.contains("may not use the console"), SHORT).await;
    log_in(&c, "root", ROOT_PW).await;
    wait_text(&c, "header .who", |t| t.contains("root (admin)"), SHORT).await;
    c.wait().at_most(SHORT).for_element(Locator::Css("#live.on")).await.expect("the event stream opens");

    // PC 1 announces itself: its row appears without a reload, waiting with its code.
    let t_hello = Instant::now();
    let pc1 = agent(lab, 1, ca, &macs[0], &ips[0]);
    let row = format!("tr[data-mac=\"{}\"] .enrolment", macs[0]);
    let pending = wait_text(&c, &row, |t| t.starts_with("pending"), SHORT).await;
    let pc_appears = t_hello.elapsed();
    let code = next_of(&pc1, SHORT, "the approval screen", |m| match m {
        BrokerMessage::Approval { code, .. } => Some(code),
        _ => None,
    });
    assert!(pending.contains(&code), "{pending} lacks the PC's code {code}");
    shot(&c, "pcs").await;

    // The same approve without the CSRF token, from the page itself: refused.
    let approve = format!("/api/clients/{}/approve", macs[0]);
    assert_eq!(post_from_page(&c, &approve, false).await, 403);
    assert!(wait_text(&c, &row, |_| true, SHORT).await.starts_with("pending"));

    // Approved by a click: the row changes, and the PC moves on to its login screen.
    let t_click = Instant::now();
    c.find(Locator::Css(&format!("tr[data-mac=\"{}\"] button.approve", macs[0]))).await.unwrap().click().await.unwrap();
    wait_text(&c, &row, |t| t.starts_with("approved"), SHORT).await;
    let approve_took = t_click.elapsed();
    next_of(&pc1, SHORT, "the login screen after approval", |m| matches!(m, BrokerMessage::LoginPrompt(_)).then_some(()));
    shot(&c, "pcs").await;

    // Alice logs in at PC 1 and gets a desktop VM on the real server-host.
    let t_login = Instant::now();
    pc1.login("alice", ALICE_PW);
    next_of(&pc1, LONG, "alice's desktop", |m| matches!(m, BrokerMessage::Assignment(_)).then_some(()));
    let desktop = t_login.elapsed();

    // The host's charts hold the broker's samples of the real server-host, and grow live.
    c.goto(&format!("http://{ADMIN}/hosts")).await.unwrap();
    let cpu = "section[data-host=\"h1\"] [data-chart=\"cpu\"]";
    let first = chart_points(&c, cpu, 2, SHORT).await;
    for chart in ["mem", "load", "vms", "net"] {
        let css = format!("section[data-host=\"h1\"] [data-chart=\"{chart}\"] canvas");
        c.find(Locator::Css(&css)).await.unwrap_or_else(|e| panic!("no {chart} chart: {e}"));
    }
    let t_live = Instant::now();
    chart_points(&c, cpu, first + 2, SHORT).await;
    let chart_grows = t_live.elapsed();
    shot(&c, "hosts").await;
    // Another range is another archive: the one-day range still holds today's samples.
    c.execute("const r = document.getElementById('range'); r.value = '1d'; r.dispatchEvent(new Event('change'));", vec![]).await.unwrap();
    wait_text(&c, "section[data-host=\"h1\"] h2", |t| t.contains("points, one every 1 s"), SHORT).await;
    chart_points(&c, cpu, 1, SHORT).await;

    // The analysis: the week's chart, and PC 1's hour among the hours with arrivals once a
    // login arrives (the approval alone is no arrival, so only the chart is checked here).
    c.goto(&format!("http://{ADMIN}/analysis")).await.unwrap();
    chart_points(&c, "#week-chart", 168, SHORT).await;
    wait_text(&c, "#summary", |t| t.contains("pool configured"), SHORT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    shot(&c, "analysis").await;

    for (page, ready) in [("overview", "#hosts .host"), ("people", "tr[data-user=\"alice\"]"), ("desktops", "#vms tbody tr")] {
        c.goto(&format!("http://{ADMIN}/{page}")).await.unwrap();
        c.wait().at_most(SHORT).for_element(Locator::Css(ready)).await.unwrap_or_else(|e| panic!("{page}: {e}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        shot(&c, page).await;
    }
    // Stop, from the Desktops page: the row goes, and so does the VM's QEMU on the host.
    let vm = c.find(Locator::Css("#vms tbody tr")).await.unwrap().attr("data-vm").await.unwrap().expect("the VM's row");
    let t_stop = Instant::now();
    c.find(Locator::Css(&format!("tr[data-vm=\"{vm}\"] button.stop"))).await.unwrap().click().await.unwrap();
    c.accept_alert().await.unwrap();
    wait_text(&c, "#status", |t| t.contains(&format!("stop {vm}: done")), LONG).await;
    wait_text(&c, "#vms tbody", |t| !t.contains(&vm), SHORT).await;
    let stop = t_stop.elapsed();
    let t_gone = Instant::now();
    while !testkit::server_host_qemu_pids(&host_state).is_empty() {
        assert!(t_gone.elapsed() < SHORT, "{vm}'s QEMU still runs after the stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
    c.wait().at_most(SHORT).for_element(Locator::Id("login")).await.unwrap();

    // The read-only account sees PC 2 arrive, but its approve is refused and changes nothing.
    log_in(&c, "viewer", VIEWER_PW).await;
    wait_text(&c, "header .who", |t| t.contains("viewer (readonly)"), SHORT).await;
    c.wait().at_most(SHORT).for_element(Locator::Css("#live.on")).await.unwrap();
    let pc2 = agent(lab, 2, ca, &macs[1], &ips[1]);
    let row2 = format!("tr[data-mac=\"{}\"] .enrolment", macs[1]);
    wait_text(&c, &row2, |t| t.starts_with("pending"), SHORT).await;
    c.find(Locator::Css(&format!("tr[data-mac=\"{}\"] button.approve", macs[1]))).await.unwrap().click().await.unwrap();
    wait_text(&c, "#status", |t| t.contains("refused") && t.contains("403"), SHORT).await;
    let entry = admin_enrolment(state, &macs[1]);
    assert_eq!(entry, "pending", "a read-only approve went through");
    // A stop from the read-only session is refused before the VM is even looked up (an admin
    // gets 404 for a VM that is gone).
    assert_eq!(post_from_page(&c, &format!("/api/vms/{vm}/stop"), true).await, 403);
    drop(pc2);
    let session = t0.elapsed();
    c.close().await.unwrap();
    Figures { session, pc_appears, approve: approve_took, chart_grows, desktop, stop }
}

/// The enrolment state of `mac` through the admin API with the bearer token (this thread is in
/// the lab's namespace, where the API listens).
fn admin_enrolment(state: &Path, mac: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "-m", "10", "-H", &testkit::admin_auth(state).unwrap()])
        .arg(format!("http://{ADMIN}/api/clients/{mac}"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["enrolment"]["state"].as_str().unwrap_or_default().to_string()
}
