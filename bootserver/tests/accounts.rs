//! `bootserver user ...` on a state dir, and `/api/users` of a running `bootserver serve` with
//! curl, the two changing the same store at the same time.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `bootserver user ARGS --state-dir STATE`, with `stdin` piped in.
fn user(state: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootserver"))
        .arg("user")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn list(state: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&user(state, &["list", "--json"], ""))).unwrap()
}

#[test]
fn the_user_command_adds_changes_and_removes_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = user(&state, &["add", "alice", "--admin", "--template", "office", "--password-stdin"], "a long password\n");
    assert!(ok(&out).contains("user alice added (admin, persistent desktop, template office)"));
    ok(&user(&state, &["add", "kiosk1", "--one-time", "--password-stdin"], "kiosk password"));
    assert!(err(&user(&state, &["add", "alice", "--password-stdin"], "another password\n")).contains("already exists"));
    assert!(err(&user(&state, &["add", "Bob", "--password-stdin"], "a long password\n")).contains("lower-case letter first"));
    assert!(err(&user(&state, &["add", "bob", "--password-stdin"], "short\n")).contains("shorter than 8"));
    let long = format!("{}\n", "x".repeat(300));
    assert!(err(&user(&state, &["add", "bob", "--password-stdin"], &long)).contains("longer than 256"));
    assert!(err(&user(&state, &["add", "bob", "--template", "../etc", "--password-stdin"], "a long password\n")).contains("template name"));
    // No terminal and no --password-stdin: told how to give it.
    assert!(err(&user(&state, &["add", "bob"], "")).contains("--password-stdin"));

    let users = list(&state);
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert_eq!(users[0]["name"], "alice");
    assert_eq!((users[0]["role"].as_str(), users[0]["template"].as_str()), (Some("admin"), Some("office")));
    assert_eq!((users[1]["desktop"].as_str(), users[1]["template"].as_str()), (Some("one-time"), None));
    assert!(!users.to_string().contains("argon2"), "{users}");

    ok(&user(&state, &["disable", "alice"], ""));
    assert_eq!(list(&state)[0]["enabled"], false);
    let table = ok(&user(&state, &["list"], ""));
    assert!(table.lines().any(|l| l.starts_with("alice") && l.contains(" no ")), "{table}");
    ok(&user(&state, &["enable", "alice"], ""));
    assert_eq!(list(&state)[0]["enabled"], true);
    ok(&user(&state, &["passwd", "alice", "--password-stdin"], "a new password\n"));
    assert!(err(&user(&state, &["passwd", "carol", "--password-stdin"], "a new password\n")).contains("no user carol"));
    ok(&user(&state, &["del", "kiosk1"], ""));
    let e = err(&user(&state, &["del", "kiosk1"], ""));
    assert!(e.contains("no user kiosk1") && e.contains("bootserver user list"), "{e}");
    assert_eq!(list(&state).as_array().unwrap().len(), 1);

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for f in std::fs::read_dir(&state).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let help = ok(&Command::new(env!("CARGO_BIN_EXE_bootserver")).args(["user", "add", "--help"]).output().unwrap());
    assert!(help.contains("bootserver user add bob --admin --template office"), "{help}");
}

/// curl to the admin API: the status and the body.
fn curl(api: &str, auth: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "10", "-w", "\n%{http_code}", "-X", method, "-H", auth]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = c.arg(format!("http://{api}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_admin_api_manages_users_while_the_command_does_too() {
    let dir = tempfile::tempdir().unwrap();
    let (state, boot) = (dir.path().join("state"), dir.path().join("boot"));
    let api = format!("127.0.0.1:{}", testkit::free_port());
    let log = dir.path().join("server.log");
    let broker = format!("127.0.0.1:{}", testkit::free_port());
    let args = ["--interface", "lo", "--address", "127.0.0.1", "--no-hello-binding", "--broker", &broker];
    let _server = testkit::serve_admin(Command::new(env!("CARGO_BIN_EXE_bootserver")), &args, &state, &boot, &api, &log).unwrap();
    let auth = testkit::admin_auth(&state).unwrap();
    let call = |method, path, body| curl(&api, &auth, method, path, body);

    // Made by the command while the server runs; seen by the API.
    ok(&user(&state, &["add", "alice", "--password-stdin"], "alice's password\n"));
    let (code, body) = call("GET", "/api/users", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()[0]["name"], "alice");
    assert_eq!(curl(&api, "X-No: token", "GET", "/api/users", None).0, 401);

    let (code, body) = call("POST", "/api/users", Some(r#"{"name":"bob","password":"bob's password","role":"admin","template":"kiosk","desktop":"one-time"}"#));
    assert_eq!(code, 201, "{body}");
    let bob: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((bob["role"].as_str(), bob["desktop"].as_str(), bob["enabled"].as_bool()), (Some("admin"), Some("one-time"), Some(true)));
    assert_eq!(call("POST", "/api/users", Some(r#"{"name":"bob","password":"bob's password"}"#)).0, 409);
    let (code, body) = call("POST", "/api/users", Some(r#"{"name":"Bob!","password":"bob's password"}"#));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("lower-case letter first"), "{body}");
    assert_eq!(call("POST", "/api/users", Some(r#"{"name":"carol","password":"short"}"#)).0, 400);
    let huge = format!(r#"{{"name":"carol","password":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(call("POST", "/api/users", Some(&huge)).0, 400);
    // A field the API does not know is refused, not ignored (a typo must not pass silently).
    assert!(call("POST", "/api/users", Some(r#"{"name":"carol","password":"carol's password","admin":true}"#)).0 >= 400);

    let (code, body) = call("PATCH", "/api/users/bob", Some(r#"{"enabled":false,"template":null,"role":"user","password":"bob's new password"}"#));
    assert_eq!(code, 200, "{body}");
    let bob: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((bob["enabled"].as_bool(), bob["template"].is_null(), bob["role"].as_str()), (Some(false), true, Some("user")));
    assert_eq!(bob["desktop"], "one-time", "left alone: {bob}");
    assert_eq!(call("PATCH", "/api/users/nobody", Some(r#"{"enabled":true}"#)).0, 404);
    assert_eq!(call("PATCH", "/api/users/nobody", Some(r#"{"password":"nobody's password"}"#)).0, 404);

    // Changed by the API; seen by the command.
    let users = list(&state);
    assert_eq!(users[1]["name"], "bob");
    assert_eq!(users[1]["enabled"], false);
    assert_eq!(call("GET", "/api/users/bob", None).0, 200);
    assert_eq!(call("DELETE", "/api/users/bob", Some("{}")).0, 200);
    assert_eq!(call("DELETE", "/api/users/bob", Some("{}")).0, 404);
    // A change without the JSON content type is refused by the guard.
    assert_eq!(call("DELETE", "/api/users/alice", None).0, 415);
    let (_, all) = call("GET", "/api/users", None);
    assert!(!all.contains("argon2") && !all.contains("phc"), "{all}");
    assert_eq!(list(&state).as_array().unwrap().len(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("admin: user bob added"), "{text}");
    assert!(!text.contains("bob's new password"), "password logged");
}
