use crate::nfs::{fileid3, nfs_fh3, nfsstat3};
use crate::vfs::NFSFileSystem;
use std::fmt;
use std::sync::Arc;
use tokio::sync::mpsc;
/// Who may connect and mount what. The default lets everyone mount `/`, as upstream did.
pub trait AccessPolicy: Send + Sync {
    fn allow_connection(&self, _peer: &std::net::SocketAddr) -> bool {
        true
    }
    fn allow_mount(&self, _peer: &str, _path: &[u8]) -> bool {
        true
    }
    fn exports(&self) -> Vec<Vec<u8>> {
        vec![b"/".to_vec()]
    }
    /// Asked on every NFS call for each file the call names, so that a client list applies to
    /// every call and not only to MOUNT. Refused calls get NFS3ERR_ACCES.
    fn allow_file(&self, _peer: &str, _id: fileid3) -> bool {
        true
    }
    /// Told after each successful READ how many bytes of file data went to the peer, so that
    /// the server can count what each client reads.
    fn read_served(&self, _peer: &str, _bytes: u64) {}
}

pub(crate) struct OpenPolicy;
impl AccessPolicy for OpenPolicy {}

#[derive(Clone)]
pub struct RPCContext {
    pub policy: Arc<dyn AccessPolicy>,
    pub local_port: u16,
    pub client_addr: String,
    pub auth: crate::rpc::auth_unix,
    pub vfs: Arc<dyn NFSFileSystem + Send + Sync>,
    pub mount_signal: Option<mpsc::Sender<bool>>,
}

impl fmt::Debug for RPCContext {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("RPCContext")
            .field("local_port", &self.local_port)
            .field("client_addr", &self.client_addr)
            .field("auth", &self.auth)
            .finish()
    }
}

impl RPCContext {
    /// The file a handle names, if the handle is valid and the peer may use that file.
    pub fn fh_to_id(&self, fh: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        let id = self.vfs.fh_to_id(fh)?;
        if self.policy.allow_file(&self.client_addr, id) {
            Ok(id)
        } else {
            Err(nfsstat3::NFS3ERR_ACCES)
        }
    }
}
