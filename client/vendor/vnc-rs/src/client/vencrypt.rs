//! VeNCrypt (security type 19), client side, with the one subtype that both checks the
//! server and keeps the password off the wire: X509Plain (262), a TLS handshake against the
//! caller's roots, then the password inside the tunnel.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use crate::VncError;

/// VeNCrypt subtype X509Plain.
pub(super) const X509_PLAIN: u32 = 262;
/// The VeNCrypt version spoken.
const VERSION: [u8; 2] = [0, 2];

/// How the server is checked: the TLS config (its roots) and the name its certificate must
/// carry.
#[derive(Clone)]
pub struct VencryptConfig {
    pub tls: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for VencryptConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VencryptConfig({:?})", self.server_name)
    }
}

/// After the client chose security type 19: VeNCrypt 0.2, subtype X509Plain, the TLS
/// handshake. Returns the TLS stream, on which the Plain credentials go next.
pub(super) async fn negotiate<S>(mut stream: S, cfg: &VencryptConfig) -> Result<TlsStream<S>, VncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut server = [0u8; 2];
    stream.read_exact(&mut server).await?;
    if server < VERSION {
        return Err(VncError::General(format!(
            "the server speaks VeNCrypt {}.{}, 0.2 is needed",
            server[0], server[1]
        )));
    }
    stream.write_all(&VERSION).await?;
    stream.flush().await?;
    if stream.read_u8().await? != 0 {
        return Err(VncError::General("the server refused VeNCrypt 0.2".into()));
    }
    let count = stream.read_u8().await?;
    let mut subtypes = Vec::with_capacity(count.into());
    for _ in 0..count {
        subtypes.push(stream.read_u32().await?);
    }
    if !subtypes.contains(&X509_PLAIN) {
        return Err(VncError::General(format!(
            "the server offers VeNCrypt subtypes {subtypes:?}, not X509Plain (262)"
        )));
    }
    stream.write_u32(X509_PLAIN).await?;
    stream.flush().await?;
    if stream.read_u8().await? != 1 {
        return Err(VncError::General("the server refused VeNCrypt X509Plain".into()));
    }
    let connector = tokio_rustls::TlsConnector::from(cfg.tls.clone());
    // A certificate the roots do not vouch for ends here, as an io::Error whose inner error is
    // the rustls::Error (callers can tell why).
    Ok(connector.connect(cfg.server_name.clone(), stream).await?)
}

/// The Plain message: username and password lengths, then both.
pub(super) async fn send_plain<S>(stream: &mut S, username: &str, password: &str) -> Result<(), VncError>
where
    S: AsyncWrite + Unpin,
{
    let mut m = Vec::with_capacity(8 + username.len() + password.len());
    m.extend_from_slice(&(username.len() as u32).to_be_bytes());
    m.extend_from_slice(&(password.len() as u32).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.extend_from_slice(password.as_bytes());
    stream.write_all(&m).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // ring, as everywhere in the workspace (the agent links statically; see proto::tls).
    #[allow(deprecated)]
    fn cfg() -> VencryptConfig {
        let roots = tokio_rustls::rustls::RootCertStore::empty();
        let tls = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        VencryptConfig { tls: Arc::new(tls), server_name: ServerName::try_from("127.0.0.1").unwrap() }
    }

    /// A server's answers as bytes; what the client wrote comes back.
    async fn run(server: &[u8]) -> (Result<(), VncError>, Vec<u8>) {
        let (mut client, mut peer) = tokio::io::duplex(8192);
        peer.write_all(server).await.unwrap();
        // Then nothing more: a TLS handshake ends with an early end of stream.
        peer.shutdown().await.unwrap();
        let res = negotiate(&mut client, &cfg()).await.map(drop);
        drop(client);
        let mut wrote = Vec::new();
        peer.read_to_end(&mut wrote).await.unwrap();
        (res, wrote)
    }

    #[tokio::test]
    async fn picks_x509plain_and_refuses_servers_without_it() {
        // X509None and TLSPlain only: neither checks the server against the roots.
        let (res, wrote) = run(&[0, 2, 0, 2, 0, 0, 1, 4, 0, 0, 1, 3]).await;
        assert!(format!("{}", res.unwrap_err()).contains("not X509Plain"));
        assert_eq!(wrote, [0, 2]);
        // Version 0.1 is refused before anything is written.
        let (res, wrote) = run(&[0, 1]).await;
        assert!(res.is_err() && wrote.is_empty());
        // X509Plain offered and accepted: the client picks it, then starts TLS (which this
        // half-closed peer ends at once).
        let (res, wrote) = run(&[0, 2, 0, 2, 0, 0, 1, 4, 0, 0, 1, 6, 1]).await;
        assert!(res.is_err());
        assert_eq!(&wrote[..6], &[0, 2, 0, 0, 1, 6]);
        assert_eq!(wrote[6], 0x16, "a TLS ClientHello follows the pick");
    }

    #[tokio::test]
    async fn plain_is_lengths_then_both() {
        let (mut a, mut b) = tokio::io::duplex(64);
        send_plain(&mut a, "u", "tok").await.unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0, 0, 0, 1, 0, 0, 0, 3, b'u', b't', b'o', b'k']);
    }
}
