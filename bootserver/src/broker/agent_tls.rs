//! TLS on an agent's connection, set up before a byte of `proto::agent` is read: the broker
//! shows the certificate its CA issued (`crate::ca`) and the agent checks it against the CA in
//! its boot image.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// What a connection is read and written through once TLS (or the old plain link) is set up.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AgentIo for T {}

/// How agents connect.
#[derive(Clone)]
pub struct AgentTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Also take agents that speak plain TCP (images made before TLS), for a transition only:
    /// their hellos and tokens cross the LAN in clear.
    pub plain_too: bool,
    /// The longest a connection may take from its first byte to the end of its handshake.
    pub handshake_timeout: Duration,
}

/// The first byte of every TLS connection: a handshake record (RFC 8446, 5.1). A plain frame
/// starts with its length, big-endian, whose first byte is 0 for every frame up to
/// `proto::agent::MAX_FRAME`.
const TLS_HANDSHAKE: u8 = 0x16;

impl AgentTls {
    /// Sets up the link of a new connection: a TLS handshake, or the plain stream of an old
    /// agent where `plain_too` allows it; `true` with a TLS link (only those may carry logins).
    pub async fn accept(&self, stream: TcpStream) -> anyhow::Result<(Box<dyn AgentIo>, bool)> {
        let timeout = self.handshake_timeout;
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(timeout, stream.peek(&mut first))
            .await
            .map_err(|_| anyhow::anyhow!("sent nothing within {timeout:?}"))?
            .context("reading the first byte")?;
        if n == 0 {
            bail!("closed before its TLS handshake");
        }
        if first[0] != TLS_HANDSHAKE {
            if self.plain_too {
                log::info!("agent at {}: plain TCP (agent_plain_tcp = true)", stream.peer_addr()?);
                return Ok((Box::new(stream), false));
            }
            bail!(
                "speaks plain TCP, not TLS (an image made before TLS?): refused; rebuild its image with this server's CA (initramfs build --ca-cert), or set agent_plain_tcp = true for a transition"
            );
        }
        let tls = tokio::time::timeout(timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| anyhow::anyhow!("no TLS handshake within {timeout:?}"))?
            .context("TLS handshake")?;
        Ok((Box::new(tls), true))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use proto::agent::{encode, AgentMessage, BrokerMessage, Decoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::broker::listener::{run, Broker};
    use crate::broker::registry::{sample_hello, Registry};

    const WAIT: Duration = Duration::from_millis(500);

    /// A broker on loopback with a certificate from a CA of its own; the CA's path.
    async fn start(dir: &Path, plain_too: bool) -> (SocketAddr, Arc<Broker>, PathBuf) {
        let names = crate::ca::ServerNames { ips: vec!["127.0.0.1".parse().unwrap()], dns: vec![] };
        let (cert, key) = crate::ca::ensure_server(dir, &names).unwrap();
        let mut b = Broker::new(Registry::open(&dir.join("r.sqlite")).unwrap(), Duration::from_millis(50)).unwrap();
        b.hello_timeout = WAIT;
        let acceptor = tokio_rustls::TlsAcceptor::from(proto::tls::server_config(&cert, &key).unwrap());
        b.tls = Some(AgentTls { acceptor, plain_too, handshake_timeout: WAIT });
        let broker = Arc::new(b);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = crate::net::limits::Limits::default().broker;
        tokio::spawn(run(l, broker.clone(), crate::net::limits::ConnLimiter::unbounded("broker", limits)));
        (addr, broker, crate::ca::CaFiles::new(dir).ca_cert())
    }

    async fn tls_to(addr: SocketAddr, ca: &Path) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(proto::tls::client_config(ca).unwrap());
        connector.connect(proto::tls::server_name(addr.ip()), TcpStream::connect(addr).await?).await
    }

    /// Sends a hello on `s` and returns the broker's first answer, None if it hangs up.
    async fn hello_answer(s: &mut (impl AsyncRead + AsyncWrite + Unpin), last: u8) -> Option<BrokerMessage> {
        s.write_all(&encode(&AgentMessage::Hello(sample_hello(last))).unwrap()).await.ok()?;
        s.flush().await.ok()?;
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(r) = dec.feed(&buf[..n]).into_iter().next() {
                return r.ok();
            }
        }
    }

    async fn closed_within(mut s: TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(limit, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn agents_speak_tls_with_a_broker_their_ca_vouches_for() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, broker, ca) = start(dir.path(), false).await;

        let mut good = tls_to(addr, &ca).await.unwrap();
        assert!(matches!(hello_answer(&mut good, 1).await, Some(BrokerMessage::Welcome(_))));
        assert!(broker.is_connected("52:54:00:00:00:01"));

        // An old agent's hello in clear is refused and registers nothing.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert!(hello_answer(&mut plain, 2).await.is_none(), "a plain hello was answered");
        assert!(broker.registry.get("52:54:00:00:00:02").await.unwrap().is_none());

        // An agent of another deployment does not trust this broker: no handshake, so no hello.
        let other = tempfile::tempdir().unwrap();
        let other_ca = crate::ca::init(other.path(), false).unwrap().ca_cert();
        let e = tls_to(addr, &other_ca).await.err().expect("a foreign CA's agent completed the handshake");
        let reason = e.get_ref().and_then(|i| i.downcast_ref::<proto::tls::rustls::Error>()).map(proto::tls::explain);
        assert_eq!(reason.as_deref(), Some("certificate not signed by this boot server's CA"), "{e}");

        // A connection that never starts its handshake, or stops half-way, is dropped.
        let silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(silent, WAIT * 4).await, "a silent connection was kept");
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&[TLS_HANDSHAKE, 3, 1, 0, 200]).await.unwrap();
        assert!(closed_within(stalled, WAIT * 4).await, "a stalled handshake was kept");

        // The good agent was never disturbed.
        assert!(broker.is_connected("52:54:00:00:00:01"));
    }

    #[tokio::test]
    async fn plain_agents_only_where_the_setting_allows_them() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, broker, ca) = start(dir.path(), true).await;
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(hello_answer(&mut plain, 3).await, Some(BrokerMessage::Welcome(_))));
        let mut tls = tls_to(addr, &ca).await.unwrap();
        assert!(matches!(hello_answer(&mut tls, 4).await, Some(BrokerMessage::Welcome(_))));
        assert!(broker.is_connected("52:54:00:00:00:03") && broker.is_connected("52:54:00:00:00:04"));
    }
}
