//! The VNC proxy: viewers connect only here, with their session token as password (inside
//! VeNCrypt's TLS, see [`vencrypt`]; VNC authentication only where an admin allows it); the
//! proxy holds their RFB session and talks RFB to their VM, so that a hard handoff swaps the VM
//! under a live viewer connection.
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

/// Compares two byte strings without an early exit on the first difference (the length is not
/// secret: every token has the same).
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no session with that token")]
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
        }
    }
}

pub(crate) enum Control {
    Switch { backend: Backend, reply: oneshot::Sender<Result<SwitchReport, ProxyError>> },
    Close,
}

struct Slot {
    label: String,
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

/// The proxy's session table. Cheap to share: clone the `Arc`.
pub struct Proxy {
    slots: Mutex<HashMap<String, Slot>>,
    opts: ProxyOptions,
    next_conn: AtomicU64,
}

impl Proxy {
    pub fn new(opts: ProxyOptions) -> Arc<Self> {
        Arc::new(Proxy { slots: Mutex::new(HashMap::new()), opts, next_conn: AtomicU64::new(1) })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic elsewhere cannot leave the table half-updated: every change is one insert or
        // remove, so a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `backend` and returns its fresh token (the viewer's VNC password).
    pub fn open_session(&self, label: &str, backend: Backend) -> String {
        let mut slots = self.slots();
        let token = loop {
            let t = auth::new_token();
            if !slots.contains_key(&t) {
                break t;
            }
        };
        log::info!("proxy: session {label} opened for VM {}", backend.describe());
        slots.insert(
            token.clone(),
            Slot { label: label.to_string(), backend, live: None, recoded: Arc::default(), connections: 0 },
        );
        token
    }

    /// Re-registers a known token (after a broker restart, from the state store).
    pub fn restore_session(&self, token: &str, label: &str, backend: Backend) {
        let slot = Slot { label: label.to_string(), backend, live: None, recoded: Arc::default(), connections: 0 };
        self.slots().insert(token.to_string(), slot);
    }

    /// Ends a session and disconnects its viewer.
    pub fn close_session(&self, token: &str) {
        if let Some(slot) = self.slots().remove(token) {
            log::info!("proxy: session {} closed", slot.label);
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
    pub async fn switch(&self, token: &str, backend: Backend) -> Result<SwitchReport, ProxyError> {
        let live = {
            let slots = self.slots();
            let slot = slots.get(token).ok_or(ProxyError::UnknownSession)?;
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
        self.set_backend(token, backend);
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

    fn set_backend(&self, token: &str, backend: Backend) {
        if let Some(slot) = self.slots().get_mut(token) {
            slot.backend = backend;
        }
    }

    /// Finds the session whose token answers `challenge` with `response`.
    fn authenticate(&self, challenge: &[u8; 16], response: &[u8; 16]) -> Option<(String, String, Backend)> {
        self.slots().iter().find_map(|(token, slot)| {
            auth::same(&auth::response(token.as_bytes(), challenge), response)
                .then(|| (token.clone(), slot.label.clone(), slot.backend.clone()))
        })
    }

    /// Finds the session of `token` (a VeNCrypt Plain password), comparing in constant time.
    pub(crate) fn authenticate_token(&self, token: &str) -> Option<(String, String, Backend)> {
        let mut found = None;
        // Every live token is compared to the end, so timing tells nothing about which matched.
        for (t, slot) in self.slots().iter() {
            if same_token(t.as_bytes(), token.as_bytes()) {
                found = Some((t.clone(), slot.label.clone(), slot.backend.clone()));
            }
        }
        found
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
    fn attach(&self, token: &str, tx: mpsc::Sender<Control>) -> Option<(u64, Arc<AtomicU64>)> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots();
        let slot = slots.get_mut(token)?;
        slot.connections += 1;
        if let Some((_, old)) = slot.live.replace((id, tx)) {
            log::info!("proxy: session {}: a new viewer connection replaces the old one", slot.label);
            let _ = old.try_send(Control::Close);
        }
        Some((id, slot.recoded.clone()))
    }

    fn detach(&self, token: &str, id: u64) {
        if let Some(slot) = self.slots().get_mut(token) {
            if slot.live.as_ref().is_some_and(|(i, _)| *i == id) {
                slot.live = None;
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
