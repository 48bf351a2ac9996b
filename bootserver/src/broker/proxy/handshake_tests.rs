//! The viewer side of the proxy's handshake over loopback TCP, with a client written from the
//! RFB and VeNCrypt specifications and rustls checking the proxy against a CA of the test's
//! own: who gets in with which security type, what is refused and how.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::session::{self, Authed};
use super::{auth, vencrypt, Backend, Proxy, ProxyOptions, ViewerTls, VncAddr};

struct Setup {
    proxy: Arc<Proxy>,
    token: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(tls: bool, legacy: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let names = crate::ca::ServerNames { ips: vec!["127.0.0.1".parse().unwrap()], dns: vec![] };
    let (cert, key) = crate::ca::ensure_server(dir.path(), &names).unwrap();
    let opts = ProxyOptions {
        auth_fail_delay: Duration::from_millis(1),
        tls: tls.then(|| ViewerTls::from_files(&cert, &key).unwrap()),
        legacy_vnc_auth: legacy,
        ..Default::default()
    };
    let proxy = Proxy::new(opts);
    let backend = Backend { addr: VncAddr::Tcp("vm.invalid:5900".into()), password: None };
    let token = proxy.open_session("user", backend);
    let ca = crate::ca::CaFiles::new(dir.path()).ca_cert();
    Setup { proxy, token, ca, _dir: dir }
}

/// Runs the proxy's handshake on the next connection; after a success the proxy writes `hello`
/// on the stream the session goes on over.
async fn serve_one(proxy: Arc<Proxy>) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<Authed>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (sock, _) = l.accept().await?;
        // As `serve` and the viewers do: without it, delayed ACKs add 40 ms to the TLS exchange.
        sock.set_nodelay(true)?;
        let (authed, mut viewer) = session::handshake(&proxy, sock).await?;
        viewer.write_all(b"hello").await?;
        viewer.flush().await?;
        Ok(authed)
    });
    (addr, task)
}

/// Version exchange as a 3.`minor` viewer; the security types offered (3.7 and later).
async fn greet(addr: SocketAddr, minor: u8) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut v = [0u8; 12];
    s.read_exact(&mut v).await.unwrap();
    assert_eq!(&v, b"RFB 003.008\n");
    s.write_all(format!("RFB 003.00{minor}\n").as_bytes()).await.unwrap();
    if minor == 3 {
        return (s, Vec::new());
    }
    let n = s.read_u8().await.unwrap();
    let mut types = vec![0u8; n.into()];
    s.read_exact(&mut types).await.unwrap();
    (s, types)
}

/// A failed SecurityResult's reason, or the reason of an empty type list.
async fn reason<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let len = s.read_u32().await.unwrap();
    let mut r = vec![0u8; len as usize];
    s.read_exact(&mut r).await.unwrap();
    String::from_utf8(r).unwrap()
}

/// VeNCrypt up to the end of the TLS handshake.
async fn vencrypt_tls(
    mut s: TcpStream,
    ca: &std::path::Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    s.write_u8(vencrypt::SECURITY_TYPE).await?;
    let mut v = [0u8; 2];
    s.read_exact(&mut v).await?;
    assert_eq!(v, [0, 2]);
    s.write_all(&[0, 2]).await?;
    let mut offer = [0u8; 6];
    s.read_exact(&mut offer).await?;
    assert_eq!(offer, [0, 1, 0, 0, 1, 6], "version accepted, one subtype: X509Plain");
    s.write_u32(vencrypt::X509_PLAIN).await?;
    assert_eq!(s.read_u8().await?, 1);
    let connector = tokio_rustls::TlsConnector::from(proto::tls::client_config(ca).unwrap());
    connector.connect(proto::tls::server_name([127, 0, 0, 1].into()), s).await
}

/// Sends the ClientInit after a successful SecurityResult and reads what the proxy sent next.
async fn after_ok<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> [u8; 5] {
    assert_eq!(s.read_u32().await.unwrap(), 0, "SecurityResult OK");
    s.write_all(&[1]).await.unwrap();
    s.flush().await.unwrap();
    let mut hello = [0u8; 5];
    s.read_exact(&mut hello).await.unwrap();
    hello
}

/// A whole VeNCrypt X509Plain login with `password`; `Ok` with what followed, or the reason.
async fn vencrypt_login(addr: SocketAddr, ca: &std::path::Path, password: &str) -> Result<[u8; 5], String> {
    let (s, types) = greet(addr, 8).await;
    assert_eq!(types[0], vencrypt::SECURITY_TYPE, "VeNCrypt comes first");
    let mut tls = vencrypt_tls(s, ca).await.map_err(|e| e.to_string())?;
    tls.write_all(&vencrypt::plain_message("anyone", password)).await.unwrap();
    tls.flush().await.unwrap();
    let mut peek = [0u8; 4];
    tls.read_exact(&mut peek).await.unwrap();
    if u32::from_be_bytes(peek) != 0 {
        return Err(reason(&mut tls).await);
    }
    tls.write_all(&[1]).await.unwrap();
    tls.flush().await.unwrap();
    let mut hello = [0u8; 5];
    tls.read_exact(&mut hello).await.unwrap();
    Ok(hello)
}

/// VNC authentication with `password` as a 3.8 viewer that was offered `types`.
async fn vnc_auth_login(mut s: TcpStream, password: &str) -> TcpStream {
    s.write_u8(vencrypt::VNC_AUTH).await.unwrap();
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge).await.unwrap();
    s.write_all(&auth::response(password.as_bytes(), &challenge)).await.unwrap();
    s
}

#[tokio::test]
async fn vencrypt_with_the_token_opens_its_session_over_tls() {
    let st = setup(true, false);
    let (addr, task) = serve_one(st.proxy.clone()).await;
    assert_eq!(vencrypt_login(addr, &st.ca, &st.token).await.unwrap(), *b"hello");
    let authed = task.await.unwrap().unwrap();
    assert_eq!((authed.session.as_str(), authed.security), ("user", vencrypt::SECURITY_TYPE));

    // A wrong token, or a token's prefix, is refused with the reason, inside TLS.
    for wrong in ["wrong-token".to_string(), st.token[..st.token.len() - 1].to_string(), String::new()] {
        let (addr, task) = serve_one(st.proxy.clone()).await;
        let r = vencrypt_login(addr, &st.ca, &wrong).await.unwrap_err();
        assert_eq!(r, "unknown or expired session token");
        assert!(task.await.unwrap().is_err());
    }
}

#[tokio::test]
async fn a_viewer_of_another_ca_sends_nothing() {
    let st = setup(true, false);
    let other = tempfile::tempdir().unwrap();
    let other_ca = crate::ca::init(other.path(), false).unwrap().ca_cert();
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (s, _) = greet(addr, 8).await;
    let e = vencrypt_tls(s, &other_ca).await.err().expect("a foreign CA's viewer completed the handshake");
    let why = e.get_ref().and_then(|i| i.downcast_ref::<proto::tls::rustls::Error>()).map(proto::tls::explain);
    assert_eq!(why.as_deref(), Some("certificate not signed by this boot server's CA"), "{e}");
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn vnc_authentication_only_where_allowed() {
    // Off (the default): not offered, refused when chosen anyway, and 3.3 viewers (which
    // cannot negotiate) are told why.
    let st = setup(true, false);
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (mut s, types) = greet(addr, 8).await;
    assert_eq!(types, [vencrypt::SECURITY_TYPE]);
    s.write_u8(vencrypt::VNC_AUTH).await.unwrap();
    assert_eq!(s.read_u32().await.unwrap(), 1, "no challenge: refused at once");
    assert_eq!(reason(&mut s).await, "security type not offered");
    assert!(task.await.unwrap().is_err());
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (mut s, _) = greet(addr, 3).await;
    assert_eq!(s.read_u32().await.unwrap(), 0, "3.3: no security type");
    assert!(reason(&mut s).await.contains("VeNCrypt"));
    assert!(task.await.unwrap().is_err());

    // On: offered after VeNCrypt, and the token's DES response gets in.
    let st = setup(true, true);
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (s, types) = greet(addr, 8).await;
    assert_eq!(types, [vencrypt::SECURITY_TYPE, vencrypt::VNC_AUTH]);
    let mut s = vnc_auth_login(s, &st.token).await;
    assert_eq!(&after_ok(&mut s).await, b"hello");
    assert_eq!(task.await.unwrap().unwrap().security, vencrypt::VNC_AUTH);

    // Neither a certificate nor VNC authentication: nothing to offer, and the viewer is told.
    let st = setup(false, false);
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (mut s, types) = greet(addr, 8).await;
    assert!(types.is_empty());
    assert!(reason(&mut s).await.contains("no certificate"));
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn malformed_vencrypt_is_refused_early() {
    let st = setup(true, false);
    // Another VeNCrypt version: refused with 1.
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (mut s, _) = greet(addr, 8).await;
    s.write_u8(vencrypt::SECURITY_TYPE).await.unwrap();
    let mut v = [0u8; 2];
    s.read_exact(&mut v).await.unwrap();
    s.write_all(&[0, 1]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 1);
    assert!(task.await.unwrap().unwrap_err().to_string().contains("VeNCrypt version 0.1"));

    // A subtype that was not offered (TLSPlain: no certificate check): refused with 0.
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (mut s, _) = greet(addr, 8).await;
    s.write_u8(vencrypt::SECURITY_TYPE).await.unwrap();
    s.read_exact(&mut v).await.unwrap();
    s.write_all(&[0, 2]).await.unwrap();
    let mut offer = [0u8; 6];
    s.read_exact(&mut offer).await.unwrap();
    s.write_u32(259).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 0);
    assert!(task.await.unwrap().unwrap_err().to_string().contains("subtype 259"));

    // A 4 GiB password length ends the handshake at once, nothing allocated for it.
    let (addr, task) = serve_one(st.proxy.clone()).await;
    let (s, _) = greet(addr, 8).await;
    let mut tls = vencrypt_tls(s, &st.ca).await.unwrap();
    tls.write_all(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    tls.flush().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), task).await.expect("the proxy waited for 4 GiB").unwrap();
    assert!(e.unwrap_err().to_string().contains("password of 4294967295 bytes"));
}

/// Handshake times, VeNCrypt X509Plain against VNC authentication, from the first byte to
/// the session's first byte after ClientInit, over loopback.
#[tokio::test]
async fn handshake_times() {
    const RUNS: usize = 20;
    let st = setup(true, true);
    let mut tls_ms = Vec::new();
    let mut plain_ms = Vec::new();
    for _ in 0..RUNS {
        let (addr, task) = serve_one(st.proxy.clone()).await;
        let t = Instant::now();
        vencrypt_login(addr, &st.ca, &st.token).await.unwrap();
        tls_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        task.await.unwrap().unwrap();

        let (addr, task) = serve_one(st.proxy.clone()).await;
        let t = Instant::now();
        let (s, _) = greet(addr, 8).await;
        let mut s = vnc_auth_login(s, &st.token).await;
        after_ok(&mut s).await;
        plain_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        task.await.unwrap().unwrap();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t, p) = (median(&mut tls_ms), median(&mut plain_ms));
    eprintln!(
        "handshake over loopback, median of {RUNS}: VeNCrypt X509Plain {t:.2} ms (max {:.2}), VNC authentication {p:.2} ms (max {:.2}), ratio {:.1}",
        tls_ms[RUNS - 1],
        plain_ms[RUNS - 1],
        t / p
    );
}
