//! The deployment's certificate authority, kept in `<state_dir>/ca/`.
//!
//! It signs the certificate of the broker and the VNC proxy (`server.pem`, one for both: they
//! listen on the same address), the client certificate they show the virtualization hosts
//! (`client.pem`), and one per host (`hosts/NAME/`), which only serves: a host cannot pass for
//! the broker with another host. The boot images
//! carry `ca.pem` (see `initramfs build --ca-cert`), so an agent trusts this boot server and
//! nothing else on the LAN.
//!
//! Validity runs from 1970 to 9999 (RFC 5280's "no well-defined expiration date") on purpose:
//! a diskless PC's clock is whatever its RTC says, and a PC that refused its broker because the
//! CMOS battery died would be worse than useless. Trust ends by making a new CA
//! (`ca init --force`) and rebuilding the images.

pub mod cli;
mod files;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

pub use files::CaFiles;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path} already exists: this state dir has a CA; boot images carry its certificate, so a new CA locks every PC out until its image is rebuilt (use --force to replace it anyway)")]
    Exists { path: PathBuf },
    #[error("no CA in {dir}: create one with `bootserver ca init --state-dir {state_dir}`")]
    Missing { dir: PathBuf, state_dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{name:?} is not a host name: use letters, digits, '-' and '.', at most 63 characters, starting with a letter or digit")]
    BadName { name: String },
    #[error("{path} already exists: host {name} is enrolled (use --force to issue it a new certificate)")]
    Enrolled { name: String, path: PathBuf },
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Rcgen { what, source }
}

/// Names a server certificate is made for: the addresses clients dial and DNS names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

impl ServerNames {
    /// The addresses `ips` (the unspecified one dropped) and this machine's name.
    pub fn of_this_machine(ips: &[IpAddr]) -> Self {
        ServerNames {
            ips: ips.iter().copied().filter(|i| !i.is_unspecified()).collect(),
            dns: files::hostname().into_iter().collect(),
        }
    }

    fn sans(&self) -> Result<Vec<SanType>, CaError> {
        let mut sans: Vec<SanType> = Vec::new();
        for ip in &self.ips {
            if !sans.contains(&SanType::IpAddress(*ip)) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        for d in &self.dns {
            check_name(d)?;
            let name = d.as_str().try_into().map_err(rcgen_err(format!("DNS name {d:?}")))?;
            sans.push(SanType::DnsName(name));
        }
        Ok(sans)
    }
}

/// A name usable both as a DNS name in a certificate and as a folder name.
pub fn check_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(CaError::BadName { name: name.into() })
    }
}

fn distinguished(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "thinclient");
    dn.push(DnType::CommonName, cn);
    dn
}

fn base_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = distinguished(cn);
    p.not_before = rcgen::date_time_ymd(1970, 1, 1);
    p.not_after = rcgen::date_time_ymd(9999, 12, 31);
    // Random and positive (the top bit clear: a DER INTEGER with it set is negative).
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p
}

/// The CA, loaded for issuing.
pub struct Ca {
    files: CaFiles,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Creates the CA of `state_dir`. An existing CA is kept unless `force`: every boot image
/// made for it would stop trusting this boot server.
pub fn init(state_dir: &Path, force: bool) -> Result<CaFiles, CaError> {
    let files = CaFiles::new(state_dir);
    files.prepare_dirs()?;
    if !force {
        for p in [files.ca_cert(), files.ca_key()] {
            if p.exists() {
                return Err(CaError::Exists { path: p });
            }
        }
    }
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let host = files::hostname().unwrap_or_else(|| "bootserver".into());
    let mut params = base_params(&format!("thinclient CA {host}"));
    // Only leaves below it: nothing it signs can sign in turn.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(rcgen_err("signing the CA certificate"))?;
    files::write_pair(&files.ca_cert(), &cert.pem(), &files.ca_key(), &key.serialize_pem())?;
    // Certificates of the old CA are of no use any more.
    if force {
        for p in [files.server_cert(), files.server_key(), files.client_cert(), files.client_key()] {
            files::remove(&p)?;
        }
    }
    log::info!("created the CA {} (key {})", files.ca_cert().display(), files.ca_key().display());
    Ok(files)
}

impl Ca {
    /// Loads the CA of `state_dir` for issuing.
    pub fn open(state_dir: &Path) -> Result<Ca, CaError> {
        let files = CaFiles::new(state_dir);
        if !files.ca_cert().exists() || !files.ca_key().exists() {
            return Err(CaError::Missing { dir: files.dir.clone(), state_dir: state_dir.to_path_buf() });
        }
        files::warn_if_readable_by_others(&files.ca_key());
        let cert_pem = files::read_text(&files.ca_cert())?;
        let key_pem = files::read_text(&files.ca_key())?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen_err(files.ca_key().display().to_string()))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(rcgen_err(files.ca_cert().display().to_string()))?;
        // Signing needs an rcgen certificate of the CA: re-signing its own parameters with its
        // key gives the same subject and key, which is all a leaf's chain refers to.
        let cert = params.self_signed(&key).map_err(rcgen_err("loading the CA"))?;
        Ok(Ca { files, cert, key })
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    fn issue(&self, params: CertificateParams, what: &str) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(rcgen_err(format!("generating the key of {what}")))?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(rcgen_err(format!("signing {what}")))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues the certificate of the broker and the VNC proxy into `server.pem` and
    /// `server.key`, replacing any older one.
    pub fn issue_server(&self, names: &ServerNames) -> Result<(PathBuf, PathBuf), CaError> {
        let mut params = base_params(&format!("thinclient boot server {}", files::hostname().unwrap_or_default()));
        params.subject_alt_names = names.sans()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (cert, key) = self.issue(params, "the server certificate")?;
        let (cert_path, key_path) = (self.files.server_cert(), self.files.server_key());
        files::write_pair(&cert_path, &cert, &key_path, &key)?;
        log::info!("issued the server certificate {} for {}", cert_path.display(), describe(names));
        Ok((cert_path, key_path))
    }

    /// Issues the broker's client certificate into `client.pem` and `client.key`: the hosts'
    /// APIs and their VMs' VNC take it, and nothing but certificates of this CA.
    pub fn issue_client(&self) -> Result<(PathBuf, PathBuf), CaError> {
        let mut params = base_params(&format!("thinclient broker {}", files::hostname().unwrap_or_default()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = self.issue(params, "the broker's client certificate")?;
        let (cert_path, key_path) = (self.files.client_cert(), self.files.client_key());
        files::write_pair(&cert_path, &cert, &key_path, &key)?;
        log::info!("issued the broker's client certificate {}", cert_path.display());
        Ok((cert_path, key_path))
    }

    /// Issues host `name` the certificate it serves with (its API, its VMs' VNC), with its key
    /// and the CA's certificate beside it in `hosts/NAME/`. Returns that folder. Server use
    /// only: the hosts take client certificates of this CA, and one host's must not open
    /// another's API.
    pub fn enrol_host(&self, name: &str, ips: &[IpAddr], force: bool) -> Result<PathBuf, CaError> {
        check_name(name)?;
        let dir = self.files.host_dir(name);
        let (cert_path, key_path) = (dir.join("host.pem"), dir.join("host.key"));
        if cert_path.exists() && !force {
            return Err(CaError::Enrolled { name: name.into(), path: cert_path });
        }
        files::create_private_dir(&dir)?;
        let names = ServerNames { ips: ips.to_vec(), dns: vec![name.to_string()] };
        let mut params = base_params(name);
        params.subject_alt_names = names.sans()?;
        // QEMU (GnuTLS) refuses a server certificate whose critical key usage lacks key
        // encipherment, whatever the key type; rustls does not look at it.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (cert, key) = self.issue(params, &format!("host {name}"))?;
        files::write_pair(&cert_path, &cert, &key_path, &key)?;
        files::write(&dir.join("ca.pem"), files::read_text(&self.files.ca_cert())?.as_bytes(), 0o644)?;
        log::info!("enrolled host {name} ({})", describe(&names));
        Ok(dir)
    }
}

fn describe(names: &ServerNames) -> String {
    let mut all: Vec<String> = names.ips.iter().map(|i| i.to_string()).collect();
    all.extend(names.dns.iter().cloned());
    all.join(", ")
}

/// What `bootserver serve` needs before it listens: the CA (created when the state dir has
/// none, so that `bootserver boot` still needs nothing else) and a server certificate from it
/// that clients dialling every address of `names` accept. A certificate of another CA or for
/// other addresses is issued anew. Returns the certificate and key paths.
pub fn ensure_server(state_dir: &Path, names: &ServerNames) -> Result<(PathBuf, PathBuf), CaError> {
    let files = ensure_ca(state_dir)?;
    let ca = Ca::open(state_dir)?;
    match server_cert_fits(&files, names) {
        Ok(()) => {
            files::warn_if_readable_by_others(&files.server_key());
            Ok((files.server_cert(), files.server_key()))
        }
        Err(why) => {
            log::info!("issuing a new server certificate: {why}");
            ca.issue_server(names)
        }
    }
}

/// The CA of `state_dir`, made when it has none (so that `bootserver boot` still needs nothing
/// else).
fn ensure_ca(state_dir: &Path) -> Result<CaFiles, CaError> {
    let files = CaFiles::new(state_dir);
    if !files.ca_cert().exists() && !files.ca_key().exists() {
        init(state_dir, false)?;
        log::warn!(
            "this state dir had no CA: made one; boot images must carry {} (initramfs build --ca-cert) for their agents to trust this server",
            files.ca_cert().display()
        );
    }
    Ok(files)
}

/// The broker's client certificate (issued when there is none, or one of another CA) with the
/// CA's certificate: what the broker needs to reach the hosts. Returns (CA, cert, key).
pub fn ensure_client(state_dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), CaError> {
    let files = ensure_ca(state_dir)?;
    let fits = files.client_key().exists()
        && proto::tls::load_certs(&files.client_cert()).ok().zip(proto::tls::load_ca(&files.ca_cert()).ok()).is_some_and(
            |(chain, roots)| proto::tls::verify_client_chain(roots, &chain).is_ok(),
        );
    if fits {
        files::warn_if_readable_by_others(&files.client_key());
        return Ok((files.ca_cert(), files.client_cert(), files.client_key()));
    }
    let (cert, key) = Ca::open(state_dir)?.issue_client()?;
    Ok((files.ca_cert(), cert, key))
}

/// Whether the current server certificate chains to the CA and is valid for every address.
fn server_cert_fits(files: &CaFiles, names: &ServerNames) -> Result<(), String> {
    if !files.server_cert().exists() || !files.server_key().exists() {
        return Err(format!("{} does not exist", files.server_cert().display()));
    }
    let chain = proto::tls::load_certs(&files.server_cert()).map_err(|e| e.to_string())?;
    for ip in &names.ips {
        let roots = proto::tls::load_ca(&files.ca_cert()).map_err(|e| e.to_string())?;
        proto::tls::verify_server_chain(roots, &chain, &proto::tls::server_name(*ip))
            .map_err(|e| format!("{} for {ip}: {}", files.server_cert().display(), proto::tls::explain(&e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
