//! The admin API: JSON over HTTP on loopback (by default), and the client side used by the
//! `bootserver clients` and `bootserver client` commands.
//!
//! - `GET  /api/clients`              every PC the registry knows, with `connected`
//! - `GET  /api/clients/{mac}`        one PC
//! - `POST /api/clients/{mac}/action` `{"action":"reboot"}`, `{"action":"poweroff"}` or
//!   `{"action":"message","text":"..."}`; 202 when queued on the PC's connection, 404 for an
//!   unknown PC, 409 when it is not connected.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use proto::agent::{Command, MacAddr};
use serde::{Deserialize, Serialize};

use crate::broker::listener::Broker;
use crate::broker::registry::ClientRecord;
use crate::net::limits::{serve_router, ConnLimiter};

/// Where the admin API listens unless `BOOTSERVER_ADMIN` says otherwise. Loopback: it can
/// reboot every PC, so it is not offered to the LAN.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7001";
/// Environment variable naming the admin API's address, for the server and the commands alike.
pub const ADMIN_ENV: &str = "BOOTSERVER_ADMIN";

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
    match broker.registry.list().await {
        Ok(rows) => {
            let views: Vec<ClientView> = rows
                .into_iter()
                .map(|record| ClientView { connected: broker.is_connected(&record.mac), record })
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
        Ok(Some(record)) => Json(ClientView { connected: broker.is_connected(&mac), record }).into_response(),
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

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/clients", get(list))
        .route("/api/clients/:mac", get(one))
        .route("/api/clients/:mac/action", post(action))
        .with_state(broker)
}

/// Serves the clients' routes, merged with `extra` (the desktops' routes) where given, within
/// `limiter`'s caps and timeouts.
pub async fn run(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    extra: Option<Router>,
    limiter: Arc<ConnLimiter>,
) -> anyhow::Result<()> {
    log::info!("admin API on http://{}", listener.local_addr()?);
    let mut app = router(broker);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    serve_router(listener, limiter, app).await
}

/// One request to the admin API; returns the status and the body. Hyper's plain HTTP/1
/// connection: the API is local, and a full client library would only add TLS and pools.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<String>) -> anyhow::Result<(u16, String)> {
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
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = sender.send_request(req).await.with_context(|| format!("{method} {path} at {addr}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.context("reading the admin API's answer")?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// `bootserver clients`: prints the registry as a table (or as the API's JSON).
pub fn print_clients(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let (status, body) = block_on(request(admin, "GET", "/api/clients", None))?;
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
        "{:<17}  {:<11}  {:<9}  {:<15}  {:>8}  {:>4}  {:>8}  {:>5}  {:<10}  {}\n",
        "MAC", "STATE", "CONNECTED", "ADDRESS", "RAM_MIB", "CPUS", "BOOT_S", "BOOTS", "LAST_SEEN", "VIEWER"
    );
    for c in clients {
        let r = &c.record;
        out.push_str(&format!(
            "{:<17}  {:<11}  {:<9}  {:<15}  {:>8}  {:>4}  {:>8.1}  {:>5}  {:<10}  {}\n",
            r.mac,
            serde_json::to_value(r.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            if c.connected { "yes" } else { "no" },
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
pub fn send_action(admin: SocketAddr, mac: &str, action: &Action) -> anyhow::Result<()> {
    let mac = mac.parse::<MacAddr>().map_err(|e| anyhow::anyhow!(e))?;
    let body = serde_json::to_string(action)?;
    let path = format!("/api/clients/{mac}/action");
    let (status, answer) = block_on(request(admin, "POST", &path, Some(body)))?;
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
}
