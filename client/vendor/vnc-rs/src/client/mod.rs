mod auth;
pub mod connection;
pub mod connector;
mod messages;
mod security;
#[cfg(not(target_arch = "wasm32"))]
mod vencrypt;

#[cfg(not(target_arch = "wasm32"))]
pub use vencrypt::VencryptConfig;

pub use connection::VncClient;
pub use connector::VncConnector;

mod resize;
