//! The LDAP backend: binds as the user with their password, then reads their groups and maps
//! them to a role and a desktop policy.
//!
//! Passwords must not cross the LAN in clear: `ldaps://` or StartTLS, checked against
//! `ca_file` (else the system's roots); plain `ldap://` only to a loopback address, unless
//! `allow_plain = true`. An empty password is refused before any bind: LDAP takes a simple
//! bind with a DN and no password as an anonymous bind that succeeds (RFC 4513 5.1.2).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;

use super::core::{validate_template, Desktop, Policy, Role};

/// `[auth.ldap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://host[:port]` or `ldap://host[:port]` (with `starttls` beyond loopback).
    pub url: String,
    /// The user's DN with `{user}` for the name, e.g. `uid={user},ou=people,dc=example,dc=org`.
    pub user_dn: Option<String>,
    /// Else: where to search for the user, with `search_filter`.
    pub search_base: Option<String>,
    #[serde(default = "default_filter")]
    pub search_filter: String,
    /// Who searches (anonymous when unset), and the file that holds its password.
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// Where the groups are (`groupOfNames`, `groupOfUniqueNames` or `posixGroup`); the user's
    /// own `memberOf` is read as well.
    pub group_base: Option<String>,
    #[serde(default)]
    pub starttls: bool,
    /// CA certificate(s) (PEM) that the directory's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_plain: bool,
    #[serde(default = "default_timeout")]
    pub connect_timeout_secs: u64,
    /// For each operation (bind, search) after the connection.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// `[[auth.ldap.group]]`: the first listed group the user is in sets the policy; any of
    /// them with `role = "admin"` makes the user an admin.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupPolicy>,
}

fn default_filter() -> String {
    "(uid={user})".into()
}
fn default_timeout() -> u64 {
    5
}

/// `[[auth.ldap.group]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    /// The group's `cn`, or its whole DN.
    pub name: String,
    pub role: Option<Role>,
    pub template: Option<String>,
    pub desktop: Option<Desktop>,
}

impl LdapConfig {
    /// Checks the keys; the message names the key and the fix.
    pub fn check(&self) -> Result<(), String> {
        let (tls, host) = split_url(&self.url).ok_or_else(|| {
            format!("auth.ldap.url {:?}: write ldaps://HOST[:PORT] or ldap://HOST[:PORT]", self.url)
        })?;
        if !tls && !self.starttls && !self.allow_plain && !is_loopback(&host) {
            return Err(format!(
                "auth.ldap.url {}: passwords would cross the network in clear; use ldaps://, or starttls = true, \
                 or allow_plain = true if the path is trusted",
                self.url
            ));
        }
        if tls && self.starttls {
            return Err("auth.ldap: starttls is for ldap:// URLs; ldaps:// is TLS already".into());
        }
        match (&self.user_dn, &self.search_base) {
            (Some(t), None) if t.contains("{user}") => {}
            (Some(_), None) => return Err("auth.ldap.user_dn: put {user} where the name goes".into()),
            (None, Some(_)) if self.search_filter.contains("{user}") => {}
            (None, Some(_)) => return Err("auth.ldap.search_filter: put {user} where the name goes".into()),
            _ => return Err("auth.ldap: set either user_dn or search_base (with search_filter)".into()),
        }
        if self.bind_dn.is_some() != self.bind_password_file.is_some() {
            return Err("auth.ldap: bind_dn and bind_password_file go together".into());
        }
        if self.connect_timeout_secs == 0 || self.timeout_secs == 0 {
            return Err("auth.ldap: connect_timeout_secs and timeout_secs must be at least 1".into());
        }
        for g in &self.groups {
            if let Some(t) = &g.template {
                validate_template(t).map_err(|e| format!("auth.ldap.group {}: {e}", g.name))?;
            }
        }
        Ok(())
    }

    /// The DN to bind as, for `user_dn` configs (the name escaped for a DN).
    pub fn dn_for(&self, name: &str) -> Option<String> {
        self.user_dn.as_ref().map(|t| t.replace("{user}", &ldap3::dn_escape(name)))
    }

    /// The search filter for `name` (escaped for a filter).
    pub fn filter_for(&self, name: &str) -> String {
        self.search_filter.replace("{user}", &ldap3::ldap_escape(name))
    }

    /// The role and policy of a member of `groups` (their `cn`s or DNs).
    pub fn policy_for(&self, groups: &[String]) -> (Role, Policy) {
        let member = |g: &GroupPolicy| groups.iter().any(|have| have.eq_ignore_ascii_case(&g.name));
        let matched: Vec<&GroupPolicy> = self.groups.iter().filter(|g| member(g)).collect();
        // The strongest role of any group: admin, then readonly.
        let has = |r: Role| matched.iter().any(|g| g.role == Some(r));
        let role = [Role::Admin, Role::Readonly].into_iter().find(|r| has(*r)).unwrap_or(Role::User);
        let policy = Policy {
            template: matched.iter().find_map(|g| g.template.clone()),
            desktop: matched.iter().find_map(|g| g.desktop).unwrap_or_default(),
        };
        (role, policy)
    }
}

/// (TLS from the start, host) of an LDAP URL.
pub fn split_url(url: &str) -> Option<(bool, String)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ldaps://") {
        (true, r)
    } else {
        (false, url.strip_prefix("ldap://")?)
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?.to_string()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string()
    };
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some((tls, host))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `cn` of a group's DN (`cn=staff,ou=groups,...` gives `staff`).
pub fn group_cn(dn: &str) -> Option<&str> {
    let first = dn.split(',').next()?;
    let (attr, value) = first.split_once('=')?;
    attr.trim().eq_ignore_ascii_case("cn").then(|| value.trim())
}

/// What the directory said about a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted { role: Role, policy: Policy },
    /// Unknown user or wrong password: the directory answers both alike.
    Refused,
    Unreachable(String),
}

/// A directory to log in against.
pub struct Directory {
    cfg: LdapConfig,
    settings: LdapConnSettings,
    bind_password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0}")]
    Config(String),
    #[error("auth.ldap.ca_file: {0}")]
    Ca(#[from] proto::tls::TlsError),
    #[error("auth.ldap.bind_password_file {path}: {source}")]
    BindPassword { path: PathBuf, source: std::io::Error },
}

impl Directory {
    pub fn new(cfg: LdapConfig) -> Result<Directory, DirectoryError> {
        cfg.check().map_err(DirectoryError::Config)?;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .set_starttls(cfg.starttls);
        if let Some(ca) = &cfg.ca_file {
            settings = settings.set_config(proto::tls::client_config(ca)?);
        }
        let bind_password = match &cfg.bind_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| DirectoryError::BindPassword { path: path.clone(), source })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        Ok(Directory { cfg, settings, bind_password })
    }

    /// Logs `name` in with `password`. The exchange runs in a task of its own, so that a
    /// directory's answer the LDAP library cannot take (a panic in it) is "unreachable", never
    /// a crash of the caller; a deadline bounds the whole exchange.
    pub async fn login(self: &Arc<Self>, name: &str, password: &str) -> Answer {
        if password.is_empty() {
            return Answer::Refused;
        }
        let (me, name, password) = (self.clone(), name.to_string(), password.to_string());
        let whole = Duration::from_secs(self.cfg.connect_timeout_secs + 4 * self.cfg.timeout_secs);
        let task = tokio::spawn(async move { me.exchange(&name, &password).await });
        match tokio::time::timeout(whole, task).await {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(e))) => Answer::Unreachable(format!("{}: {e}", self.cfg.url)),
            Ok(Err(join)) => Answer::Unreachable(format!("{}: the LDAP client failed: {join}", self.cfg.url)),
            Err(_) => Answer::Unreachable(format!("{}: no answer within {}s", self.cfg.url, whole.as_secs())),
        }
    }

    async fn exchange(&self, name: &str, password: &str) -> Result<Answer, ldap3::LdapError> {
        let op = Duration::from_secs(self.cfg.timeout_secs);
        let connect = Duration::from_secs(self.cfg.connect_timeout_secs);
        // The library's timeout covers the TCP connect; this one the TLS handshake too.
        let (conn, mut ldap) = tokio::time::timeout(connect, LdapConnAsync::with_settings(self.settings.clone(), &self.cfg.url))
            .await
            .map_err(|elapsed| ldap3::LdapError::Timeout { elapsed })??;
        ldap3::drive!(conn);
        let dn = match self.cfg.dn_for(name) {
            Some(dn) => Some(dn),
            None => self.find(&mut ldap, name, op).await?,
        };
        // An unknown user still costs a bind, so that the time does not tell who exists.
        let base = self.cfg.search_base.as_deref().unwrap_or("");
        let bind_dn = dn.clone().unwrap_or_else(|| format!("cn=no-such-user-{:016x},{base}", rand::random::<u64>()));
        let bound = ldap.with_timeout(op).simple_bind(&bind_dn, password).await?;
        let Some(dn) = dn.filter(|_| bound.rc == 0) else {
            let _ = ldap.unbind().await;
            // 49 (invalidCredentials) is the normal refusal; others are logged by the caller.
            if bound.rc != 49 && bound.rc != 0 {
                log::warn!("LDAP {}: bind refused with code {} ({})", self.cfg.url, bound.rc, bound.text);
            }
            return Ok(Answer::Refused);
        };
        let groups = self.groups(&mut ldap, &dn, name, op).await?;
        let _ = ldap.unbind().await;
        let (role, policy) = self.cfg.policy_for(&groups);
        Ok(Answer::Accepted { role, policy })
    }

    /// The DN of `name` by search; `None` unless exactly one entry matches.
    async fn find(&self, ldap: &mut ldap3::Ldap, name: &str, op: Duration) -> Result<Option<String>, ldap3::LdapError> {
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.bind_password) {
            ldap.with_timeout(op).simple_bind(dn, pw).await?.success()?;
        }
        let base = self.cfg.search_base.as_deref().unwrap_or("");
        let (entries, _) =
            ldap.with_timeout(op).search(base, Scope::Subtree, &self.cfg.filter_for(name), vec!["1.1"]).await?.success()?;
        Ok(match entries.len() {
            1 => Some(SearchEntry::construct(entries.into_iter().next().expect("one entry")).dn),
            _ => None,
        })
    }

    /// The groups of the bound user: the `cn` and DN of every group under `group_base` that
    /// lists them, and their own `memberOf`.
    async fn groups(
        &self,
        ldap: &mut ldap3::Ldap,
        dn: &str,
        name: &str,
        op: Duration,
    ) -> Result<Vec<String>, ldap3::LdapError> {
        let mut out = Vec::new();
        let add = |group_dn: String, out: &mut Vec<String>| {
            if let Some(cn) = group_cn(&group_dn) {
                out.push(cn.to_string());
            }
            out.push(group_dn);
        };
        let (me, _) = ldap.with_timeout(op).search(dn, Scope::Base, "(objectClass=*)", vec!["memberOf"]).await?.success()?;
        for e in me {
            for g in SearchEntry::construct(e).attrs.remove("memberOf").unwrap_or_default() {
                add(g, &mut out);
            }
        }
        if let Some(base) = &self.cfg.group_base {
            let (d, n) = (ldap3::ldap_escape(dn), ldap3::ldap_escape(name));
            let filter = format!("(|(member={d})(uniqueMember={d})(memberUid={n}))");
            let (found, _) = ldap.with_timeout(op).search(base, Scope::Subtree, &filter, vec!["cn"]).await?.success()?;
            for e in found {
                let e = SearchEntry::construct(e);
                for cn in e.attrs.get("cn").into_iter().flatten() {
                    out.push(cn.clone());
                }
                add(e.dn, &mut out);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(toml_text: &str) -> LdapConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn plain_ldap_only_to_loopback_unless_allowed() {
        let base = "user_dn = \"uid={user},dc=x\"\n";
        for ok in ["ldaps://dir.example", "ldap://127.0.0.1:3389", "ldap://localhost", "ldap://[::1]:389/"] {
            cfg(&format!("url = \"{ok}\"\n{base}")).check().unwrap();
        }
        for bad in ["ldap://10.0.0.5", "ldap://dir.example:389", "ldap://127.0.0.1.evil.example"] {
            let e = cfg(&format!("url = \"{bad}\"\n{base}")).check().unwrap_err();
            assert!(e.contains("in clear"), "{bad}: {e}");
        }
        cfg(&format!("url = \"ldap://10.0.0.5\"\nstarttls = true\n{base}")).check().unwrap();
        cfg(&format!("url = \"ldap://10.0.0.5\"\nallow_plain = true\n{base}")).check().unwrap();
        for bad in ["http://x", "ldaps://", "ldap://user@host"] {
            assert!(cfg(&format!("url = \"{bad}\"\n{base}")).check().is_err(), "{bad}");
        }
    }

    #[test]
    fn user_dn_or_search_and_both_name_the_user() {
        let e = cfg("url = \"ldaps://d\"").check().unwrap_err();
        assert!(e.contains("either user_dn or search_base"), "{e}");
        assert!(cfg("url = \"ldaps://d\"\nuser_dn = \"uid=x\"").check().unwrap_err().contains("{user}"));
        let c = cfg("url = \"ldaps://d\"\nsearch_base = \"dc=x\"");
        c.check().unwrap();
        assert_eq!(c.filter_for("a*)(uid=*"), "(uid=a\\2a\\29\\28uid=\\2a)");
        let c = cfg("url = \"ldaps://d\"\nuser_dn = \"uid={user},dc=x\"");
        assert_eq!(c.dn_for("a,b=c").unwrap(), "uid=a\\2cb\\3dc,dc=x");
    }

    #[test]
    fn groups_map_to_role_and_policy() {
        let c = cfg(r#"
            url = "ldaps://d"
            user_dn = "uid={user},dc=x"
            [[group]]
            name = "kiosk"
            template = "kiosk"
            desktop = "one-time"
            [[group]]
            name = "cn=staff,ou=groups,dc=x"
            role = "admin"
            template = "office"
        "#);
        c.check().unwrap();
        assert_eq!(c.policy_for(&[]), (Role::User, Policy::default()));
        let (role, p) = c.policy_for(&["CN=Staff,ou=groups,dc=x".into()]);
        assert_eq!((role, p.template.as_deref(), p.desktop), (Role::Admin, Some("office"), Desktop::Persistent));
        let (role, p) = c.policy_for(&["staff".into(), "kiosk".into(), "cn=staff,ou=groups,dc=x".into()]);
        assert_eq!((role, p.template.as_deref(), p.desktop), (Role::Admin, Some("kiosk"), Desktop::OneTime));
        assert_eq!(group_cn("cn=staff,ou=groups,dc=x"), Some("staff"));
        assert_eq!(group_cn("ou=x"), None);
    }

    proptest! {
        #[test]
        fn an_escaped_name_cannot_widen_the_filter_or_leave_the_rdn(name in "\\PC{0,40}") {
            let c = cfg("url = \"ldaps://d\"\nsearch_base = \"dc=x\"\nuser_dn = \"uid={user},dc=x\"");
            let f = c.filter_for(&name);
            prop_assert_eq!(f.matches('(').count(), 1);
            prop_assert_eq!(f.matches(')').count(), 1);
            prop_assert!(!f[1..].contains('*'));
            let dn = c.dn_for(&name).unwrap();
            prop_assert_eq!(dn.matches(',').count(), 1);
        }

        #[test]
        fn url_splitting_never_panics(url in "\\PC{0,60}") {
            let _ = split_url(&url);
        }
    }
}
