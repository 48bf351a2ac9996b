//! Accounts: the people who log in, not the PCs.
//!
//! - [`core`]: names, passwords, roles and policies, argon2id hashes (pure).
//! - [`store`]: the accounts in `accounts.sqlite` of the state dir.
//! - [`auth`]: [`auth::Authenticator::authenticate`] over the backends of `[auth]`.
//! - [`ldap`]: the LDAP backend.
//! - [`cli`]: `bootserver user ...`; [`api`]: `/api/users` of the admin API.

pub mod api;
pub mod auth;
pub mod cli;
pub mod core;
pub mod ldap;
pub mod store;

pub use auth::{AuthConfig, Authenticator, Identity, LoginError};
pub use core::{Account, Desktop, Policy, Role};
pub use store::{AccountError, AccountStore};
