//! Logins against Debian's slapd, which runs in a lab host with a directory of its own (a
//! slapd.conf and an LDIF loaded by slapadd into a temporary folder), over ldaps:// and
//! StartTLS with a test CA. The login side runs in a second host: directory users log in with
//! their groups' policies; a wrong password, an unknown user and an empty password are
//! refused alike; a directory that does not answer is "unreachable" within the timeout, while
//! a local account still logs in; a directory whose certificate the CA did not sign is not
//! trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bootserver::accounts::auth::BackendKind;
use bootserver::accounts::core::hash_password;
use bootserver::accounts::{AccountStore, AuthConfig, Authenticator, Desktop, LoginError, Policy, Role};
use testkit::Lab;

const SUBNET: &str = "10.97.0";
const SUFFIX: &str = testkit::ldap::SUFFIX;

fn auth_config(text: &str) -> AuthConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Runs `f` on a runtime of its own in lab host 2 (the login side).
fn in_host2<T: Send + 'static>(lab: &Lab, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    lab.on_host(2, move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f))
}

#[test]
fn directory_users_log_in_with_their_groups_policies_and_failures_read_alike() {
    let lab = Lab::with_subnet(0, 2, SUBNET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("slapd");
    std::fs::create_dir(&conf).unwrap();
    let slapd_ip = format!("{SUBNET}.2");
    let users: Vec<(String, String)> = ["alice", "bob", "carol"].iter().map(|u| (u.to_string(), format!("{u}'s secret"))).collect();
    let users: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    // alice in staff, bob in kiosk, carol in no group.
    let ca = testkit::ldap::directory(&conf, &slapd_ip, &users, &[("staff", &["alice"]), ("kiosk", &["bob"])]).unwrap();
    let other_ca = testkit::ldap::pki(dir.path(), &slapd_ip, "other").unwrap();
    for (k, ip) in [(1, &slapd_ip), (2, &format!("{SUBNET}.3"))] {
        let st = lab.host_cmd(k, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).status().unwrap();
        assert!(st.success());
    }
    let _slapd = testkit::ldap::slapd(&lab, 1, &conf, &slapd_ip, &dir.path().join("slapd.log")).unwrap();

    let store = Arc::new(AccountStore::open_in(&dir.path().join("state")).unwrap());
    store.add("dave", &hash_password("dave's secret").unwrap(), Role::User, &Policy::default()).unwrap();
    let groups = r#"
        [[ldap.group]]
        name = "staff"
        role = "admin"
        template = "office"
        [[ldap.group]]
        name = "kiosk"
        template = "kiosk"
        desktop = "one-time"
    "#;
    let ca = ca.display().to_string();

    // ldaps://, the user's DN from a template.
    let cfg = auth_config(&format!(
        "backends = [\"ldap\"]\n[ldap]\nurl = \"ldaps://{slapd_ip}\"\nuser_dn = \"uid={{user}},ou=people,{SUFFIX}\"\n\
         group_base = \"ou=groups,{SUFFIX}\"\nca_file = \"{ca}\"\nconnect_timeout_secs = 2\ntimeout_secs = 3\n{groups}"
    ));
    let auth = Arc::new(Authenticator::new(&cfg, store.clone()).unwrap());
    let a = auth.clone();
    let (ids, refusals, times) = in_host2(&lab, async move {
        let mut ids = Vec::new();
        for u in ["alice", "bob", "carol"] {
            ids.push(a.authenticate(u, &format!("{u}'s secret")).await);
        }
        let mut refusals = Vec::new();
        let mut times = Vec::new();
        for (name, pw) in [("alice", "bob's secret"), ("mallory", "alice's secret"), ("alice", ""), ("dave", "dave's secret")] {
            let t = Instant::now();
            refusals.push(a.authenticate(name, pw).await);
            times.push(t.elapsed());
        }
        (ids, refusals, times)
    });
    let alice = ids[0].clone().unwrap();
    assert_eq!((alice.role, alice.policy.template.as_deref(), alice.backend), (Role::Admin, Some("office"), BackendKind::Ldap));
    let bob = ids[1].clone().unwrap();
    assert_eq!((bob.role, bob.policy.template.as_deref(), bob.policy.desktop), (Role::User, Some("kiosk"), Desktop::OneTime));
    let carol = ids[2].clone().unwrap();
    assert_eq!((carol.role, carol.policy), (Role::User, Policy::default()));
    // A wrong password, an unknown user, an empty password (an unauthenticated bind that the
    // directory would take), a local user when only the directory is asked: all alike.
    for r in &refusals {
        assert_eq!(r, &Err(LoginError::WrongPassword));
    }
    println!("refusals took {times:?} (wrong password, unknown user, empty password, local-only user)");

    // StartTLS on ldap://, the DN found by an anonymous search.
    let cfg = auth_config(&format!(
        "backends = [\"ldap\"]\n[ldap]\nurl = \"ldap://{slapd_ip}\"\nstarttls = true\n\
         search_base = \"ou=people,{SUFFIX}\"\ngroup_base = \"ou=groups,{SUFFIX}\"\nca_file = \"{ca}\"\n{groups}"
    ));
    let a = Arc::new(Authenticator::new(&cfg, store.clone()).unwrap());
    let (alice, wrong, unknown) = in_host2(&lab, async move {
        (
            a.authenticate("alice", "alice's secret").await,
            a.authenticate("alice", "wrong").await,
            a.authenticate("mallory", "wrong").await,
        )
    });
    assert_eq!(alice.unwrap().role, Role::Admin);
    assert_eq!((wrong, unknown), (Err(LoginError::WrongPassword), Err(LoginError::WrongPassword)));

    // A certificate our CA did not sign: no password is sent, the directory counts as down.
    let cfg = auth_config(&format!(
        "backends = [\"ldap\"]\n[ldap]\nurl = \"ldaps://{slapd_ip}\"\nuser_dn = \"uid={{user}},ou=people,{SUFFIX}\"\n\
         ca_file = \"{}\"\n",
        other_ca.display()
    ));
    let a = Arc::new(Authenticator::new(&cfg, store.clone()).unwrap());
    let r = in_host2(&lab, async move { a.authenticate("alice", "alice's secret").await });
    assert_eq!(r, Err(LoginError::DirectoryUnreachable));

    // A directory that does not answer (an address nobody holds), after the local store: the
    // local user still logs in; a directory user is told the directory is unreachable, within
    // the connect timeout.
    let cfg = auth_config(&format!(
        "backends = [\"local\", \"ldap\"]\n[ldap]\nurl = \"ldaps://{SUBNET}.9\"\n\
         user_dn = \"uid={{user}},ou=people,{SUFFIX}\"\nca_file = \"{ca}\"\nconnect_timeout_secs = 2\ntimeout_secs = 2\n"
    ));
    let a = Arc::new(Authenticator::new(&cfg, store).unwrap());
    let (dave, alice, took) = in_host2(&lab, async move {
        let dave = a.authenticate("dave", "dave's secret").await;
        let t = Instant::now();
        let alice = a.authenticate("alice", "alice's secret").await;
        (dave, alice, t.elapsed())
    });
    assert_eq!(dave.unwrap().backend, BackendKind::Local);
    assert_eq!(alice, Err(LoginError::DirectoryUnreachable));
    assert!(took < Duration::from_secs(4), "unreachable after {took:?}");
    println!("unreachable directory answered in {took:?}");
}
