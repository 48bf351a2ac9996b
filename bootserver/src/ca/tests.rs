use std::os::unix::fs::PermissionsExt;

use proto::tls::rustls;

use super::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn names(ips: &[&str]) -> ServerNames {
    ServerNames { ips: ips.iter().map(|i| i.parse().unwrap()).collect(), dns: vec!["bootserver.lab".into()] }
}

fn verify(files: &CaFiles, cert: &Path, ip: &str) -> Result<(), rustls::Error> {
    let roots = proto::tls::load_ca(&files.ca_cert()).unwrap();
    let chain = proto::tls::load_certs(cert).unwrap();
    proto::tls::verify_server_chain(roots, &chain, &proto::tls::server_name(ip.parse().unwrap()))
}

#[test]
fn init_makes_private_files_and_keeps_an_existing_ca() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = init(&state, false).unwrap();
    assert_eq!(mode(&state), 0o700, "state dir");
    assert_eq!(mode(&files.dir), 0o700, "CA dir");
    assert_eq!(mode(&files.ca_key()), 0o600, "CA key");
    assert_eq!(mode(&files.ca_cert()), 0o644, "CA certificate");
    let pem = std::fs::read_to_string(files.ca_cert()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(std::fs::read_to_string(files.ca_key()).unwrap().contains("PRIVATE KEY"));

    let e = init(&state, false).unwrap_err();
    assert!(matches!(e, CaError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(files.ca_cert()).unwrap(), pem, "a refused init changed the CA");

    init(&state, true).unwrap();
    assert_ne!(std::fs::read_to_string(files.ca_cert()).unwrap(), pem, "--force kept the old CA");
    assert_eq!(mode(&files.ca_key()), 0o600);
}

#[test]
fn a_server_certificate_chains_to_its_ca_for_its_addresses_only() {
    let d = tempfile::tempdir().unwrap();
    let files = init(d.path(), false).unwrap();
    let ca = Ca::open(d.path()).unwrap();
    let (cert, key) = ca.issue_server(&names(&["10.77.0.1", "192.0.2.7"])).unwrap();
    assert_eq!(mode(&key), 0o600);
    verify(&files, &cert, "10.77.0.1").unwrap();
    verify(&files, &cert, "192.0.2.7").unwrap();
    let e = verify(&files, &cert, "10.77.0.2").unwrap_err();
    assert_eq!(proto::tls::explain(&e), "certificate not made for this address");

    // Another deployment's CA does not vouch for it.
    let other = tempfile::tempdir().unwrap();
    let other_files = init(other.path(), false).unwrap();
    let e = verify(&other_files, &cert, "10.77.0.1").unwrap_err();
    assert_eq!(proto::tls::explain(&e), "certificate not signed by this boot server's CA");
}

#[test]
fn serve_makes_what_is_missing_and_replaces_what_no_longer_fits() {
    let d = tempfile::tempdir().unwrap();
    let files = CaFiles::new(d.path());
    let (cert, _) = ensure_server(d.path(), &names(&["10.77.0.1"])).unwrap();
    verify(&files, &cert, "10.77.0.1").unwrap();
    let first = std::fs::read(&cert).unwrap();
    let ca_first = std::fs::read(files.ca_cert()).unwrap();

    // Unchanged: nothing is issued again, the CA is kept.
    ensure_server(d.path(), &names(&["10.77.0.1"])).unwrap();
    assert_eq!(std::fs::read(&cert).unwrap(), first);
    assert_eq!(std::fs::read(files.ca_cert()).unwrap(), ca_first);

    // A new address: a new certificate that covers it.
    ensure_server(d.path(), &names(&["10.77.0.1", "10.77.0.5"])).unwrap();
    verify(&files, &cert, "10.77.0.5").unwrap();

    // A new CA: the old server certificate is gone and the next one chains to the new CA.
    init(d.path(), true).unwrap();
    assert!(!cert.exists(), "ca init --force kept the old CA's server certificate");
    ensure_server(d.path(), &names(&["10.77.0.1"])).unwrap();
    verify(&files, &cert, "10.77.0.1").unwrap();
}

#[test]
fn opening_without_a_ca_says_how_to_make_one() {
    let d = tempfile::tempdir().unwrap();
    let e = Ca::open(d.path()).err().unwrap();
    assert!(e.to_string().contains("bootserver ca init"), "{e}");
}

#[test]
fn an_enrolled_host_and_the_broker_authenticate_each_other() {
    let d = tempfile::tempdir().unwrap();
    let files = init(d.path(), false).unwrap();
    let ca = Ca::open(d.path()).unwrap();
    for bad in ["", "../x", "-h", "a b", "h/1", &"x".repeat(64)] {
        assert!(matches!(ca.enrol_host(bad, &[], false), Err(CaError::BadName { .. })), "{bad:?} accepted");
    }
    let dir = ca.enrol_host("h1", &["10.77.0.11".parse().unwrap()], false).unwrap();
    assert_eq!(dir, files.host_dir("h1"));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("host.key")), 0o600);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), std::fs::read(files.ca_cert()).unwrap());
    verify(&files, &dir.join("host.pem"), "10.77.0.11").unwrap();
    let e = ca.enrol_host("h1", &[], false).unwrap_err();
    assert!(matches!(e, CaError::Enrolled { .. }), "{e}");
    ca.enrol_host("h1", &["10.77.0.11".parse().unwrap()], true).unwrap();

    // Mutual TLS in memory: the host serves with its certificate and asks for the broker's.
    let (ca_pem, cert, key) = ensure_client(d.path()).unwrap();
    assert_eq!(mode(&key), 0o600);
    let server =
        proto::tls::mtls_server_config(&dir.join("host.pem"), &dir.join("host.key"), &files.ca_cert()).unwrap();
    let client = proto::tls::mtls_client_config(&ca_pem, &cert, &key).unwrap();
    let name = proto::tls::server_name("10.77.0.11".parse().unwrap());
    proto::tls::handshake_in_memory(client, server.clone(), &name).unwrap();
    // Kept while it fits.
    let first = std::fs::read(&cert).unwrap();
    ensure_client(d.path()).unwrap();
    assert_eq!(std::fs::read(&cert).unwrap(), first);
    // Without a client certificate the host refuses, and another host's certificate is no
    // client certificate.
    let anonymous = proto::tls::client_config(&files.ca_cert()).unwrap();
    assert!(proto::tls::handshake_in_memory(anonymous, server.clone(), &name).is_err());
    let other = ca.enrol_host("h2", &[], false).unwrap();
    let as_host =
        proto::tls::mtls_client_config(&files.ca_cert(), &other.join("host.pem"), &other.join("host.key")).unwrap();
    let e = proto::tls::handshake_in_memory(as_host, server.clone(), &name).unwrap_err();
    assert!(format!("{e:?}").contains("Purpose") || format!("{e:?}").contains("Usage"), "{e:?}");
    // A new CA: the old client certificate is replaced by one of the new CA.
    init(d.path(), true).unwrap();
    let (_, cert, _) = ensure_client(d.path()).unwrap();
    assert_ne!(std::fs::read(&cert).unwrap(), first);
}
