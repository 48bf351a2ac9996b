//! The proxy as an RFB client of a VM: address, handshake, and the "first frame" that tells a
//! freshly connected VM is ready to take over a viewer.
//!
//! A VM on another machine than the proxy's is reached over TCP inside TLS (`tls:IP:PORT`):
//! QEMU with `tls-creds-x509` offers VeNCrypt only, the proxy picks X509Vnc (or X509None for a
//! VM without a password), checks the host's certificate against the deployment's CA for that
//! IP and shows the broker's client certificate, which QEMU's `verify-peer=on` requires.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use proto::tls::rustls::pki_types::ServerName;
use proto::tls::rustls::ClientConfig;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth;
use super::rfb::{self, PixelFormat, ServerFramer, ServerInit, ServerItem};

/// Where a VM's VNC server listens: `unix:/path`, `host:port`, or `tls:host:port` (VeNCrypt
/// X509, the host's certificate made for `host`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum VncAddr {
    Tcp(String),
    Unix(PathBuf),
    Tls(String),
}

fn host_port(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse::<u16>().ok()?;
    (!h.is_empty()).then_some((h, port))
}

impl FromStr for VncAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/vm1.vnc".into());
            }
            return Ok(VncAddr::Unix(p.into()));
        }
        if let Some(a) = s.strip_prefix("tls:") {
            let (h, _) = host_port(a).ok_or_else(|| format!("{s:?}: tls: needs HOST:PORT"))?;
            ServerName::try_from(h.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(VncAddr::Tls(a.to_string()));
        }
        match host_port(s) {
            Some(_) => Ok(VncAddr::Tcp(s.to_string())),
            None => Err(format!("{s:?} is neither unix:PATH nor HOST:PORT")),
        }
    }
}

impl TryFrom<String> for VncAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<VncAddr> for String {
    fn from(a: VncAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for VncAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VncAddr::Tcp(a) => f.write_str(a),
            VncAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            VncAddr::Tls(a) => write!(f, "tls:{a}"),
        }
    }
}

/// A VM's VNC endpoint and its per-session password (from `server-host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub addr: VncAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl Backend {
    /// For logs and the admin API: never the password.
    pub fn describe(&self) -> String {
        self.addr.to_string()
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("VM VNC {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("VM VNC {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("VM VNC {addr}: no first frame within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
}

struct Conn<'a> {
    addr: &'a VncAddr,
    s: Stream,
}

impl Conn<'_> {
    fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io { addr: self.addr.to_string(), source }
    }
    fn proto(&self, message: impl Into<String>) -> BackendError {
        BackendError::Protocol { addr: self.addr.to_string(), message: message.into() }
    }
    async fn read_exact<const N: usize>(&mut self) -> Result<[u8; N], BackendError> {
        let mut b = [0u8; N];
        self.s.read_exact(&mut b).await.map_err(|e| self.io(e))?;
        Ok(b)
    }
    async fn read_u32(&mut self) -> Result<u32, BackendError> {
        Ok(u32::from_be_bytes(self.read_exact::<4>().await?))
    }
    async fn read_reason(&mut self) -> Result<String, BackendError> {
        let n = self.read_u32().await? as usize;
        let mut b = vec![0u8; n.min(4096)];
        self.s.read_exact(&mut b).await.map_err(|e| self.io(e))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    async fn write(&mut self, b: &[u8]) -> Result<(), BackendError> {
        self.s.write_all(b).await.map_err(|e| self.io(e))
    }
}

/// The broker's TLS client identity for VMs behind `tls:` addresses: one per process, set
/// once at start (see `flow::start`).
static VM_TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets the CA and client certificate the proxy uses for `tls:` VMs; the first call wins.
pub fn set_vm_tls(config: Arc<ClientConfig>) {
    let _ = VM_TLS.set(config);
}

/// Connects to a VM's VNC server (or the proxy itself) and runs the RFB handshake as a shared
/// client.
pub async fn connect(b: &Backend) -> Result<(Stream, ServerInit), BackendError> {
    let io_err = |source| BackendError::Io { addr: b.addr.to_string(), source };
    let s: Stream = match &b.addr {
        VncAddr::Tcp(a) | VncAddr::Tls(a) => {
            let t = tokio::net::TcpStream::connect(a).await.map_err(io_err)?;
            let _ = t.set_nodelay(true);
            Box::new(t)
        }
        VncAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(io_err)?),
    };
    handshake(b, s).await
}

/// VeNCrypt's security type and the subtypes the proxy takes (RFB's registry).
const VENCRYPT: u8 = 19;
const X509_NONE: u32 = 260;
const X509_VNC: u32 = 261;

/// Which VeNCrypt subtype to take of `offered`: X509Vnc with a password, X509None without; no
/// subtype without X509 (the host's certificate is what the proxy trusts).
pub(super) fn pick_subtype(offered: &[u32], password: bool) -> Result<u32, String> {
    let want = if password { X509_VNC } else { X509_NONE };
    if offered.contains(&want) {
        Ok(want)
    } else {
        Err(format!("VeNCrypt offers subtypes {offered:?}, the proxy needs {want} ({})", if password { "X509Vnc" } else { "X509None" }))
    }
}

/// The VeNCrypt 0.2 negotiation on `c` after security type 19 was chosen, then the TLS
/// handshake. Returns the connection inside TLS and the subtype.
async fn vencrypt<'a>(mut c: Conn<'a>, b: &Backend) -> Result<(Conn<'a>, u32), BackendError> {
    let VncAddr::Tls(addr) = c.addr else {
        return Err(c.proto("offers only VeNCrypt, which the proxy speaks to tls: addresses only"));
    };
    let [major, minor] = c.read_exact::<2>().await?;
    if (major, minor) < (0, 2) {
        return Err(c.proto(format!("VeNCrypt {major}.{minor}; the proxy speaks 0.2")));
    }
    c.write(&[0, 2]).await?;
    if c.read_exact::<1>().await? != [0] {
        return Err(c.proto("refused VeNCrypt 0.2"));
    }
    let [n] = c.read_exact::<1>().await?;
    let mut offered = Vec::with_capacity(n as usize);
    for _ in 0..n {
        offered.push(c.read_u32().await?);
    }
    let sub = pick_subtype(&offered, b.password.is_some()).map_err(|e| c.proto(e))?;
    c.write(&sub.to_be_bytes()).await?;
    if c.read_exact::<1>().await? != [1] {
        return Err(c.proto(format!("refused VeNCrypt subtype {sub}")));
    }
    let Some(config) = VM_TLS.get() else {
        return Err(c.proto("no client certificate for VMs over TLS (the broker's CA is not loaded)"));
    };
    let host = host_port(addr).map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(addr);
    let name = ServerName::try_from(host.to_string()).map_err(|e| c.proto(e.to_string()))?;
    let Conn { addr: at, s: plain } = c;
    let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, plain).await.map_err(|e| {
        match e.get_ref().and_then(|i| i.downcast_ref::<proto::tls::rustls::Error>()) {
            Some(t) => BackendError::Protocol { addr: at.to_string(), message: format!("TLS: {}", proto::tls::explain(t)) },
            None => BackendError::Io { addr: at.to_string(), source: e },
        }
    })?;
    Ok((Conn { addr: at, s: Box::new(tls) }, sub))
}

/// The client half of the handshake on an open stream, up to and including ServerInit.
pub(super) async fn handshake(b: &Backend, s: Stream) -> Result<(Stream, ServerInit), BackendError> {
    let mut c = Conn { addr: &b.addr, s };
    let version = c.read_exact::<12>().await?;
    let (major, minor) = rfb::parse_version(&version).map_err(|e| c.proto(e.to_string()))?;
    if major != 3 || minor < 3 {
        return Err(c.proto(format!("unsupported RFB version {major}.{minor}")));
    }
    let minor = if minor >= 8 { 8 } else if minor >= 7 { 7 } else { 3 };
    c.write(format!("RFB 003.00{minor}\n").as_bytes()).await?;
    let chosen = if minor == 3 {
        c.read_u32().await?
    } else {
        let [n] = c.read_exact::<1>().await?;
        if n == 0 {
            let reason = c.read_reason().await?;
            return Err(c.proto(format!("refused: {reason}")));
        }
        let mut types = vec![0u8; n as usize];
        c.s.read_exact(&mut types).await.map_err(|e| c.io(e))?;
        let want = if matches!(b.addr, VncAddr::Tls(_)) {
            VENCRYPT
        } else if b.password.is_some() {
            2
        } else {
            1
        };
        if !types.contains(&want) {
            return Err(c.proto(format!(
                "offers security types {types:?}, the proxy needs {want} ({})",
                match want {
                    VENCRYPT => "VeNCrypt: a VM on another machine is reached inside TLS only",
                    2 => "VNC authentication",
                    _ => "None: the VM has a password the broker does not know",
                }
            )));
        }
        c.write(&[want]).await?;
        want as u32
    };
    let vencrypted = chosen == VENCRYPT as u32;
    let chosen = if vencrypted {
        let (inside, sub) = vencrypt(c, b).await?;
        c = inside;
        if sub == X509_VNC {
            2
        } else {
            1
        }
    } else {
        chosen
    };
    match chosen {
        1 => {}
        2 => {
            let Some(pw) = &b.password else {
                return Err(c.proto("asks for a password the broker does not have"));
            };
            let challenge = c.read_exact::<16>().await?;
            c.write(&auth::response(pw.as_bytes(), &challenge)).await?;
        }
        0 => {
            let reason = c.read_reason().await?;
            return Err(c.proto(format!("refused: {reason}")));
        }
        t => return Err(c.proto(format!("security type {t} is not supported"))),
    }
    // SecurityResult: after VNC authentication, and in 3.8 after None too.
    // QEMU sends it after every VeNCrypt subtype, whatever the RFB version.
    if (chosen == 2 || minor == 8 || vencrypted) && c.read_u32().await? != 0 {
        let reason = if minor == 8 { c.read_reason().await? } else { "no reason".into() };
        return Err(c.proto(format!("authentication failed: {reason}")));
    }
    // Shared: a VM being prepared for a handoff may still have its probe connected.
    c.write(&[1]).await?;
    let mut buf = Vec::new();
    let init = loop {
        if let Some((init, _)) = ServerInit::parse(&buf).map_err(|e| c.proto(e.to_string()))? {
            break init;
        }
        let mut chunk = [0u8; 512];
        let n = c.s.read(&mut chunk).await.map_err(|e| c.io(e))?;
        if n == 0 {
            return Err(c.proto("closed during ServerInit"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 24 + 4096 {
            return Err(c.proto("ServerInit too long"));
        }
    };
    Ok((c.s, init))
}

/// A VM connection that has shown its first full frame, ready to be swapped in.
pub(crate) struct Ready {
    pub stream: Stream,
    pub init: ServerInit,
    /// Everything read so far, starting at a message boundary and ending just after the first
    /// complete update that carried pixels (anything past it is kept too).
    pub buffered: Vec<u8>,
    pub format: PixelFormat,
    pub encodings: Vec<i32>,
    pub connected_in: Duration,
    pub first_frame_in: Duration,
}

/// Connects, asks for the viewer's pixel format and encodings and a full update, and reads
/// until that update is complete. With a non-zero `settle` it then asks for changes and keeps
/// reading until one more update with pixels came or `settle` ran out.
///
/// Why settle: QEMU answers the forced first frame at once, but its refresh timer slows down
/// on a screen that has not changed for a while (a guest just done booting), and a swap right
/// after the first frame left the viewer's next request waiting for that slow timer, longer
/// than a viewer that reconnects itself. One answered incremental request shows the new VM
/// answers changes at its usual pace; until then the old VM keeps serving the viewer.
pub(crate) async fn prepare(
    b: &Backend,
    format: PixelFormat,
    encodings: Vec<i32>,
    timeout: Duration,
    settle: Duration,
) -> Result<Ready, BackendError> {
    let addr = b.addr.to_string();
    let work = async {
        let t0 = Instant::now();
        let (mut stream, init) = connect(b).await?;
        let connected_in = t0.elapsed();
        let io_err = |source| BackendError::Io { addr: addr.clone(), source };
        let mut hello = rfb::set_pixel_format(&format);
        hello.extend(rfb::set_encodings(&encodings));
        hello.extend(rfb::update_request(false, init.width, init.height));
        stream.write_all(&hello).await.map_err(io_err)?;
        let mut buffered = Vec::new();
        let mut framer = ServerFramer::default();
        let mut at = 0;
        let mut saw_pixels = false;
        // Set once the first frame is complete: (when it was, until when to settle).
        let mut first: Option<(Duration, Instant)> = None;
        loop {
            while let Some((item, len)) = framer
                .next(&buffered[at..], &format)
                .map_err(|e| BackendError::Protocol { addr: addr.clone(), message: e.to_string() })?
            {
                at += len;
                if let ServerItem::Rect { encoding, .. } = item {
                    saw_pixels |= encoding >= 0;
                }
                if saw_pixels && framer.at_boundary() {
                    saw_pixels = false;
                    if let Some((first_frame_in, _)) = first {
                        return Ok(Ready { stream, init, buffered, format, encodings, connected_in, first_frame_in });
                    }
                    let first_frame_in = t0.elapsed();
                    if settle.is_zero() {
                        return Ok(Ready { stream, init, buffered, format, encodings, connected_in, first_frame_in });
                    }
                    stream.write_all(&rfb::update_request(true, init.width, init.height)).await.map_err(io_err)?;
                    first = Some((first_frame_in, Instant::now() + settle));
                }
            }
            let mut chunk = vec![0u8; 64 << 10];
            let n = match first {
                Some((first_frame_in, until)) => match tokio::time::timeout_at(until.into(), stream.read(&mut chunk)).await {
                    Ok(n) => n.map_err(io_err)?,
                    // A still screen: the first frame is as good as it gets.
                    Err(_) => {
                        log::debug!("proxy: VM {addr}: no change within {settle:?} after its first frame");
                        return Ok(Ready { stream, init, buffered, format, encodings, connected_in, first_frame_in });
                    }
                },
                None => stream.read(&mut chunk).await.map_err(io_err)?,
            };
            if n == 0 {
                return Err(BackendError::Protocol { addr: addr.clone(), message: "closed before its first frame".into() });
            }
            buffered.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| BackendError::Timeout { addr: addr.clone(), timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!("unix:/run/a.sock".parse(), Ok(VncAddr::Unix("/run/a.sock".into())));
        assert_eq!("127.0.0.1:5901".parse(), Ok(VncAddr::Tcp("127.0.0.1:5901".into())));
        assert_eq!("[::1]:5901".parse::<VncAddr>().unwrap().to_string(), "[::1]:5901");
        assert!("unix:".parse::<VncAddr>().is_err());
        assert!("host".parse::<VncAddr>().is_err());
        assert!("host:99999".parse::<VncAddr>().is_err());
        let b = Backend { addr: "unix:/x".parse().unwrap(), password: Some("pw".into()) };
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, r#"{"addr":"unix:/x","password":"pw"}"#);
        assert_eq!(serde_json::from_str::<Backend>(&json).unwrap(), b);
    }

    /// One update of a single Raw rectangle of `w`x`h` pixels at 4 bytes a pixel.
    fn raw_update(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 0];
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        v.resize(v.len() + w as usize * h as usize * 4, 0x5a);
        v
    }

    /// An RFB server on a Unix socket that speaks the protocol from a script: no password,
    /// a 4x2 screen, a whole-screen update for the first request and, when `changes`, a 1x1
    /// update for the next one (an incremental request, which it checks). It reports whether
    /// an incremental request came.
    async fn scripted_vm(
        dir: &std::path::Path,
        changes: bool,
    ) -> (Backend, tokio::task::JoinHandle<std::io::Result<bool>>) {
        let path = dir.join("vnc.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await?;
            s.write_all(b"RFB 003.008\n").await?;
            let mut b = [0u8; 12];
            s.read_exact(&mut b).await?;
            s.write_all(&[1, 1]).await?;
            s.read_exact(&mut b[..1]).await?;
            s.write_all(&0u32.to_be_bytes()).await?;
            s.read_exact(&mut b[..1]).await?; // shared
            let init = ServerInit { width: 4, height: 2, format: PixelFormat::rgb888(), name: b"t".to_vec() };
            s.write_all(&init.to_bytes()).await?;
            let mut incremental_asked = false;
            let mut answered = 0;
            loop {
                let mut t = [0u8; 1];
                if s.read(&mut t).await? == 0 {
                    return Ok(incremental_asked);
                }
                match t[0] {
                    0 => s.read_exact(&mut [0u8; 19]).await.map(drop)?,
                    2 => {
                        let mut h = [0u8; 3];
                        s.read_exact(&mut h).await?;
                        let n = u16::from_be_bytes([h[1], h[2]]) as usize;
                        s.read_exact(&mut vec![0u8; 4 * n]).await?;
                    }
                    3 => {
                        let mut r = [0u8; 9];
                        s.read_exact(&mut r).await?;
                        incremental_asked |= r[0] == 1;
                        match (answered, r[0], changes) {
                            (0, 0, _) => s.write_all(&raw_update(4, 2)).await?,
                            (1, 1, true) => s.write_all(&raw_update(1, 1)).await?,
                            _ => {}
                        }
                        answered += 1;
                    }
                    m => panic!("unexpected client message {m}"),
                }
            }
        });
        (Backend { addr: VncAddr::Unix(path), password: None }, task)
    }

    /// Prepares the scripted VM with `settle`: what was buffered, how long it took, and
    /// whether the VM was asked for changes.
    async fn prepare_scripted(changes: bool, settle: Duration) -> (Vec<u8>, Duration, bool) {
        let dir = tempfile::tempdir().unwrap();
        let (b, vm) = scripted_vm(dir.path(), changes).await;
        let t0 = Instant::now();
        let ready = prepare(&b, PixelFormat::rgb888(), vec![0], Duration::from_secs(30), settle).await.unwrap();
        let took = t0.elapsed();
        let Ready { buffered, stream, .. } = ready;
        // Closing the connection ends the scripted VM.
        drop(stream);
        (buffered, took, vm.await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn a_switch_waits_for_the_new_vm_to_answer_a_change() {
        let (buffered, took, asked) = prepare_scripted(true, Duration::from_secs(20)).await;
        assert!(took < Duration::from_secs(10), "waited for the settle time despite a change");
        // The forced frame and the answered change, both to be sent to the viewer at the swap.
        let mut want = raw_update(4, 2);
        want.extend(raw_update(1, 1));
        assert_eq!(buffered, want);
        assert!(asked, "no incremental request reached the VM");
    }

    #[tokio::test]
    async fn a_still_screen_swaps_after_the_settle_time_and_a_probe_does_not_wait() {
        let (buffered, took, asked) = prepare_scripted(false, Duration::from_millis(300)).await;
        assert!(took >= Duration::from_millis(300));
        assert_eq!(buffered, raw_update(4, 2));
        assert!(asked);
        let (buffered, _, asked) = prepare_scripted(false, Duration::ZERO).await;
        assert_eq!(buffered, raw_update(4, 2));
        assert!(!asked, "a probe asked for more than its first frame");
    }

    #[test]
    fn tls_addresses_and_subtypes() {
        assert_eq!("tls:10.0.0.11:5901".parse(), Ok(VncAddr::Tls("10.0.0.11:5901".into())));
        assert_eq!("tls:10.0.0.11:5901".parse::<VncAddr>().unwrap().to_string(), "tls:10.0.0.11:5901");
        assert!("tls:10.0.0.11".parse::<VncAddr>().is_err());
        assert!("tls:bad name:5901".parse::<VncAddr>().is_err());
        assert_eq!(pick_subtype(&[260, 261], true), Ok(X509_VNC));
        assert_eq!(pick_subtype(&[260, 261], false), Ok(X509_NONE));
        // Anonymous TLS (257, 258) or plain (256) would not check the host: never taken.
        assert!(pick_subtype(&[256, 257, 258], true).unwrap_err().contains("X509Vnc"));
    }

    /// The server side of QEMU's VNC with tls-creds-x509 and a password, scripted: VeNCrypt
    /// 0.2 offering X509None and X509Vnc, TLS with `server`, VNC authentication inside. Returns
    /// the password's DES response it got.
    async fn vencrypt_vm(
        l: tokio::net::TcpListener,
        server: Arc<proto::tls::rustls::ServerConfig>,
    ) -> std::io::Result<[u8; 16]> {
        let (mut s, _) = l.accept().await?;
        s.write_all(b"RFB 003.008\n").await?;
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await?;
        s.write_all(&[1, VENCRYPT]).await?;
        s.read_exact(&mut b[..1]).await?;
        s.write_all(&[0, 2]).await?;
        s.read_exact(&mut b[..2]).await?;
        s.write_all(&[0, 2]).await?;
        s.write_all(&X509_NONE.to_be_bytes()).await?;
        s.write_all(&X509_VNC.to_be_bytes()).await?;
        s.read_exact(&mut b[..4]).await?;
        assert_eq!(u32::from_be_bytes(b[..4].try_into().unwrap()), X509_VNC);
        s.write_all(&[1]).await?;
        let mut t = tokio_rustls::TlsAcceptor::from(server).accept(s).await?;
        t.write_all(&[7u8; 16]).await?;
        let mut response = [0u8; 16];
        t.read_exact(&mut response).await?;
        t.write_all(&0u32.to_be_bytes()).await?;
        t.read_exact(&mut b[..1]).await?; // shared
        let init = ServerInit { width: 4, height: 2, format: PixelFormat::rgb888(), name: b"t".to_vec() };
        t.write_all(&init.to_bytes()).await?;
        t.flush().await?;
        Ok(response)
    }

    /// The proxy reaches a `tls:` VM through VeNCrypt X509Vnc with the broker's client
    /// certificate, and refuses a VM whose certificate another CA made.
    #[tokio::test]
    async fn vencrypt_x509_with_a_client_certificate() {
        let d = tempfile::tempdir().unwrap();
        let ca = crate::ca::init(d.path(), false).unwrap();
        let host = crate::ca::Ca::open(d.path()).unwrap().enrol_host("h1", &["127.0.0.1".parse().unwrap()], false).unwrap();
        set_vm_tls(crate::broker::flow::host_tls(d.path()).unwrap());
        let server =
            proto::tls::mtls_server_config(&host.join("host.pem"), &host.join("host.key"), &ca.ca_cert()).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend { addr: VncAddr::Tls(l.local_addr().unwrap().to_string()), password: Some("pw".into()) };
        let vm = tokio::spawn(vencrypt_vm(l, server));
        let (_stream, init) = connect(&b).await.unwrap();
        assert_eq!((init.width, init.height), (4, 2));
        assert_eq!(vm.await.unwrap().unwrap(), auth::response(b"pw", &[7u8; 16]));

        // A VM whose host another CA enrolled.
        let other = tempfile::tempdir().unwrap();
        let other_ca = crate::ca::init(other.path(), false).unwrap();
        let o = crate::ca::Ca::open(other.path()).unwrap().enrol_host("h1", &["127.0.0.1".parse().unwrap()], false).unwrap();
        let server =
            proto::tls::mtls_server_config(&o.join("host.pem"), &o.join("host.key"), &other_ca.ca_cert()).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend { addr: VncAddr::Tls(l.local_addr().unwrap().to_string()), password: Some("pw".into()) };
        let _vm = tokio::spawn(vencrypt_vm(l, server));
        let e = connect(&b).await.err().unwrap().to_string();
        assert!(e.contains("not signed by this boot server's CA"), "{e}");
    }
}
