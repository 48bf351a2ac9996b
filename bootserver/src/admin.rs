//! The admin API: JSON over HTTP on loopback (by default), and the client side used by the
//! `bootserver clients` and `bootserver client` commands.
//!
//! Every request passes [`Guard`] first: its Host must be one of the API's own names (a web
//! page that rebinds its DNS name to 127.0.0.1 still sends its own name), it must carry the
//! token of `<state_dir>/admin.token` as `Authorization: Bearer`, and a request that changes
//! something must be `Content-Type: application/json`, which no HTML form can send and which a
//! browser's script may send cross-origin only after a CORS preflight this API never answers.
//!
//! - `GET  /api/clients`              every PC the registry knows, with `connected`
//! - `GET  /api/clients/{mac}`        one PC, with its current boot's `stages`
//! - `GET  /api/boots`, `/api/boots/{mac}` boot-stage reports, PCs known only from DHCP too
//! - `POST /api/clients/{mac}/action` `{"action":"reboot"}`, `{"action":"poweroff"}` or
//!   `{"action":"message","text":"..."}`; 202 when queued on the PC's connection, 404 for an
//!   unknown PC, 409 when it is not connected.
//! - `POST /api/clients/{mac}/approve`, `/deny` `{}` or `{"by":"NAME"}`: enrolment (a MAC never
//!   seen may be decided beforehand); `GET /api/enrolment` every entry; `POST /api/enrolment`
//!   `{"code":"K7Q-2MX","approve":true}` decides the PC that shows that code.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use proto::agent::{Command, MacAddr};
use serde::{Deserialize, Serialize};

use crate::broker::listener::Broker;
use crate::broker::enrolment::Entry;
use crate::broker::registry::ClientRecord;
use crate::net::limits::{serve_router, ConnLimiter};

/// Where the admin API listens unless `BOOTSERVER_ADMIN` says otherwise. Loopback: it can
/// reboot every PC, so it is not offered to the LAN.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7001";
/// Environment variable naming the admin API's address, for the server and the commands alike.
pub const ADMIN_ENV: &str = "BOOTSERVER_ADMIN";

/// The file in the state dir that holds the admin API's bearer token.
pub const TOKEN_FILE: &str = "admin.token";

/// The admin address from the environment, else [`DEFAULT_ADMIN`].
pub fn admin_addr() -> anyhow::Result<SocketAddr> {
    let text = std::env::var(ADMIN_ENV).unwrap_or_else(|_| DEFAULT_ADMIN.to_string());
    text.parse().with_context(|| format!("{ADMIN_ENV}={text:?} is not an address of the form IP:PORT"))
}

/// A registry row plus whether the PC is connected right now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    #[serde(flatten)]
    pub record: ClientRecord,
    pub connected: bool,
    /// The current boot's stages (`GET /api/clients/{mac}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<crate::stages::StagesView>,
    /// Where the PC stands with `[pcs] enrolment` (see `broker::enrolment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolment: Option<Entry>,
}

/// What the admin asks a PC to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Reboot,
    Poweroff,
    Message { text: String },
}

impl From<Action> for Command {
    fn from(a: Action) -> Command {
        match a {
            Action::Reboot => Command::Reboot,
            Action::Poweroff => Command::PowerOff,
            Action::Message { text } => Command::ShowMessage { text },
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn parse_mac(text: &str) -> Result<String, Response> {
    text.parse::<MacAddr>().map(|m| m.to_string()).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

async fn list(State(broker): State<Arc<Broker>>) -> Response {
    let mut enrolled: std::collections::HashMap<String, Entry> = match &broker.enrolments {
        Some(g) => match g.list().await {
            Ok(all) => all.into_iter().map(|e| (e.mac.clone(), e)).collect(),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        None => Default::default(),
    };
    match broker.registry.list().await {
        Ok(rows) => {
            let views: Vec<ClientView> = rows
                .into_iter()
                .map(|record| {
                    let enrolment = broker.enrolments.as_ref().map(|_| {
                        enrolled.remove(&record.mac).unwrap_or_else(|| Entry::unknown(&record.mac))
                    });
                    ClientView { connected: broker.is_connected(&record.mac), record, stages: None, enrolment }
                })
                .collect();
            Json(views).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn one(State(broker): State<Arc<Broker>>, Path(mac): Path<String>) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match broker.registry.get(&mac).await {
        Ok(Some(record)) => {
            let stages = broker.stages.view(&mac);
            let enrolment = match &broker.enrolments {
                Some(g) => match g.get(&mac).await {
                    Ok(e) => Some(e),
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                },
                None => None,
            };
            Json(ClientView { connected: broker.is_connected(&mac), record, stages, enrolment }).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no client {mac} has ever announced itself")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn action(State(broker): State<Arc<Broker>>, Path(mac): Path<String>, Json(action): Json<Action>) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r,
    };
    match broker.registry.get(&mac).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no client {mac} has ever announced itself")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    log::info!("admin: {action:?} for {mac}");
    match broker.command(&mac, action.into()) {
        Ok(()) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "queued": true }))).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// The token of `state_dir`'s admin API, made (128 random bits, hex, a 0600 file) when there is
/// none yet. A file too short to be one of ours is refused rather than trusted.
pub fn ensure_token(state_dir: &FsPath) -> anyhow::Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    match read_token(&path) {
        // Its mode is the state dir's business: `serve` makes the top level private first.
        Ok(t) => return Ok(t),
        Err(e) if path.exists() => return Err(e),
        Err(_) => {}
    }
    let token: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    crate::statefile::write_private(&path, format!("{token}\n").as_bytes())?;
    log::info!("made the admin API's token {}", path.display());
    Ok(token)
}

/// Reads the admin token at `path`.
pub fn read_token(path: &FsPath) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the admin token {}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        anyhow::bail!("{}: not an admin token (at least 16 printable characters)", path.display());
    }
    Ok(token)
}

/// Where the commands find the token: `token_file`, else `admin.token` in `state_dir`.
pub fn token_path(token_file: Option<PathBuf>, state_dir: &FsPath) -> PathBuf {
    token_file.unwrap_or_else(|| state_dir.join(TOKEN_FILE))
}

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

/// What every admin request must show before it reaches a route (see the module's text).
#[derive(Debug, Clone)]
pub struct Guard {
    token: String,
    /// The Host header values that name this API, lower-case (`name:port`, and `name` alone
    /// when the port is 80).
    hosts: Vec<String>,
    /// The web console's logins, taken instead of the token (see [`Guard::with_console`]).
    console: Option<Arc<crate::web::Sessions>>,
}

impl Guard {
    /// A guard for the API on `listen` known by `names` (addresses and DNS names). On a
    /// loopback address "localhost" names it too.
    pub fn new(token: String, listen: SocketAddr, names: &[String]) -> Guard {
        let mut all: Vec<String> = Vec::new();
        if !listen.ip().is_unspecified() {
            all.push(listen.ip().to_string());
        }
        if listen.ip().is_loopback() {
            all.push("localhost".into());
        }
        all.extend(names.iter().cloned());
        let mut hosts = Vec::new();
        for n in all {
            let n = match n.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => n.to_ascii_lowercase(),
            };
            for h in [format!("{n}:{}", listen.port()), n.clone()] {
                if (listen.port() == 80 || h.contains(&format!(":{}", listen.port()))) && !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        Guard { token, hosts, console: None }
    }

    /// Also takes a console session's cookie instead of the token: with its CSRF token in the
    /// `X-CSRF-Token` header for a change, and a change only from an `admin` session. A page
    /// of another site cannot read that token, and the cookie is `SameSite=Strict` anyway.
    pub fn with_console(mut self, sessions: Arc<crate::web::Sessions>) -> Guard {
        self.console = Some(sessions);
        self
    }

    /// The Host values this guard takes, for the log.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The Host check alone, for the console's pages.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let refuse = |status, reason| Err(Refusal { status, reason });
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return refuse(StatusCode::BAD_REQUEST, "no Host header");
        };
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host.trim())) {
            return refuse(StatusCode::MISDIRECTED_REQUEST, "Host is not this admin API's name or address");
        }
        Ok(())
    }

    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let refuse = |status, reason| Err(Refusal { status, reason });
        self.check_host(headers)?;
        let changes = !matches!(*method, Method::GET | Method::HEAD);
        let bearer = headers.get(header::AUTHORIZATION);
        let session = match (&self.console, bearer) {
            (Some(c), None) => c.of(headers, std::time::Instant::now()).map(|(_, s)| s),
            _ => None,
        };
        if let Some(s) = session {
            let given = headers.get(crate::web::CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if changes && !constant_time_eq(given, s.csrf.as_bytes()) {
                return refuse(StatusCode::FORBIDDEN, "a change from the console needs its X-CSRF-Token header");
            }
            if changes && !s.may_change() {
                return refuse(StatusCode::FORBIDDEN, "this console login is read-only");
            }
        } else {
            let given = bearer.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            if !given.is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes())) {
                return refuse(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see admin.token in the state dir)");
            }
        }
        if changes {
            let media = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(str::trim);
            if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
                return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a request that changes something must be Content-Type: application/json");
            }
        }
        Ok(())
    }
}

/// Token comparison whose time does not depend on where the first difference is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(
    State(g): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match g.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            let host = req.headers().get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
            log::warn!(
                "admin API: {} for {peer}: {} {} (Host {}): {}",
                r.status.as_u16(),
                req.method(),
                crate::logsafe::Esc(req.uri().path()),
                crate::logsafe::Esc(host.as_deref().unwrap_or("-")),
                r.reason
            );
            error(r.status, r.reason)
        }
    }
}

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/clients", get(list))
        .route("/api/clients/:mac", get(one))
        .route("/api/clients/:mac/action", post(action))
        .route("/api/events", get(crate::web::events::stream))
        .with_state(broker.clone())
        .merge(crate::broker::enrolment::router(broker))
}

/// Serves the clients' routes, merged with `extra` (the desktops' routes) where given, within
/// `limiter`'s caps and timeouts.
pub async fn run(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    extra: Option<Router>,
    limiter: Arc<ConnLimiter>,
    gate: Arc<Guard>,
    console: Option<Router>,
) -> anyhow::Result<()> {
    log::info!("admin API on http://{} (Host {})", listener.local_addr()?, gate.hosts().join(", "));
    let mut app = router(broker);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let mut app = app.layer(middleware::from_fn_with_state(gate, guard));
    // The console's pages check the Host themselves and want a login, not the token.
    if let Some(console) = console {
        log::info!("web console on http://{}/", listener.local_addr()?);
        app = app.merge(console);
    }
    serve_router(listener, limiter, app).await
}

/// The admin API's address and the token the commands send it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub token: String,
}

/// One request to the admin API; returns the status and the body. Hyper's plain HTTP/1
/// connection: the API is local, and a full client library would only add TLS and pools.
pub async fn request(api: &Endpoint, method: &str, path: &str, body: Option<String>) -> anyhow::Result<(u16, String)> {
    let addr = api.addr;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin API at {addr} (is `bootserver serve` running? {ADMIN_ENV})"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .context("HTTP handshake with the admin API")?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {}", api.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await.with_context(|| format!("{method} {path} at {addr}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.context("reading the admin API's answer")?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

pub(crate) fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// `bootserver clients`: prints the registry as a table (or as the API's JSON).
pub fn print_clients(api: &Endpoint, json: bool) -> anyhow::Result<()> {
    let admin = api.addr;
    let (status, body) = block_on(request(api, "GET", "/api/clients", None))?;
    if status != 200 {
        anyhow::bail!("admin API at {admin} answered {status}: {body}");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let clients: Vec<ClientView> =
        serde_json::from_str(&body).with_context(|| format!("admin API at {admin} sent unreadable JSON"))?;
    print!("{}", table(&clients, crate::broker::registry::now_secs()));
    Ok(())
}

/// The human-readable list: one line per PC.
pub fn table(clients: &[ClientView], now: u64) -> String {
    let mut out = format!(
        "{:<17}  {:<11}  {:<9}  {:<15}  {:<15}  {:>8}  {:>4}  {:>8}  {:>5}  {:<10}  {}\n",
        "MAC", "STATE", "CONNECTED", "ENROLMENT", "ADDRESS", "RAM_MIB", "CPUS", "BOOT_S", "BOOTS", "LAST_SEEN", "VIEWER"
    );
    for c in clients {
        let r = &c.record;
        out.push_str(&format!(
            "{:<17}  {:<11}  {:<9}  {:<15}  {:<15}  {:>8}  {:>4}  {:>8.1}  {:>5}  {:<10}  {}\n",
            r.mac,
            serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            if c.connected { "yes" } else { "no" },
            crate::broker::enrolment::column(c.enrolment.as_ref()),
            r.address,
            r.hardware.ram_bytes >> 20,
            r.hardware.cpu_count,
            r.boot_ms as f64 / 1000.0,
            r.boots,
            format!("{}s ago", now.saturating_sub(r.last_seen)),
            r.viewer.as_deref().unwrap_or("-"),
        ));
    }
    out
}

/// `bootserver client MAC ACTION`.
pub fn send_action(api: &Endpoint, mac: &str, action: &Action) -> anyhow::Result<()> {
    let mac = mac.parse::<MacAddr>().map_err(|e| anyhow::anyhow!(e))?;
    let body = serde_json::to_string(action)?;
    let path = format!("/api/clients/{mac}/action");
    let (status, answer) = block_on(request(api, "POST", &path, Some(body)))?;
    match status {
        202 => {
            println!("{mac}: {} sent", serde_json::to_value(action)?["action"].as_str().unwrap_or("action"));
            Ok(())
        }
        _ => {
            let msg = serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(answer);
            anyhow::bail!("{mac}: {msg} (admin API answered {status})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_the_api_documents() {
        let a: Action = serde_json::from_str(r#"{"action":"message","text":"hi"}"#).unwrap();
        assert_eq!(Command::from(a), Command::ShowMessage { text: "hi".into() });
        let a: Action = serde_json::from_str(r#"{"action":"poweroff"}"#).unwrap();
        assert_eq!(Command::from(a), Command::PowerOff);
        assert!(serde_json::from_str::<Action>(r#"{"action":"format_disk"}"#).is_err());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_guard_takes_own_names_the_token_and_json_only() {
        let g = Guard::new("0123456789abcdef".into(), "10.0.0.1:7001".parse().unwrap(), &["boot".into(), "fe80::1".into()]);
        let ok = |m: Method, h: &[(&str, &str)]| g.check(&m, &headers(h)).map_err(|r| r.status.as_u16());
        let auth = ("authorization", "Bearer 0123456789abcdef");
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1:7001"), auth]), Ok(()));
        assert_eq!(ok(Method::GET, &[("host", "BOOT:7001"), auth]), Ok(()));
        assert_eq!(ok(Method::GET, &[("host", "[fe80::1]:7001"), auth]), Ok(()));
        // A rebound DNS name, the right address on another port, no port at all, no Host.
        assert_eq!(ok(Method::GET, &[("host", "evil.example:7001"), auth]), Err(421));
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1:7002"), auth]), Err(421));
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1"), auth]), Err(421));
        assert_eq!(ok(Method::GET, &[auth]), Err(400));
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1:7001")]), Err(401));
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1:7001"), ("authorization", "Bearer 0123456789abcdeF")]), Err(401));
        assert_eq!(ok(Method::GET, &[("host", "10.0.0.1:7001"), ("authorization", "Basic 0123456789abcdef")]), Err(401));
        assert_eq!(ok(Method::POST, &[("host", "10.0.0.1:7001"), auth, json]), Ok(()));
        for form in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
            assert_eq!(ok(Method::POST, &[("host", "10.0.0.1:7001"), auth, ("content-type", form)]), Err(415), "{form}");
        }
        assert_eq!(ok(Method::DELETE, &[("host", "10.0.0.1:7001"), auth]), Err(415));
        // On loopback, localhost names it; on port 80 the port may be left out.
        let lo = Guard::new("0123456789abcdef".into(), "127.0.0.1:80".parse().unwrap(), &[]);
        for host in ["localhost", "127.0.0.1:80", "localhost:80"] {
            assert!(lo.check(&Method::GET, &headers(&[("host", host), auth])).is_ok(), "{host}");
        }
    }

    #[test]
    fn a_console_session_needs_its_csrf_token_and_the_admin_role_to_change() {
        let sessions = Arc::new(crate::web::Sessions::new(std::time::Duration::from_secs(60)));
        let g = Guard::new("0123456789abcdef".into(), "127.0.0.1:7001".parse().unwrap(), &[]).with_console(sessions.clone());
        let now = std::time::Instant::now();
        let admin = sessions.open("root", crate::accounts::Role::Admin, now);
        let viewer = sessions.open("eve", crate::accounts::Role::Readonly, now);
        let csrf = |id: &str| sessions.of(&headers(&[("cookie", &format!("{}={id}", crate::web::COOKIE))]), now).unwrap().1.csrf;
        let ok = |m: Method, id: &str, token: Option<&str>| {
            let cookie = format!("{}={id}", crate::web::COOKIE);
            let mut h = vec![("host", "127.0.0.1:7001"), ("cookie", cookie.as_str()), ("content-type", "application/json")];
            if let Some(t) = token {
                h.push(("x-csrf-token", t));
            }
            g.check(&m, &headers(&h)).map_err(|r| r.status.as_u16())
        };
        let (a, v) = (csrf(&admin), csrf(&viewer));
        assert_eq!(ok(Method::GET, &admin, None), Ok(()));
        assert_eq!(ok(Method::GET, &viewer, None), Ok(()));
        assert_eq!(ok(Method::POST, &admin, Some(&a)), Ok(()));
        assert_eq!(ok(Method::POST, &admin, None), Err(403));
        assert_eq!(ok(Method::POST, &admin, Some(&v)), Err(403));
        assert_eq!(ok(Method::POST, &viewer, Some(&v)), Err(403));
        assert_eq!(ok(Method::GET, "not-a-session", None), Err(401));
        // A wrong bearer token is not rescued by a cookie.
        let cookie = format!("{}={admin}", crate::web::COOKIE);
        let h = headers(&[("host", "127.0.0.1:7001"), ("cookie", &cookie), ("authorization", "Bearer wrong")]);
        assert_eq!(g.check(&Method::GET, &h).map_err(|r| r.status.as_u16()), Err(401));
    }

    #[test]
    fn the_token_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = ensure_token(dir.path()).unwrap();
        assert_eq!(t.len(), 32);
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(ensure_token(dir.path()).unwrap(), t);
        std::fs::write(&path, "short").unwrap();
        assert!(ensure_token(dir.path()).is_err());
    }
}
