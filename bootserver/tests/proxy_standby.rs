//! A PC's viewer on standby at the proxy (VeNCrypt's TLS handshake done, its credentials to
//! come with a login at the PC's form), attacked from a second host of the lab:
//!
//! - A host whose agent is not connected (no PC) keeps none of its connections waiting past
//!   the handshake's time limit.
//! - A PC's address (its agent connected) that opens several connections and stops after TLS
//!   keeps one of them waiting past the handshake's time limit; the others are cut at that
//!   limit.
//! - The waiting connection still opens nothing without the session's token: a wrong one is
//!   refused as always; once it is gone, the host may wait again, and the token gets in.
//!
//! Needs ip (scripts/setup).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bootserver::broker::proxy::{vencrypt, Backend, Proxy, ProxyOptions, ViewerTls};
use testkit::Lab;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const SUBNET: &str = "10.95.0";
const HOST: u32 = 1;
const HOST_IP: &str = "10.95.0.2";
const HANDSHAKE: Duration = Duration::from_secs(1);

/// Runs `f` on a thread inside the network namespace `ns`: the sockets it makes stay there.
fn in_netns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || -> anyhow::Result<T> {
        let path = format!("/run/netns/{ns}");
        let fd = std::fs::File::open(&path).with_context(|| path.clone())?;
        // SAFETY: setns(2) on a namespace fd we hold; it moves this thread only.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f()?)
    })
    .join()
    .expect("thread in the namespace")
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// From the lab's host: RFB 3.8, VeNCrypt 0.2, X509Plain, the TLS handshake against `ca`; then
/// the connection waits, as a viewer on standby does.
async fn to_standby(lab: &Lab, proxy: SocketAddr, ca: &Path) -> anyhow::Result<Tls> {
    let s = in_netns(format!("{}-h{HOST}", lab.name), move || {
        let s = std::net::TcpStream::connect(proxy)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })?;
    let mut s = tokio::net::TcpStream::from_std(s)?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await?;
    s.write_all(b"RFB 003.008\n").await?;
    let mut types = [0u8; 2];
    s.read_exact(&mut types).await?;
    assert_eq!(types, [1, vencrypt::SECURITY_TYPE], "VeNCrypt alone is offered");
    s.write_u8(vencrypt::SECURITY_TYPE).await?;
    let mut theirs = [0u8; 2];
    s.read_exact(&mut theirs).await?;
    s.write_all(&vencrypt::VERSION).await?;
    let mut offer = [0u8; 6];
    s.read_exact(&mut offer).await?;
    s.write_u32(vencrypt::X509_PLAIN).await?;
    assert_eq!(s.read_u8().await?, 1, "X509Plain accepted");
    let connector = tokio_rustls::TlsConnector::from(proto::tls::client_config(ca)?);
    Ok(connector.connect(proto::tls::server_name(proxy.ip()), s).await?)
}

/// Whether the proxy still holds the connection: nothing to read, and no end of it.
async fn still_open(t: &mut Tls) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(300), t.read(&mut b)).await.is_err()
}

/// Sends the Plain credentials; the SecurityResult and, for a refusal, its reason.
async fn log_in(t: &mut Tls, password: &str) -> anyhow::Result<(u32, String)> {
    t.write_all(&vencrypt::plain_message("", password)).await?;
    t.flush().await?;
    let result = t.read_u32().await?;
    let reason = if result == 0 { String::new() } else { read_reason(t).await? };
    Ok((result, reason))
}

async fn read_reason<S: AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<String> {
    let len = s.read_u32().await?;
    let mut r = vec![0u8; len.min(1024) as usize];
    s.read_exact(&mut r).await?;
    Ok(String::from_utf8_lossy(&r).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holds_one_viewer_on_standby_which_still_needs_the_token() -> anyhow::Result<()> {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir()?;
    let lab = Lab::with_subnet(0, 1, SUBNET)?;
    let out = lab.host_cmd(HOST, "ip").args(["addr", "add", &format!("{HOST_IP}/24"), "dev", "eth0"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let state = dir.path().join("state");
    let names = bootserver::ca::ServerNames { ips: vec![lab.server_addr().parse()?], dns: vec![] };
    let (cert, key) = bootserver::ca::ensure_server(&state, &names)?;
    let ca = bootserver::ca::CaFiles::new(&state).ca_cert();
    let proxy = Proxy::new(ProxyOptions {
        tls: Some(ViewerTls::from_files(&cert, &key)?),
        auth_fail_delay: Duration::from_millis(10),
        handshake_timeout: HANDSHAKE,
        standby_timeout: Duration::from_secs(30),
        ..Default::default()
    });
    // The VM is never reached: what is tested ends with the SecurityResult.
    let backend = Backend { addr: "unix:/nonexistent/vm.vnc".parse().map_err(anyhow::Error::msg)?, password: None };
    let token = proxy.open_session("alice", backend);
    let bind = format!("{}:0", lab.server_addr());
    let listener = in_netns(lab.name.clone(), move || {
        let l = std::net::TcpListener::bind(&bind)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let limits = bootserver::net::limits::Limits::default().proxy;
    let server =
        tokio::spawn(proxy.clone().serve(listener, bootserver::net::limits::ConnLimiter::unbounded("proxy", limits)));

    // Connections that wait after TLS; those still held after twice the handshake's limit.
    let held = || async {
        let mut waiting = Vec::new();
        for _ in 0..4 {
            waiting.push(to_standby(&lab, addr, &ca).await?);
        }
        tokio::time::sleep(HANDSHAKE * 2 + Duration::from_millis(500)).await;
        let mut open = Vec::new();
        for mut t in waiting {
            if still_open(&mut t).await {
                open.push(t);
            }
        }
        anyhow::Ok(open)
    };
    assert_eq!(held().await?.len(), 0, "a host that is no PC kept a connection waiting");
    // What the broker does when the agent at that address says hello.
    let _pc = proxy.pc_present(HOST_IP.parse()?);
    let mut open = held().await?;
    assert_eq!(open.len(), 1, "connections from one PC still waiting after twice the handshake's limit");
    let mut t = open.pop().expect("one");
    let (result, reason) = log_in(&mut t, "not-the-token").await?;
    assert_eq!((result, reason.as_str()), (1, "unknown or expired session token"));
    assert_eq!(proxy.sessions()[0].viewer_connections, 0);

    // Its place is free again: the next connection waits past the limit, and the token opens
    // the session (its VM is not there: the proxy gives up after the SecurityResult).
    let mut t = to_standby(&lab, addr, &ca).await?;
    tokio::time::sleep(HANDSHAKE * 2).await;
    assert!(still_open(&mut t).await, "the host's one wait was cut at the handshake's limit");
    let (result, reason) = log_in(&mut t, &token).await?;
    assert_eq!(result, 0, "the token was refused after the wait: {reason}");
    server.abort();
    Ok(())
}
