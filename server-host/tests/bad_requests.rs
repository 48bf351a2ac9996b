//! Bad requests get a 4xx with a reason, and a request that fails half-way leaves nothing.
//! No guest boots here: QEMU is replaced by a command that fails, to exercise the cleanup.

mod common;

use common::*;

fn leftovers(h: &Host) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["vms", "users"] {
        if let Ok(rd) = std::fs::read_dir(h.state().join(d)) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}

#[test]
fn bad_requests_get_reasons_and_leave_nothing() {
    // "false" stands in for QEMU so that creation fails after the disks were made.
    let h = Host::start("accel = \"tcg\"\nqemu = \"false\"\ndata_disk_mib = 16");

    // Only the broker's certificate opens the API: no client certificate, a client
    // certificate of another CA, and the host's own (server) certificate get no HTTP answer.
    let ca = ["--cacert".into(), h.pki.ca.clone().into_os_string()];
    assert_eq!(h.call_with("GET", "/host", None, &ca).0, 0);
    let other = testkit::host_pki(&bootserver_bin(), &h.dir.path().join("other-ca"), "local", &["127.0.0.1"]).unwrap();
    let mut foreign = ca.to_vec();
    foreign.extend(other.curl_args().into_iter().skip(2));
    assert_eq!(h.call_with("GET", "/vms", None, &foreign).0, 0);
    let host_cert = ["--cert".into(), h.pki.tls_dir.join("host.pem").into(), "--key".into(), h.pki.tls_dir.join("host.key").into()];
    assert_eq!(h.call_with("GET", "/vms", None, &[ca.to_vec(), host_cert.to_vec()].concat()).0, 0);
    assert!(h.log().contains("TLS handshake with 127.0.0.1"), "refusals are logged");
    assert_eq!(h.get("/host").0, 200);

    let cases: &[(&str, u16, &str)] = &[
        (r#"{"name":"a","template":"nope","memory_mib":128,"user":"u"}"#, 404, "unknown template"),
        (r#"{"name":"a","template":"desktop","memory_mib":99999999,"user":"u"}"#, 422, "beyond what this host"),
        (r#"{"name":"a","template":"desktop","memory_mib":128,"user":"u""#, 400, "bad request body"),
        (r#"{"name":"a","template":"desktop","memory_mib":"lots","user":"u"}"#, 400, "memory_mib"),
        (r#"{"name":"A/B","template":"desktop","memory_mib":128,"user":"u"}"#, 400, "not valid"),
        (r#"{"name":"a","template":"desktop","memory_mib":128,"user":"u","vcpus":999}"#, 400, "vcpus"),
        (r#"{"name":"a","template":"desktop","memory_mib":128,"user":"u","colour":1}"#, 400, "colour"),
        (r#"{"name":"a","template":"desktop","memory_mib":128,"user":"u","vnc_password":"far-too-long"}"#, 400, "vnc_password"),
    ];
    for (body, code, reason) in cases {
        let (c, v) = h.json("POST", "/vms", Some(body));
        assert_eq!(c, *code, "{body}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(reason), "{body}: {v}");
    }
    assert_eq!(h.json("GET", "/vms/none", None).0, 404);
    assert_eq!(h.json("POST", "/vms/none/stop", Some("{}")).0, 404);
    assert_eq!(h.json("POST", "/vms/none/balloon", Some(r#"{"memory_mib":64}"#)).0, 404);
    assert_eq!(h.json("GET", "/users/Bad%20Name", None).0, 400);
    assert_eq!(h.json("POST", "/users/nobody/backup", None).0, 409);
    assert_eq!(h.json("POST", "/users/nobody/restore", Some(r#"{"backup":7}"#)).0, 404);
    assert!(leftovers(&h).is_empty(), "{:?}", leftovers(&h));

    // Fails after the overlay and data disk were made: both persistent and one-time users.
    for persistent in [true, false] {
        let body = format!(r#"{{"name":"a","template":"desktop","memory_mib":128,"user":"u","persistent":{persistent}}}"#);
        let (c, v) = h.json("POST", "/vms", Some(&body));
        assert_eq!(c, 500, "{v}");
        assert!(v["error"].as_str().unwrap().contains("failed to start"), "{v}");
        assert!(leftovers(&h).is_empty(), "half-created: {:?}", leftovers(&h));
    }
    let (_, vms) = h.json("GET", "/vms", None);
    assert_eq!(vms, serde_json::json!([]));
}
