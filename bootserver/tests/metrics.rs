//! The admin console's data in the lab (10.93.0): a real `server-host` on lab host 1 sampled by
//! the real `bootserver serve` on the bridge every second (`[metrics] sample_secs = 1`):
//! - `GET /api/hosts/h1/series?range=1h` holds points whose figures are the host's, and a bad
//!   range is a 400 that names the good ones;
//! - `/metrics`, from lab host 2, answers the admin token with text that Prometheus' own
//!   `promtool check metrics` accepts, and refuses a scrape without it or with another token;
//! - every (method, path) of `bootserver/openapi.json` reaches a route of the running server
//!   (a route the file names but the code lacks gets axum's bare 404 or 405), and every route
//!   written in the code is in the file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{KillOnDrop, Lab};

const SUBNET: &str = "10.93.0";
const HOST_IP: &str = "10.93.0.11";
const SCRAPER: u32 = 2;
const SCRAPER_IP: &str = "10.93.0.12";

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (METHOD, path) of every operation in the OpenAPI file.
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(manifest().join("openapi.json")).expect("reading openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("openapi.json has paths") {
        for method in ops.as_object().expect("a path's operations").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (METHOD, path) of every `.route("/api..."` and `.route("/metrics"` in the crate's source,
/// with axum's `:param` written as OpenAPI's `{param}`.
fn in_code() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(&manifest().join("src"), &mut files);
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(lit) = rest.trim_start().strip_prefix('"') else { continue };
            let path = &lit[..lit.find('"').unwrap()];
            if !(path.starts_with("/api") || path == "/metrics") {
                continue;
            }
            let path: String =
                path.split('/').map(|s| s.strip_prefix(':').map_or(s.to_string(), |p| format!("{{{p}}}"))).collect::<Vec<_>>().join("/");
            // The method router runs to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let methods = &rest[..end];
            let before = |i: usize| methods[..i].chars().last().map_or(true, |c| !c.is_alphanumeric() && c != '_');
            for m in ["get", "post", "put", "patch", "delete"] {
                for (i, _) in methods.match_indices(&format!("{m}(")) {
                    if before(i) {
                        out.insert((m.to_uppercase(), path.clone()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_route_in_the_code_is_in_the_openapi_file() {
    let code = in_code();
    let file = documented();
    assert!(code.len() >= 20, "the source scan found only {code:?}");
    let missing: Vec<_> = code.difference(&file).collect();
    assert!(missing.is_empty(), "routes in the code but not in bootserver/openapi.json: {missing:?}");
    let extra: Vec<_> = file.difference(&code).collect();
    assert!(extra.is_empty(), "bootserver/openapi.json names routes the code lacks: {extra:?}");
}

fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_bootserver")).with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries (scripts/setup)", p.display());
    p
}

/// curl from lab host 2: (status, body).
fn curl(lab: &Lab, args: &[&str], url: &str) -> (u16, String) {
    let out = lab
        .host_cmd(SCRAPER, "curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn host_series_metrics_and_every_documented_route_on_a_running_server() {
    let t_start = Instant::now();
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    for (k, ip) in [(1, HOST_IP), (SCRAPER, SCRAPER_IP)] {
        let st = lab.host_cmd(k, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).status().unwrap();
        assert!(st.success());
    }
    let dir = tempfile::tempdir().unwrap();
    let bs_state = dir.path().join("bs-state");
    let pki = testkit::host_pki(Path::new(env!("CARGO_BIN_EXE_bootserver")), &bs_state, "h1", &[HOST_IP]).unwrap();
    let sh_state = dir.path().join("sh-state");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let cfg = dir.path().join("server-host.toml");
    std::fs::write(&cfg, testkit::server_host_config(&pki.tls_dir, &format!("{HOST_IP}:8470"), &sh_state, &templates)).unwrap();
    let sh_log = dir.path().join("server-host.log");
    // Kills the host's QEMUs when the test ends, however it ends.
    let _qemus = testkit::HostVms(sh_state.clone());
    let _host = KillOnDrop::spawn(
        lab.host_cmd(1, sibling_bin("server-host"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&sh_log).unwrap()),
    )
    .unwrap();

    let server = lab.server_addr();
    let admin = format!("{server}:7001");
    std::fs::write(
        dir.path().join("bootserver.toml"),
        format!(
            "address = \"{server}\"\n[metrics]\nsample_secs = 1\n[desktops]\nlevels_mib = [256, 128]\n\
             health_interval_secs = 1\npool = 0\n[[desktops.hosts]]\nname = \"h1\"\nurl = \"https://{HOST_IP}:8470\"\nmemory_mib = 512\n"
        ),
    )
    .unwrap();
    let bs_log = dir.path().join("bootserver.log");
    let config = dir.path().join("bootserver.toml");
    let args = ["--config", config.to_str().unwrap(), "--interface", "br0"];
    let cmd = lab.cmd(env!("CARGO_BIN_EXE_bootserver"));
    let _bs = testkit::serve_admin(cmd, &args, &bs_state, &dir.path().join("boot"), &admin, &bs_log).unwrap();
    let logs = || {
        format!(
            "--- bootserver ---\n{}\n--- server-host ---\n{}",
            std::fs::read_to_string(&bs_log).unwrap_or_default(),
            std::fs::read_to_string(&sh_log).unwrap_or_default()
        )
    };
    let auth = testkit::admin_auth(&bs_state).unwrap();
    let get = |path: &str| curl(&lab, &["-H", &auth], &format!("http://{admin}{path}"));

    // A few samples: the first reading only starts the counters.
    let t0 = Instant::now();
    let series = loop {
        let (code, body) = get("/api/hosts/h1/series?range=1h");
        assert_eq!(code, 200, "{body}\n{}", logs());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["t"].as_array().is_some_and(|t| t.len() >= 3) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no points after 30 s: {body}\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    };
    let n = series["t"].as_array().unwrap().len();
    eprintln!("{n} points after {:.1} s: {series}", t0.elapsed().as_secs_f64());
    for field in ["cpu", "mem_used", "mem_total", "mem_committed", "load", "vms", "net_rx", "net_tx"] {
        assert_eq!(series[field].as_array().map(Vec::len), Some(n), "{field}: {series}");
    }
    let t: Vec<i64> = series["t"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "times in order: {t:?}");
    let cpu = series["cpu"][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{series}");
    let total = series["mem_total"][0].as_f64().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(total, kib * 1024.0, "the host's MemTotal");
    assert!(series["mem_used"][0].as_f64().unwrap() > 0.0 && series["mem_used"][0].as_f64().unwrap() < total);
    assert_eq!(series["vms"][0].as_f64(), Some(0.0));
    // The other ranges read the coarser archives, still empty this soon; a bad range or host.
    for range in ["1d", "30d", "1y"] {
        let (code, body) = get(&format!("/api/hosts/h1/series?range={range}"));
        assert_eq!(code, 200, "{range}: {body}");
    }
    let (code, body) = get("/api/hosts/h1/series?range=2h");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("1h, 1d, 30d, 1y"), "{body}");
    assert_eq!(get("/api/hosts/h9/series").0, 404);
    let (code, body) = get("/api/analysis");
    assert_eq!(code, 200, "{body}");
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(a["hours"].as_array().map(Vec::len), Some(168), "{body}");
    assert_eq!(a["pool_configured"], 0);

    // Prometheus' scrape: with the token, text promtool accepts; without, nothing.
    let url = format!("http://{admin}/metrics");
    let (code, text) = curl(&lab, &["-H", &auth], &url);
    assert_eq!(code, 200, "{text}");
    for want in ["bootserver_host_up{host=\"h1\"} 1", "bootserver_host_memory_total_bytes{host=\"h1\"}", "bootserver_pcs{state=\"online\"} 0", "bootserver_memory_level 0", "bootserver_memory_max_users", "bootserver_refusals_total 0", "bootserver_pool_configured 0"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup installs it)");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}\n{text}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Prometheus asks for OpenMetrics, and gets it.
    let (code, open) = curl(&lab, &["-H", &auth, "-H", "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"], &url);
    assert_eq!(code, 200, "{open}");
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE bootserver_refusals counter"), "{open}");
    assert_eq!(curl(&lab, &[], &url).0, 401);
    assert_eq!(curl(&lab, &["-H", "Authorization: Bearer 00000000000000000000000000000000"], &url).0, 401);

    // Every documented operation reaches a route: a handler's answer, never axum's bare 404
    // or its 405. Parameters get values that change nothing that matters here.
    let mut unrouted = Vec::new();
    for (method, path) in documented() {
        let concrete = path.replace("{mac}", "52:54:00:00:00:99").replace("{name}", "h1").replace("{user}", "nobody");
        // The event stream never ends: a short limit (curl keeps the last -m) still shows
        // whether it was routed, by the status it answered before the limit.
        let limit = if path == "/api/events" { "3" } else { "20" };
        let (code, body) = curl(
            &lab,
            &["-X", &method, "-H", &auth, "-H", "Content-Type: application/json", "--data", "{}", "-m", limit],
            &format!("http://{admin}{concrete}"),
        );
        if code == 405 || (code == 404 && body.is_empty()) || code == 0 {
            unrouted.push(format!("{method} {path}: {code} {body:?}"));
        }
    }
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
    // ...and the check itself tells a missing route.
    let (code, body) = get("/api/no-such-route");
    assert!(code == 404 && body.is_empty(), "{code} {body:?}");
    eprintln!("whole test: {:.1} s", t_start.elapsed().as_secs_f64());
}
