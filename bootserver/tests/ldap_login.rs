//! Logins against Debian's slapd, which runs in a lab host with a directory of its own (a
//! slapd.conf and an LDIF loaded by slapadd into a temporary folder), over ldaps:// and
//! StartTLS with a test CA. The login side runs in a second host: directory users log in with
//! their groups' policies; a wrong password, an unknown user and an empty password are
//! refused alike; a directory that does not answer is "unreachable" within the timeout, while
//! a local account still logs in; a directory whose certificate the CA did not sign is not
//! trusted.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootserver::accounts::auth::BackendKind;
use bootserver::accounts::core::hash_password;
use bootserver::accounts::{AccountStore, AuthConfig, Authenticator, Desktop, LoginError, Policy, Role};
use testkit::{KillOnDrop, Lab};

const SUBNET: &str = "10.97.0";
const SUFFIX: &str = "dc=example,dc=org";

fn slappasswd(pw: &str) -> String {
    let out = Command::new("/usr/sbin/slappasswd").args(["-s", pw]).output().expect("slappasswd (package slapd)");
    assert!(out.status.success(), "slappasswd: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA and a certificate for `ip` signed by it: (ca.pem, cert.pem, key.pem) in `dir`.
fn pki(dir: &Path, ip: &str, name: &str) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![ip.to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    dir.join(format!("{name}-ca.pem"))
}

/// A slapd config and directory in `dir`: alice in staff, bob in kiosk, carol in no group.
fn directory(dir: &Path) {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(
        dir.join("slapd.conf"),
        format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\nargsfile {d}/slapd.args\n\
             TLSCACertificateFile {d}/ldap-ca.pem\nTLSCertificateFile {d}/ldap-cert.pem\n\
             TLSCertificateKeyFile {d}/ldap-key.pem\n\
             database mdb\nsuffix \"{SUFFIX}\"\nrootdn \"cn=admin,{SUFFIX}\"\ndirectory {d}/db\n"
        ),
    )
    .unwrap();
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for user in ["alice", "bob", "carol"] {
        let hash = slappasswd(&format!("{user}'s secret"));
        ldif += &format!(
            "dn: uid={user},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {user}\nsn: {user}\n\
             userPassword: {hash}\n\n"
        );
    }
    for (group, member) in [("staff", "alice"), ("kiosk", "bob")] {
        ldif += &format!(
            "dn: cn={group},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {group}\n\
             member: uid={member},ou=people,{SUFFIX}\n\n"
        );
    }
    std::fs::write(dir.join("data.ldif"), ldif).unwrap();
    let out = Command::new("/usr/sbin/slapadd").arg("-f").arg(dir.join("slapd.conf")).arg("-l").arg(dir.join("data.ldif")).output();
    let out = out.expect("slapadd (package slapd)");
    assert!(out.status.success(), "slapadd: {}", String::from_utf8_lossy(&out.stderr));
}

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
    let ca = pki(&conf, &slapd_ip, "ldap");
    let other_ca = pki(dir.path(), &slapd_ip, "other");
    directory(&conf);
    for (k, ip) in [(1, &slapd_ip), (2, &format!("{SUBNET}.3"))] {
        let st = lab.host_cmd(k, "ip").args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).status().unwrap();
        assert!(st.success());
    }
    let log = dir.path().join("slapd.log");
    // -d keeps slapd in the foreground, where KillOnDrop stops it.
    let _slapd = KillOnDrop::spawn(
        lab.host_cmd(1, "/usr/sbin/slapd")
            .args(["-d", "256", "-h", &format!("ldap://{slapd_ip}/ ldaps://{slapd_ip}/"), "-f"])
            .arg(conf.join("slapd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let ldaps: SocketAddr = format!("{slapd_ip}:636").parse().unwrap();
    let up = in_host2(&lab, async move {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if tokio::net::TcpStream::connect(ldaps).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(up, "slapd did not listen: {}", std::fs::read_to_string(&log).unwrap_or_default());

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
