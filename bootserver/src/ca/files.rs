//! Where the CA keeps its files, and writing them with the right modes from the start (a key
//! is never readable by others, not even for the moment between create and chmod).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CaError;

/// The files of the CA in `<state_dir>/ca/`.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub state_dir: PathBuf,
    pub dir: PathBuf,
}

impl CaFiles {
    pub fn new(state_dir: &Path) -> Self {
        CaFiles { state_dir: state_dir.to_path_buf(), dir: state_dir.join("ca") }
    }
    /// The CA certificate: what boot images carry.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The certificate of the broker and the VNC proxy.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// The broker's client certificate: what it shows the hosts' APIs and their VMs' VNC.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join("hosts").join(name)
    }

    /// The state dir and the CA's folder, both 0700: the state dir also holds the session
    /// store with the desktops' tokens.
    pub fn prepare_dirs(&self) -> Result<(), CaError> {
        create_private_dir(&self.state_dir)?;
        create_private_dir(&self.dir)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_path_buf(), source }
}

/// Creates `dir` (and its parents) as 0700, or narrows an existing one to 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    let mode = std::fs::metadata(dir).map_err(io_err(dir))?.permissions().mode() & 0o777;
    if mode != 0o700 {
        log::info!("{}: mode {mode:o} narrowed to 700", dir.display());
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `data` to `path` with `mode`, atomically (see [`crate::statefile`]).
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    crate::statefile::write_with_mode(path, data, mode)
        .map_err(|e| CaError::Io { path: e.path, source: e.source })
}

/// Writes a certificate and its private key (0600), the key first: a certificate found
/// without its key would pass for one that cannot be used.
pub fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<(), CaError> {
    write(key_path, key_pem.as_bytes(), 0o600)?;
    write(cert_path, cert_pem.as_bytes(), 0o644)
}

pub fn remove(path: &Path) -> Result<(), CaError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub fn read_text(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

pub fn warn_if_readable_by_others(key: &Path) {
    if let Ok(m) = std::fs::metadata(key) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!("{}: mode {mode:o}: a private key should be readable by its owner only (chmod 600)", key.display());
        }
    }
}

/// This machine's name, when it is usable in a certificate.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?.trim().to_string();
    super::check_name(&name).ok().map(|_| name)
}
