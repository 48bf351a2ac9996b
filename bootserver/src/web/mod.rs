//! The web console: server-rendered pages (maud) on the admin address, for people with the
//! `admin` or `readonly` role. The pages hold no data of their own: a little JavaScript fetches
//! the admin API's JSON, and every action goes through that API too, authenticated by the
//! console's session cookie plus a CSRF token header (see [`crate::admin::Guard`]). The
//! rows follow the broker live through `GET /api/events` ([`events`]).
//!
//! - `GET  /login`, `POST /login` (a form: `name`, `password`), `POST /logout` (CSRF header)
//! - `GET  /pcs`, `/overview`, `/people`, `/desktops`, `/hosts`, `/analysis` (all but the
//!   first and third only with `[desktops]`), and `/assets/*` (compiled into the binary; uPlot
//!   for the charts, from npm, with its license)

pub mod events;
mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::accounts::{Authenticator, LoginError, Role};
use crate::admin::Guard;
use crate::ratelimit::{PerKey, Rate};

/// The session cookie's name.
pub const COOKIE: &str = "bootserver_console";
/// The header that carries a session's CSRF token on every change.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a console login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest goes first (a login flood must not grow the table).
const SESSIONS_MAX: usize = 1024;

/// One logged-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether this session may change things (not only look).
    pub fn may_change(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The console's sessions, in memory: a restart logs everyone out, which is what a server
/// restart should do to admin logins anyway.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

fn random_hex() -> String {
    rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions { map: Mutex::default(), ttl }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `name`; returns its id (the cookie's value).
    pub fn open(&self, name: &str, role: Role, now: Instant) -> String {
        let id = random_hex();
        let mut map = self.map();
        map.retain(|_, s| s.expires > now);
        if map.len() >= SESSIONS_MAX {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), Session { name: name.into(), role, csrf: random_hex(), expires: now + self.ttl });
        id
    }

    /// The live session of the request's cookie, with its id.
    pub fn of(&self, headers: &HeaderMap, now: Instant) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.map();
        match map.get(id) {
            Some(s) if s.expires > now => Some((id.to_string(), s.clone())),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.map().remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Login attempts: a few in a row, then one every few seconds, per name and per peer, so that
/// guessing a password costs hours; the table is bounded (see [`PerKey`]).
const LOGIN_RATE: Rate = Rate { burst: 5, every: Duration::from_secs(6) };

struct Throttle {
    names: PerKey<String>,
    peers: PerKey<IpAddr>,
}

/// What the console's handlers share.
pub struct Console {
    pub sessions: Arc<Sessions>,
    auth: Arc<Authenticator>,
    guard: Arc<Guard>,
    throttle: Mutex<Throttle>,
    /// Whether `[desktops]` is set: the overview and desktops pages need it.
    desktops: bool,
}

impl Console {
    pub fn new(sessions: Arc<Sessions>, auth: Arc<Authenticator>, guard: Arc<Guard>, desktops: bool) -> Console {
        let throttle = Throttle { names: PerKey::new(LOGIN_RATE, 4096), peers: PerKey::new(LOGIN_RATE, 4096) };
        Console { sessions, auth, guard, throttle: Mutex::new(throttle), desktops }
    }

    fn allowed(&self, name: &str, peer: IpAddr) -> bool {
        let now = Instant::now();
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        // Both buckets pay, so that spreading names does not help one peer.
        let by_peer = t.peers.take(&peer, now).is_ok();
        let by_name = t.names.take(&name.to_string(), now).is_ok();
        by_peer && by_name
    }

    fn pages(&self) -> Vec<pages::Page> {
        pages::Page::ALL.iter().copied().filter(|p| self.desktops || !p.needs_desktops()).collect()
    }
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

fn set_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

async fn login_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.sessions.of(&headers, Instant::now()).is_some() {
        return Redirect::to("/pcs").into_response();
    }
    pages::login(None).into_response()
}

async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let shown = crate::logsafe::Esc(&form.name).to_string();
    if !c.allowed(&form.name, peer.ip()) {
        log::warn!("console: login of {shown} from {peer} refused: too many attempts");
        return (StatusCode::TOO_MANY_REQUESTS, pages::login(Some("Too many attempts; wait a minute."))).into_response();
    }
    let (status, message) = match c.auth.authenticate(&form.name, &form.password).await {
        Ok(id) if matches!(id.role, Role::Admin | Role::Readonly) => {
            let sid = c.sessions.open(&id.name, id.role, Instant::now());
            log::info!("console: {} logged in ({}) from {peer}", id.name, id.role.as_str());
            let mut r = Redirect::to("/pcs").into_response();
            r.headers_mut().insert(header::SET_COOKIE, set_cookie(&sid, SESSION_TTL.as_secs()).parse().expect("ASCII"));
            return r;
        }
        Ok(id) => {
            log::warn!("console: {} (role {}) may not use the console", id.name, id.role.as_str());
            (StatusCode::FORBIDDEN, "This account may not use the console.".to_string())
        }
        Err(e @ LoginError::DirectoryUnreachable) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => {
            log::warn!("console: login of {shown} from {peer} refused: {e}");
            (StatusCode::UNAUTHORIZED, "Wrong user name or password.".to_string())
        }
    };
    (status, pages::login(Some(&message))).into_response()
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((id, s)) = c.sessions.of(&headers, Instant::now()) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let given = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !crate::admin::constant_time_eq(given, s.csrf.as_bytes()) {
        return StatusCode::FORBIDDEN.into_response();
    }
    c.sessions.close(&id);
    log::info!("console: {} logged out", s.name);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, set_cookie("", 0).parse().expect("ASCII"));
    r
}

async fn page(c: &Console, headers: &HeaderMap, which: pages::Page) -> Response {
    match c.sessions.of(headers, Instant::now()) {
        Some((_, s)) => pages::render(which, &s, &c.pages()).into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

/// Pages and assets of the console; every request is first checked for the API's own Host
/// name, as the API's are (a rebound DNS name must not reach the login form either).
pub fn router(console: Arc<Console>) -> Router {
    let mut r = Router::new()
        .route("/", get(|| async { Redirect::to("/pcs") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/console.js", get(|| async { asset("text/javascript", include_str!("assets/console.js")) }))
        .route("/assets/console.css", get(|| async { asset("text/css", include_str!("assets/console.css")) }))
        .route("/assets/uPlot.iife.min.js", get(|| async { asset("text/javascript", include_str!("assets/uPlot.iife.min.js")) }))
        .route("/assets/uPlot.min.css", get(|| async { asset("text/css", include_str!("assets/uPlot.min.css")) }))
        .route("/assets/uPlot.LICENSE", get(|| async { asset("text/plain; charset=utf-8", include_str!("assets/uPlot.LICENSE")) }));
    for p in console.pages() {
        r = r.route(p.path(), get(move |State(c): State<Arc<Console>>, h: HeaderMap| async move { page(&c, &h, p).await }));
    }
    let guard = console.guard.clone();
    r.with_state(console).layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
        let guard = guard.clone();
        async move {
            match guard.check_host(req.headers()) {
                Ok(()) => next.run(req).await,
                Err(r) => (r.status, r.reason).into_response(),
            }
        }
    }))
}

fn asset(media: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, media), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn sessions_expire_close_and_are_found_by_cookie_only() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let id = s.open("alice", Role::Readonly, t0);
        let (_, got) = s.of(&with_cookie(&format!("other=1; {COOKIE}={id}")), t0).unwrap();
        assert_eq!((got.name.as_str(), got.may_change(), got.csrf.len()), ("alice", false, 32));
        assert!(s.of(&with_cookie(&format!("{COOKIE}=x{id}")), t0).is_none());
        assert!(s.of(&HeaderMap::new(), t0).is_none());
        assert!(s.of(&with_cookie(&format!("{COOKIE}={id}")), t0 + Duration::from_secs(61)).is_none());
        let id = s.open("bob", Role::Admin, t0);
        s.close(&id);
        assert!(s.of(&with_cookie(&format!("{COOKIE}={id}")), t0).is_none());
    }

    #[test]
    fn the_session_table_is_bounded() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..SESSIONS_MAX + 10 {
            s.open("a", Role::Admin, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.map().len(), SESSIONS_MAX);
    }
}
