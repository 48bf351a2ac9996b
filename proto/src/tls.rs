//! TLS between our own parts: the agent and the broker today, the broker and the hosts later.
//!
//! Every link trusts one thing only, the deployment's certificate authority (made by
//! `bootserver ca init`): no web PKI roots, no system store. The helpers build rustls configs
//! from PEM files; they do no I/O beyond reading those files, so the agent drives its blocking
//! stream and the broker its tokio one around the same configs.
//!
//! The path of the CA certificate inside a boot image is part of the contract and needs no
//! TLS stack, so it is here without the `tls` feature.

/// Where `initramfs build` puts the CA certificate in the boot image, and where the agent
/// reads it.
pub const IMAGE_CA_PATH: &str = "/etc/thinclient/ca.pem";

#[cfg(feature = "tls")]
pub use imp::*;

#[cfg(feature = "tls")]
mod imp {
    use std::net::IpAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

    pub use rustls;

    #[derive(Debug, thiserror::Error)]
    pub enum TlsError {
        #[error("reading {path}: {source}")]
        Read {
            path: PathBuf,
            #[source]
            source: std::io::Error,
        },
        #[error("{origin}: no PEM certificate in it")]
        NoCertificate { origin: String },
        #[error("{origin}: no PEM private key in it")]
        NoKey { origin: String },
        #[error("{origin}: {reason}")]
        Pem { origin: String, reason: String },
        #[error("{origin}: {source}")]
        Rustls {
            origin: String,
            #[source]
            source: rustls::Error,
        },
        #[error("{origin}: {reason}")]
        Verifier { origin: String, reason: String },
    }

    /// The one crypto provider of every config: ring (see the workspace's Cargo.toml).
    /// rustls deprecates it for lacking post-quantum key exchange, which only aws-lc-rs has;
    /// that one needs cmake and a C toolchain in the static agent's build. The links here are
    /// inside one LAN and short-lived, so ring stays until aws-lc-rs builds as simply.
    #[allow(deprecated)]
    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
    }

    /// Every certificate of a PEM text (other PEM sections are skipped); at least one.
    pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem { origin: origin.into(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { origin: origin.into() });
        }
        Ok(certs)
    }

    pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        certs_from_pem(&read(path)?, &path.display().to_string())
    }

    pub fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { origin: origin.into() },
            e => TlsError::Pem { origin: origin.into(), reason: e.to_string() },
        })
    }

    pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        key_from_pem(&read(path)?, &path.display().to_string())
    }

    /// A root store holding the CA certificate(s) of `pem` and nothing else.
    pub fn roots_from_pem(pem: &[u8], origin: &str) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certs_from_pem(pem, origin)? {
            roots.add(cert).map_err(|source| TlsError::Rustls { origin: origin.into(), source })?;
        }
        Ok(roots)
    }

    pub fn load_ca(path: &Path) -> Result<RootCertStore, TlsError> {
        roots_from_pem(&read(path)?, &path.display().to_string())
    }

    fn rustls_err(origin: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
        move |source| TlsError::Rustls { origin: origin.into(), source }
    }

    /// A client that trusts the servers whose certificates the CA in `ca_pem` signed, and only
    /// those.
    pub fn client_config_from_pem(ca_pem: &[u8], origin: &str) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = roots_from_pem(ca_pem, origin)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err(origin))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
        client_config_from_pem(&read(ca)?, &ca.display().to_string())
    }

    /// Like [`client_config`], presenting the certificate and key of `cert`/`key` (mutual TLS).
    pub fn mtls_client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
        let origin = ca.display().to_string();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err(&origin))?
            .with_root_certificates(load_ca(ca)?)
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(rustls_err(&cert.display().to_string()))?;
        Ok(Arc::new(config))
    }

    /// A server presenting `cert` (the chain, leaf first) with `key`; clients are not asked
    /// for certificates.
    pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let origin = cert.display().to_string();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err(&origin))?
            .with_no_client_auth()
            .with_single_cert(load_certs(cert)?, load_key(key)?)
            .map_err(rustls_err(&origin))?;
        Ok(Arc::new(config))
    }

    /// Like [`server_config`], requiring every client to present a certificate the CA of
    /// `client_ca` signed (mutual TLS).
    pub fn mtls_server_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let origin = cert.display().to_string();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_ca(client_ca)?), provider())
            .build()
            .map_err(|e| TlsError::Verifier { origin: client_ca.display().to_string(), reason: e.to_string() })?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err(&origin))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(cert)?, load_key(key)?)
            .map_err(rustls_err(&origin))?;
        Ok(Arc::new(config))
    }

    /// The name a client checks the server's certificate against when it knows the server by
    /// address, as the agent does (`tc.broker=IP:PORT`).
    pub fn server_name(ip: IpAddr) -> ServerName<'static> {
        ServerName::IpAddress(ip.into())
    }

    /// Checks, as a client of `roots` would, that the chain `certs` (leaf first) is valid now
    /// for `name`. The boot server uses it to tell whether its certificate still fits its CA
    /// and its addresses.
    pub fn verify_server_chain(
        roots: RootCertStore,
        certs: &[CertificateDer<'static>],
        name: &ServerName<'_>,
    ) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let (leaf, rest) = certs.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        verifier.verify_server_cert(leaf, rest, name, &[], UnixTime::now()).map(|_| ())
    }

    /// Checks, as a server taking client certificates of `roots` would, that the chain `certs`
    /// (leaf first) is a valid client certificate now.
    pub fn verify_client_chain(roots: RootCertStore, certs: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let (leaf, rest) = certs.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        verifier.verify_client_cert(leaf, rest, UnixTime::now()).map(|_| ())
    }

    /// Runs a whole handshake between a client of `client` dialling `name` and a server of
    /// `server`, in memory; the first error of either side. For checking a pair of configs (the
    /// certificates and keys behind them) without a network.
    pub fn handshake_in_memory(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        name: &ServerName<'static>,
    ) -> Result<(), rustls::Error> {
        let mut c = rustls::ClientConnection::new(client, name.clone())?;
        let mut s = rustls::ServerConnection::new(server)?;
        let mut buf = Vec::new();
        // A TLS 1.2 or 1.3 handshake takes at most a few flights each way.
        for _ in 0..8 {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            s.read_tls(&mut &buf[..]).map_err(|e| rustls::Error::General(e.to_string()))?;
            s.process_new_packets()?;
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            c.read_tls(&mut &buf[..]).map_err(|e| rustls::Error::General(e.to_string()))?;
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("the handshake did not end".into()))
    }

    /// Why a peer is not trusted, in words for a status screen and a log line.
    pub fn explain(err: &rustls::Error) -> String {
        match err {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "certificate not signed by this boot server's CA".into()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "certificate not made for this address".into()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "certificate expired (or this PC's clock is wrong)".into()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "certificate not valid yet (or this PC's clock is wrong)".into()
                }
                CertificateError::Revoked => "certificate revoked".into(),
                // What a self-signed server certificate (`openssl req -x509`, say) comes to: a
                // CA's certificate where a server's should be.
                CertificateError::Other(o)
                    if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity) =>
                {
                    "certificate not signed by this boot server's CA (it shows a CA certificate of its own)".into()
                }
                other => format!("certificate rejected: {other:?}"),
            },
            rustls::Error::NoCertificatesPresented => "it presented no certificate".into(),
            rustls::Error::AlertReceived(alert) => format!("it ended the TLS handshake ({alert:?})"),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
                format!("it does not speak TLS as expected ({err})")
            }
            other => other.to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

        struct Pki {
            ca_pem: String,
            leaf_pem: String,
            leaf_key: String,
        }

        fn pki(san_ip: &str) -> Pki {
            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let key = KeyPair::generate().unwrap();
            let leaf = CertificateParams::new(vec![san_ip.to_string()]).unwrap();
            let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
            Pki { ca_pem: ca_cert.pem(), leaf_pem: leaf.pem(), leaf_key: key.serialize_pem() }
        }

        fn ip(s: &str) -> ServerName<'static> {
            server_name(s.parse().unwrap())
        }

        #[test]
        fn a_chain_is_checked_against_its_ca_and_address() {
            let p = pki("10.77.0.1");
            let roots = || roots_from_pem(p.ca_pem.as_bytes(), "ca").unwrap();
            let chain = certs_from_pem(p.leaf_pem.as_bytes(), "leaf").unwrap();
            verify_server_chain(roots(), &chain, &ip("10.77.0.1")).unwrap();
            let wrong_name = verify_server_chain(roots(), &chain, &ip("10.77.0.2")).unwrap_err();
            assert_eq!(explain(&wrong_name), "certificate not made for this address");
            let other = pki("10.77.0.1");
            let foreign = certs_from_pem(other.leaf_pem.as_bytes(), "other").unwrap();
            let e = verify_server_chain(roots(), &foreign, &ip("10.77.0.1")).unwrap_err();
            assert_eq!(explain(&e), "certificate not signed by this boot server's CA");
            // A self-signed server certificate is a CA certificate of its own.
            let self_signed = certs_from_pem(other.ca_pem.as_bytes(), "self-signed").unwrap();
            let e = verify_server_chain(roots(), &self_signed, &ip("10.77.0.1")).unwrap_err();
            assert!(explain(&e).starts_with("certificate not signed by this boot server's CA ("), "{e:?}");
        }

        #[test]
        fn pem_errors_name_their_origin() {
            let e = certs_from_pem(b"not pem", "/x/ca.pem").unwrap_err();
            assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
            assert!(e.to_string().contains("/x/ca.pem"));
            let p = pki("10.0.0.1");
            assert!(matches!(key_from_pem(p.leaf_pem.as_bytes(), "k"), Err(TlsError::NoKey { .. })));
            key_from_pem(p.leaf_key.as_bytes(), "k").unwrap();
            client_config_from_pem(p.ca_pem.as_bytes(), "ca").unwrap();
        }

        /// A whole handshake in memory: the client of one CA completes it with that CA's
        /// server and refuses another's, with the reason [`explain`] gives.
        #[test]
        fn a_client_completes_handshakes_with_servers_of_its_ca_only() {
            let p = pki("10.77.0.1");
            let dir = std::env::temp_dir().join(format!("proto-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let write = |n: &str, s: &str| {
                let f = dir.join(n);
                std::fs::write(&f, s).unwrap();
                f
            };
            let server = server_config(&write("s.pem", &p.leaf_pem), &write("s.key", &p.leaf_key)).unwrap();
            let good = client_config_from_pem(p.ca_pem.as_bytes(), "ca").unwrap();
            let other = pki("10.77.0.1");
            let bad = client_config_from_pem(other.ca_pem.as_bytes(), "other").unwrap();
            handshake_in_memory(good, server.clone(), &ip("10.77.0.1")).unwrap();
            let e = handshake_in_memory(bad, server, &ip("10.77.0.1")).unwrap_err();
            assert_eq!(explain(&e), "certificate not signed by this boot server's CA");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
