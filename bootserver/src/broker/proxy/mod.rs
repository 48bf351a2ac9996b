//! The VNC proxy: viewers connect only here, with their session token as password (inside
//! VeNCrypt's TLS, see [`vencrypt`]; VNC authentication only where an admin allows it); the
//! proxy holds their RFB session and talks RFB to their VM, so that a hard handoff swaps the VM
//! under a live viewer connection.
//!
//! A session is known by its identity (the user it serves), not by its token: the broker
//! rotates the token at every assignment and handoff, and a viewer that authenticated with an
//! older one stays connected. The proxy keeps the current token in memory only (VNC
//! authentication needs it in clear) and its SHA-256 for the session store; a session put back
//! after a restart has only the hash until the broker issues it a new token.
//!
//! On a switch the proxy connects to the new VM, replays the viewer's pixel format and
//! encodings, asks for a full update and waits until it has arrived; only then does it swap:
//! an update still open from the old VM is closed with empty rectangles, a DesktopSize
//! rectangle goes out if the new VM's screen differs (the viewer must have advertised
//! DesktopSize or ExtendedDesktopSize; a viewer that did not cannot be resized and is
//! disconnected, which a well-behaved viewer answers by reconnecting with the same token), the
//! first Tight rectangle asks the viewer to reset its zlib streams, and the buffered full frame
//! follows. The viewer sees one more update, never a reconnect. ZRLE and Zlib rectangles are
//! re-compressed into the viewer's own zlib stream, which the switch does not touch (see
//! [`recode`]). See [`rfb`] for why only some encodings are offered to VMs.
//!
//! When a VM's connection drops (its host died), the viewer stays connected and sees a frozen
//! screen until the broker switches it to a new VM, or until `orphan_timeout` passes.

pub(crate) mod auth;
pub mod backend;
#[doc(hidden)]
pub mod fuzz;
mod recode;
pub mod rfb;
mod session;
pub mod vencrypt;
#[cfg(test)]
mod handshake_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use backend::{Backend, BackendError, VncAddr};

use crate::logsafe::Esc;
use crate::net::limits::{accept_loop, ConnLimiter};

/// Timings of a switch, for the handoff log and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    /// Whether a viewer was connected (otherwise only the probe of the new VM ran).
    pub viewer_connected: bool,
    pub connect_ms: u64,
    /// From the start of the switch to the new VM's first complete full update.
    pub first_frame_ms: u64,
    /// From the start of the switch until the viewer had been sent the new VM's full frame.
    pub swapped_ms: u64,
    pub resized: bool,
    /// The new VM's screen size.
    pub width: u16,
    pub height: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no such session")]
    UnknownSession,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("switch abandoned: {0}")]
    Abandoned(String),
}

/// Tunables of the proxy; see the `[desktops]` config keys of the same names with their unit
/// (`switch_timeout_secs`, `switch_settle_ms`, `orphan_timeout_secs`).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Longest wait for a new VM's first frame during a switch.
    pub switch_timeout: Duration,
    /// After a new VM's first frame, how long a switch waits for one more update (a sign that
    /// the VM answers changes at its usual pace) before it swaps anyway.
    pub switch_settle: Duration,
    /// How long a viewer whose VM went away is kept connected waiting for a new one.
    pub orphan_timeout: Duration,
    /// Delay before answering a failed authentication, to slow down guessing.
    pub auth_fail_delay: Duration,
    /// Longest time a viewer may take over the RFB handshake, up to its ClientInit
    /// (`limits.proxy.handshake_timeout_secs`).
    pub handshake_timeout: Duration,
    /// The certificate viewers get for VeNCrypt; without it VeNCrypt is not offered.
    pub tls: Option<ViewerTls>,
    /// Also offer VNC authentication (after VeNCrypt), for viewers without VeNCrypt
    /// (`desktops.legacy_vnc_auth`): their token can be cracked from one sniffed exchange.
    pub legacy_vnc_auth: bool,
    /// How long a viewer past VeNCrypt's TLS handshake may wait before it sends its
    /// credentials: a PC's viewer on standby while its login form is up
    /// (`desktops.viewer_standby_secs`). One connection per address gets this wait, the others
    /// only `handshake_timeout`; zero: none does.
    pub standby_timeout: Duration,
}

/// The TLS server side of VeNCrypt: the certificate the deployment's CA issued to the boot
/// server, which viewers check against that CA.
#[derive(Clone)]
pub struct ViewerTls(pub tokio_rustls::TlsAcceptor);

impl ViewerTls {
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, proto::tls::TlsError> {
        let mut config = (*proto::tls::server_config(cert, key)?).clone();
        // TigerVNC 1.12 (GnuTLS) stalls, in most connections, when TLS 1.3 session tickets
        // arrive just after the handshake: it never sends its Plain credentials. Viewers do
        // not resume sessions anyway; each connection does a full handshake.
        config.send_tls13_tickets = 0;
        Ok(ViewerTls(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))))
    }
}

impl std::fmt::Debug for ViewerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewerTls")
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            switch_timeout: Duration::from_secs(120),
            switch_settle: Duration::from_secs(1),
            orphan_timeout: Duration::from_secs(600),
            auth_fail_delay: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            tls: None,
            legacy_vnc_auth: false,
            standby_timeout: Duration::ZERO,
        }
    }
}

pub(crate) enum Control {
    Switch { backend: Backend, reply: oneshot::Sender<Result<SwitchReport, ProxyError>> },
    Close,
}

struct Slot {
    label: String,
    /// The current token, in memory only; `None` for a session restored from its hash.
    token: Option<String>,
    token_hash: auth::TokenHash,
    backend: Backend,
    /// The connected viewer, if any: its connection id and its session task's mailbox.
    live: Option<(u64, mpsc::Sender<Control>)>,
    /// ZRLE and Zlib rectangles re-compressed for this session's viewers so far.
    recoded: Arc<AtomicU64>,
    /// Viewer connections accepted over the session's life: one viewer that stays connected
    /// through handoffs keeps this at 1, so a reconnect shows here.
    connections: u64,
}

/// A session as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub label: String,
    pub backend: String,
    pub viewer_connected: bool,
    /// ZRLE and Zlib rectangles the proxy has re-compressed for the viewer: the CPU the
    /// session costs the proxy beyond copying.
    pub recoded_rects: u64,
    /// Viewer connections accepted for this session so far (reconnects included).
    pub viewer_connections: u64,
}

/// The proxy's session table, by session identity. Cheap to share: clone the `Arc`.
pub struct Proxy {
    slots: Mutex<HashMap<String, Slot>>,
    opts: ProxyOptions,
    next_conn: AtomicU64,
    /// Addresses with a viewer waiting on standby (see [`ProxyOptions::standby_timeout`]).
    standby: Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// Addresses of PCs whose agent is connected to the broker now, with how many such
    /// connections: only these may keep a viewer on standby, so that a LAN device that is no
    /// PC gets the handshake's short limit like any other connection.
    pcs: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// An agent connected from `ip`: its PC may keep a viewer on standby until this is dropped.
pub struct PcPresence {
    proxy: Arc<Proxy>,
    ip: std::net::IpAddr,
}

impl Drop for PcPresence {
    fn drop(&mut self) {
        let mut pcs = self.proxy.pcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pcs.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                pcs.remove(&self.ip);
            }
        }
    }
}

/// A viewer's place on standby; the address may wait again once it is dropped.
pub(crate) struct Standby {
    proxy: Arc<Proxy>,
    ip: std::net::IpAddr,
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.proxy.standby.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.ip);
    }
}

impl Proxy {
    pub fn new(opts: ProxyOptions) -> Arc<Self> {
        Arc::new(Proxy {
            slots: Mutex::new(HashMap::new()),
            opts,
            next_conn: AtomicU64::new(1),
            standby: Mutex::default(),
            pcs: Mutex::default(),
        })
    }

    /// The agent of a PC at `ip` is connected (its hello checked): that address may keep a
    /// viewer on standby while the returned guard lives.
    pub fn pc_present(self: &Arc<Self>, ip: std::net::IpAddr) -> PcPresence {
        *self.pcs.lock().unwrap_or_else(|p| p.into_inner()).entry(ip).or_insert(0) += 1;
        PcPresence { proxy: self.clone(), ip }
    }

    /// A place on standby for a viewer at `ip`, unless standby is off, no PC's agent is
    /// connected from there, or that address holds one: a PC may keep one connection waiting,
    /// not as many as the caps allow.
    pub(crate) fn standby(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Standby> {
        if self.opts.standby_timeout.is_zero() || !self.pcs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&ip) {
            return None;
        }
        let fresh = self.standby.lock().unwrap_or_else(|p| p.into_inner()).insert(ip);
        fresh.then(|| Standby { proxy: self.clone(), ip })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic elsewhere cannot leave the table half-updated: every change is one insert or
        // remove, so a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the session `label` (its identity) for `backend` and returns its first token (the
    /// viewer's VNC password). An older session of the same identity is closed.
    pub fn open_session(&self, label: &str, backend: Backend) -> String {
        self.close_session(label);
        log::info!("proxy: session {label} opened for VM {}", backend.describe());
        let slot = Slot {
            label: label.to_string(),
            token: None,
            token_hash: [0; 32],
            backend,
            live: None,
            recoded: Arc::default(),
            connections: 0,
        };
        let mut slots = self.slots();
        slots.insert(label.to_string(), slot);
        Self::rotate(&mut slots, label).expect("the slot was just inserted")
    }

    /// Gives the session `label` a fresh token and returns it; the old token stops opening
    /// the session, while a viewer that authenticated with it stays connected.
    pub fn issue_token(&self, label: &str) -> Option<String> {
        Self::rotate(&mut self.slots(), label)
    }

    fn rotate(slots: &mut HashMap<String, Slot>, label: &str) -> Option<String> {
        // VNC authentication uses only a token's first 8 bytes: those stay unique among live
        // sessions, so that a DES response names one session.
        let token = loop {
            let t = auth::new_token();
            let prefix = &t.as_bytes()[..auth::VNC_KEY_LEN];
            let taken = slots.iter().any(|(l, s)| {
                l != label && s.token.as_ref().is_some_and(|o| &o.as_bytes()[..auth::VNC_KEY_LEN] == prefix)
            });
            if !taken {
                break t;
            }
        };
        let slot = slots.get_mut(label)?;
        slot.token_hash = auth::token_hash(&token);
        slot.token = Some(token.clone());
        Some(token)
    }

    /// The SHA-256 of the session's current token, for the session store.
    pub fn token_hash(&self, label: &str) -> Option<auth::TokenHash> {
        self.slots().get(label).map(|s| s.token_hash)
    }

    /// Puts back a session from the session store after a broker restart: only its token's
    /// hash is known, so only a viewer that presents the whole token (not a DES response)
    /// gets in until [`Proxy::issue_token`] gives it a new one.
    pub fn restore_session(&self, label: &str, token_hash: auth::TokenHash, backend: Backend) {
        let mut slots = self.slots();
        match slots.get_mut(label) {
            // Already there (a host's word on its VM's address changed): keep the live viewer.
            Some(slot) => slot.backend = backend,
            None => {
                let slot = Slot {
                    label: label.to_string(),
                    token: None,
                    token_hash,
                    backend,
                    live: None,
                    recoded: Arc::default(),
                    connections: 0,
                };
                slots.insert(label.to_string(), slot);
            }
        }
    }

    /// Disconnects the session's viewer, if one is connected; the session stays.
    pub fn disconnect_viewer(&self, label: &str) {
        let live = self.slots().get_mut(label).and_then(|s| s.live.take());
        if let Some((_, tx)) = live {
            log::info!("proxy: session {label}: viewer disconnected");
            let _ = tx.try_send(Control::Close);
        }
    }

    /// Ends a session and disconnects its viewer; its token dies with it.
    pub fn close_session(&self, label: &str) {
        if let Some(slot) = self.slots().remove(label) {
            log::info!("proxy: session {} closed", slot.label);
            crate::web::events::emit(crate::web::events::Kind::Sessions);
            if let Some((_, tx)) = slot.live {
                let _ = tx.try_send(Control::Close);
            }
        }
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self
            .slots()
            .values()
            .map(|s| SessionInfo {
                label: s.label.clone(),
                backend: s.backend.describe(),
                viewer_connected: s.live.is_some(),
                recoded_rects: s.recoded.load(Ordering::Relaxed),
                viewer_connections: s.connections,
            })
            .collect();
        v.sort_by(|a, b| a.label.cmp(&b.label));
        v
    }

    /// Moves a session to another VM. With a viewer connected, the swap happens under its live
    /// connection once the new VM's first full frame is in; without one, the new VM is probed
    /// for a first frame the same way and becomes the session's VM.
    pub async fn switch(&self, label: &str, backend: Backend) -> Result<SwitchReport, ProxyError> {
        let live = {
            let slots = self.slots();
            let slot = slots.get(label).ok_or(ProxyError::UnknownSession)?;
            slot.live.as_ref().map(|(_, tx)| tx.clone())
        };
        if let Some(tx) = live {
            let (reply, rx) = oneshot::channel();
            if tx.send(Control::Switch { backend: backend.clone(), reply }).await.is_ok() {
                if let Ok(res) = rx.await {
                    return res;
                }
            }
            // The viewer left meanwhile: fall through to a probe.
        }
        let mut report = self.probe(&backend).await?;
        self.set_backend(label, backend);
        report.swapped_ms = report.first_frame_ms;
        Ok(report)
    }

    /// Connects to a VM as the proxy would and waits for its first full frame.
    pub async fn probe(&self, backend: &Backend) -> Result<SwitchReport, ProxyError> {
        let ready = backend::prepare(backend, rfb::PixelFormat::rgb888(), vec![rfb::enc::RAW], self.opts.switch_timeout, Duration::ZERO)
            .await?;
        Ok(SwitchReport {
            viewer_connected: false,
            connect_ms: ready.connected_in.as_millis() as u64,
            first_frame_ms: ready.first_frame_in.as_millis() as u64,
            swapped_ms: 0,
            resized: false,
            width: ready.init.width,
            height: ready.init.height,
        })
    }

    fn set_backend(&self, label: &str, backend: Backend) {
        if let Some(slot) = self.slots().get_mut(label) {
            slot.backend = backend;
        }
    }

    /// Finds the session whose current token answers `challenge` with `response` (VNC
    /// authentication). Returns its identity, label and VM.
    fn authenticate(&self, challenge: &[u8; 16], response: &[u8; 16]) -> Option<(String, String, Backend)> {
        self.slots().iter().find_map(|(id, slot)| {
            let token = slot.token.as_ref()?;
            auth::same(&auth::response(token.as_bytes(), challenge), response)
                .then(|| (id.clone(), slot.label.clone(), slot.backend.clone()))
        })
    }

    /// Finds the session whose current token is `token`, presented whole (as a VeNCrypt Plain
    /// password is): its hash is compared in constant time, so this works for a session
    /// restored from the store too. Returns the same as VNC authentication does.
    pub fn authenticate_token(&self, token: &str) -> Option<(String, String, Backend)> {
        let presented = auth::token_hash(token);
        self.slots().iter().find_map(|(id, slot)| {
            auth::same(&slot.token_hash, &presented).then(|| (id.clone(), slot.label.clone(), slot.backend.clone()))
        })
    }

    /// The security types offered to viewers, most preferred first.
    fn security_types(&self) -> Vec<u8> {
        let mut v = Vec::new();
        if self.opts.tls.is_some() {
            v.push(vencrypt::SECURITY_TYPE);
        }
        if self.opts.legacy_vnc_auth {
            v.push(vencrypt::VNC_AUTH);
        }
        v
    }

    /// Registers a viewer connection, replacing (and closing) an older one of the same session.
    /// Returns the connection's id and the session's recoded-rectangle counter.
    fn attach(&self, session: &str, tx: mpsc::Sender<Control>) -> Option<(u64, Arc<AtomicU64>)> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots();
        let slot = slots.get_mut(session)?;
        slot.connections += 1;
        if let Some((_, old)) = slot.live.replace((id, tx)) {
            log::info!("proxy: session {}: a new viewer connection replaces the old one", slot.label);
            let _ = old.try_send(Control::Close);
        }
        let recoded = slot.recoded.clone();
        drop(slots);
        crate::web::events::emit(crate::web::events::Kind::Sessions);
        Some((id, recoded))
    }

    fn detach(&self, session: &str, id: u64) {
        if let Some(slot) = self.slots().get_mut(session) {
            if slot.live.as_ref().is_some_and(|(i, _)| *i == id) {
                slot.live = None;
                crate::web::events::emit(crate::web::events::Kind::Sessions);
            }
        }
    }

    /// Accepts viewers for ever, within `limiter`'s caps.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, limiter: Arc<ConnLimiter>) -> anyhow::Result<()> {
        log::info!("proxy: listening on {} (security types {:?})", listener.local_addr()?, self.security_types());
        if self.opts.legacy_vnc_auth {
            log::warn!("proxy: legacy_vnc_auth = true: viewers may use VNC authentication, whose exchange gives their token away to anyone who records it");
        }
        accept_loop(listener, limiter, move |sock, peer| {
            let me = self.clone();
            async move {
                let _ = sock.set_nodelay(true);
                if let Err(e) = session::run(me, sock, peer).await {
                    log::warn!("proxy: viewer {peer}: {}", Esc(&format!("{e:#}")));
                }
            }
        })
        .await
    }
}
