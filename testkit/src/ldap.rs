//! A directory for tests: Debian's slapd with a config, a test CA and an LDIF of its own in a
//! temporary folder (loaded by slapadd), run in a lab host over ldap:// and ldaps://.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{KillOnDrop, Lab};

pub const SUFFIX: &str = "dc=example,dc=org";

/// `{SSHA}` hash of `pw` by slapd's own tool.
fn slappasswd(pw: &str) -> anyhow::Result<String> {
    let out = Command::new("/usr/sbin/slappasswd").args(["-s", pw]).output().context("slappasswd (package slapd)")?;
    if !out.status.success() {
        bail!("slappasswd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A CA and a certificate for `ip` signed by it, written to `dir` as NAME-ca.pem,
/// NAME-cert.pem and NAME-key.pem. Returns the CA's path.
pub fn pki(dir: &Path, ip: &str, name: &str) -> anyhow::Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![ip.to_string()])?.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert.pem())?;
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())?;
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, ca.pem())?;
    Ok(path)
}

/// A directory under `dir` for `ip`: its CA (returned), slapd.conf and the database with
/// `users` (uid, password) under ou=people and `groups` (cn, member uids) under ou=groups.
pub fn directory(dir: &Path, ip: &str, users: &[(&str, &str)], groups: &[(&str, &[&str])]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("db"))?;
    let ca = pki(dir, ip, "ldap")?;
    let d = dir.display();
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
    )?;
    let mut ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for (user, pw) in users {
        let hash = slappasswd(pw)?;
        ldif += &format!(
            "dn: uid={user},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {user}\nsn: {user}\n\
             userPassword: {hash}\n\n"
        );
    }
    for (group, members) in groups {
        ldif += &format!("dn: cn={group},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {group}\n");
        for m in *members {
            ldif += &format!("member: uid={m},ou=people,{SUFFIX}\n");
        }
        ldif += "\n";
    }
    std::fs::write(dir.join("data.ldif"), ldif)?;
    let out = Command::new("/usr/sbin/slapadd")
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-l")
        .arg(dir.join("data.ldif"))
        .output()
        .context("slapadd (package slapd)")?;
    if !out.status.success() {
        bail!("slapadd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ca)
}

/// slapd for the directory in `dir`, in lab host `k` (which must already hold `ip`), on
/// ldap:// and ldaps://, once it accepts connections on 636. Its log goes to `log`.
pub fn slapd(lab: &Lab, k: u32, dir: &Path, ip: &str, log: &Path) -> anyhow::Result<KillOnDrop> {
    // -d keeps slapd in the foreground, where KillOnDrop stops it.
    let proc = KillOnDrop::spawn(
        lab.host_cmd(k, "/usr/sbin/slapd")
            .args(["-d", "256", "-h", &format!("ldap://{ip}/ ldaps://{ip}/"), "-f"])
            .arg(dir.join("slapd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?),
    )?;
    let t0 = Instant::now();
    // slapd listens on its own address: asking from inside its host is enough to know it is up.
    while t0.elapsed() < Duration::from_secs(20) {
        let st = lab.host_cmd(k, "bash").args(["-c", &format!("exec 3<>/dev/tcp/{ip}/636")]).stderr(Stdio::null()).status()?;
        if st.success() {
            return Ok(proc);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("slapd did not listen on {ip}:636: {}", std::fs::read_to_string(log).unwrap_or_default())
}
