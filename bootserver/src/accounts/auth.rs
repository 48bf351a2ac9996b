//! Who may log in: [`Authenticator::authenticate`] asks the backends of `[auth] backends` in
//! order, and the first that knows the name and takes the password gives the [`Identity`].
//!
//! A backend that refuses passes the question on, so that every backend is asked for an
//! unknown name and a wrong password alike (and the time of a refusal does not tell which
//! names exist). A local account that is disabled ends the search: an administrator's "no"
//! is not overruled by a directory. "Disabled" is told only to whoever gave the right
//! password; a wrong one gets the same answer as an unknown name.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::core::{dummy_hash, validate_name, verify_password, Policy, Role, PASSWORD_MAX};
use super::ldap::{Answer, Directory, DirectoryError, LdapConfig};
use super::store::AccountStore;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default = "default_backends")]
    pub backends: Vec<BackendKind>,
    pub ldap: Option<LdapConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { backends: default_backends(), ldap: None }
    }
}

fn default_backends() -> Vec<BackendKind> {
    vec![BackendKind::Local]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The account store in the state dir (`bootserver user ...`).
    Local,
    /// `[auth.ldap]`.
    Ldap,
}

impl AuthConfig {
    /// Checks the keys; the message names the key and the fix.
    pub fn check(&self) -> Result<(), String> {
        if self.backends.is_empty() {
            return Err("auth.backends is empty: nobody could log in; use [\"local\"], [\"ldap\"] or both".into());
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].contains(b) {
                return Err(format!("auth.backends lists {b:?} twice"));
            }
        }
        match (&self.ldap, self.backends.contains(&BackendKind::Ldap)) {
            (None, true) => Err("auth.backends has \"ldap\" but there is no [auth.ldap] table".into()),
            (Some(l), _) => l.check(),
            (None, false) => Ok(()),
        }
    }
}

/// Who logged in, and what they get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub policy: Policy,
    /// The backend that knew the user.
    pub backend: BackendKind,
}

/// Why a login failed, as the login screen says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Unknown name or wrong password: the same answer for both.
    #[error("wrong user name or password")]
    WrongPassword,
    #[error("this account is disabled; ask an administrator")]
    Disabled,
    #[error("the user directory cannot be reached; try again in a moment")]
    DirectoryUnreachable,
}

enum Backend {
    Local(Arc<AccountStore>),
    Ldap(Arc<Directory>),
}

/// The backends of `[auth]`, ready to ask.
pub struct Authenticator {
    backends: Vec<Backend>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

enum LocalAnswer {
    Accepted(Identity),
    Disabled,
    Refused,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig, store: Arc<AccountStore>) -> Result<Authenticator, AuthSetupError> {
        cfg.check().map_err(AuthSetupError::Config)?;
        let mut backends = Vec::new();
        for kind in &cfg.backends {
            backends.push(match kind {
                BackendKind::Local => Backend::Local(store.clone()),
                BackendKind::Ldap => {
                    let l = cfg.ldap.clone().expect("check() wants [auth.ldap] with ldap");
                    Backend::Ldap(Arc::new(Directory::new(l)?))
                }
            });
        }
        Ok(Authenticator { backends })
    }

    /// The policy of the local account `name`, for a kiosk's autologin (which asks no
    /// password); `None` when no local store is in use or it has no such account.
    pub fn local_policy(&self, name: &str) -> Option<Policy> {
        self.backends.iter().find_map(|b| match b {
            Backend::Local(store) => match store.credentials(name) {
                Ok(c) => c.map(|c| c.account.policy),
                Err(e) => {
                    log::error!("policy of {}: {e}", crate::logsafe::Esc(name));
                    None
                }
            },
            Backend::Ldap(_) => None,
        })
    }

    /// Logs `name` in with `password`.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Identity, LoginError> {
        // Not a name any backend could hold, or a password no one could have: refused like a
        // wrong password, after the same work, and without hashing an overlong one.
        let plausible = validate_name(name).is_ok() && !password.is_empty() && password.len() <= PASSWORD_MAX;
        let mut unreachable = false;
        for backend in &self.backends {
            match backend {
                Backend::Local(store) => match local(store.clone(), name, password, plausible).await {
                    LocalAnswer::Accepted(id) => return Ok(id),
                    LocalAnswer::Disabled => return Err(LoginError::Disabled),
                    LocalAnswer::Refused => {}
                },
                Backend::Ldap(dir) if plausible => match dir.login(name, password).await {
                    Answer::Accepted { role, policy } => {
                        return Ok(Identity { name: name.into(), role, policy, backend: BackendKind::Ldap })
                    }
                    Answer::Refused => {}
                    Answer::Unreachable(why) => {
                        log::warn!("login of {}: directory unreachable: {why}", crate::logsafe::Esc(name));
                        unreachable = true;
                    }
                },
                Backend::Ldap(_) => {}
            }
        }
        // The user may be in the directory that did not answer: do not call it a wrong password.
        Err(if unreachable { LoginError::DirectoryUnreachable } else { LoginError::WrongPassword })
    }
}

/// The local store's answer, computed off the async runtime (argon2 takes tens of
/// milliseconds). An unknown name is checked against a dummy hash of the same cost.
async fn local(store: Arc<AccountStore>, name: &str, password: &str, plausible: bool) -> LocalAnswer {
    let (name, password) = (name.to_string(), password.to_string());
    let job = tokio::task::spawn_blocking(move || {
        let creds = if plausible {
            store.credentials(&name).unwrap_or_else(|e| {
                log::error!("login of {name}: {e}");
                None
            })
        } else {
            None
        };
        let phc = creds.as_ref().map_or(dummy_hash(), |c| c.phc.as_str());
        let matches = verify_password(&password, phc);
        match creds {
            Some(c) if matches && c.account.enabled => LocalAnswer::Accepted(Identity {
                name: c.account.name,
                role: c.account.role,
                policy: c.account.policy,
                backend: BackendKind::Local,
            }),
            Some(_) if matches => LocalAnswer::Disabled,
            _ => LocalAnswer::Refused,
        }
    });
    job.await.unwrap_or(LocalAnswer::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::core::{hash_password, Desktop};
    use crate::accounts::store::Change;
    use std::time::{Duration, Instant};

    fn setup() -> (tempfile::TempDir, Arc<AccountStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AccountStore::open_in(dir.path()).unwrap());
        let p = Policy { template: Some("office".into()), desktop: Desktop::OneTime };
        store.add("alice", &hash_password("alice's password").unwrap(), Role::Admin, &p).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn local_logins_wrong_unknown_and_disabled() {
        let (_d, store) = setup();
        let auth = Authenticator::new(&AuthConfig::default(), store.clone()).unwrap();
        let id = auth.authenticate("alice", "alice's password").await.unwrap();
        assert_eq!((id.role, id.policy.template.as_deref(), id.backend), (Role::Admin, Some("office"), BackendKind::Local));
        for (name, pw) in [("alice", "wrong"), ("bob", "alice's password"), ("Alice", "x"), ("alice", "")] {
            assert_eq!(auth.authenticate(name, pw).await, Err(LoginError::WrongPassword), "{name}");
        }
        assert_eq!(auth.authenticate("alice", &"x".repeat(1 << 20)).await, Err(LoginError::WrongPassword));
        store.update("alice", &Change { enabled: Some(false), ..Default::default() }).unwrap();
        assert_eq!(auth.authenticate("alice", "alice's password").await, Err(LoginError::Disabled));
        // Disabled is told only to whoever knows the password.
        assert_eq!(auth.authenticate("alice", "wrong").await, Err(LoginError::WrongPassword));
    }

    #[tokio::test]
    async fn an_unknown_name_costs_what_a_wrong_password_costs() {
        let (_d, store) = setup();
        let auth = Authenticator::new(&AuthConfig::default(), store).unwrap();
        let _ = auth.authenticate("nobody", "x").await; // the dummy hash is made once
        // Interleaved, so that a busy machine slows both alike.
        let (mut known, mut unknown) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..6 {
            for (name, sum) in [("alice", &mut known), ("nobody", &mut unknown)] {
                let t = Instant::now();
                assert!(auth.authenticate(name, "wrong password").await.is_err());
                *sum += t.elapsed();
            }
        }
        let ratio = known.as_secs_f64() / unknown.as_secs_f64();
        assert!((0.5..2.0).contains(&ratio), "wrong password {known:?}, unknown user {unknown:?}");
        // Both did real argon2 work, not an early return.
        assert!(unknown > Duration::from_millis(5), "{unknown:?}");
    }

    #[test]
    fn the_config_names_what_is_wrong() {
        let parse = |t: &str| toml::from_str::<AuthConfig>(t).unwrap().check();
        parse("").unwrap();
        assert!(parse("backends = []").unwrap_err().contains("empty"));
        assert!(parse("backends = [\"local\", \"local\"]").unwrap_err().contains("twice"));
        assert!(parse("backends = [\"ldap\"]").unwrap_err().contains("[auth.ldap]"));
        assert!(toml::from_str::<AuthConfig>("backends = [\"kerberos\"]").is_err());
    }
}
