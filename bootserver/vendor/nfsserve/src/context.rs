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
