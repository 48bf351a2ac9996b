//! Codec and session tests on byte vectors.

use super::*;

fn hello() -> Hello {
    Hello {
        version: PROTOCOL,
        mac: "52:54:00:12:34:56".parse().unwrap(),
        ipv4: Ipv4Addr::new(10, 0, 0, 101),
        cpu_model: "QEMU Virtual CPU version 2.5+".into(),
        cpu_count: 2,
        ram_bytes: 512 << 20,
        display_modes: vec![DisplayMode { width: 1024, height: 768, refresh_mhz: Some(60_000) }],
        agent_version: "0.1.0".into(),
        boot_ms: 8400,
        boot_phases: vec![
            BootPhase { name: "kernel".into(), ms: 1700 },
            BootPhase { name: "dhcp".into(), ms: 300 },
        ],
        resume_token: None,
    }
}

fn assignment() -> Assignment {
    Assignment {
        vnc: "10.0.0.1:5900".parse().unwrap(),
        session_token: "t0k".into(),
        password: Some(PasswordSource::SessionToken),
    }
}

fn broker_messages() -> Vec<BrokerMessage> {
    vec![
        BrokerMessage::Welcome(Welcome {
            version: PROTOCOL,
            resume_token: "r1".into(),
            ping_interval_ms: 5000,
        }),
        BrokerMessage::Refused { reason: "no".into() },
        BrokerMessage::Assignment(assignment()),
        BrokerMessage::Command(Command::ShowMessage { text: "héllo\n".into() }),
        BrokerMessage::Command(Command::Reconnect),
        BrokerMessage::Command(Command::Reboot),
        BrokerMessage::Command(Command::PowerOff),
        BrokerMessage::Ping { seq: u64::MAX },
        BrokerMessage::LoginPrompt(prompt(Some("Wrong user name or password"))),
        BrokerMessage::Approval { pc: "lab-03".into(), code: "K7Q-2MX".into() },
        BrokerMessage::LoggedIn(LoggedIn { user: "alice".into(), logout_keys: "Ctrl+Alt+End".into() }),
    ]
}

fn prompt(message: Option<&str>) -> LoginPrompt {
    LoginPrompt {
        pc: "lab-03".into(),
        enrolment: Enrolment::Enrolled,
        message: message.map(str::to_string),
        user: message.map(|_| "alice".to_string()),
        proxy: message.is_none().then(|| "10.0.0.1:5900".parse().unwrap()),
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn wire_format_is_length_prefixed_json() {
    let bytes = encode(&BrokerMessage::Ping { seq: 7 }).unwrap();
    assert_eq!(bytes, frame(br#"{"type":"ping","seq":7}"#));
    let bytes = encode(&AgentMessage::Hello(hello())).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes[4..]).unwrap();
    assert_eq!(json["type"], "hello");
    assert_eq!(json["mac"], "52:54:00:12:34:56");
    assert_eq!(json["version"]["major"], 1);
    assert!(json.get("resume_token").is_none(), "absent options are left out");
}

#[test]
fn every_message_round_trips() {
    let mut d = Decoder::<BrokerMessage>::new();
    for m in broker_messages() {
        assert_eq!(d.feed(&encode(&m).unwrap()), vec![Ok(m)]);
    }
    let mut d = Decoder::<AgentMessage>::new();
    let mut h = hello();
    h.resume_token = Some("r1".into());
    let msgs = vec![
        AgentMessage::Hello(h),
        AgentMessage::Status(Status {
            viewer: ViewerState::Exited,
            error: Some("sdl: no display".into()),
        }),
        AgentMessage::Pong { seq: 3 },
        AgentMessage::Login { user: "alice".into(), password: Password::new("s3cret pw".into()) },
        AgentMessage::Logout,
    ];
    for m in msgs {
        assert_eq!(d.feed(&encode(&m).unwrap()), vec![Ok(m)]);
    }
    assert_eq!(d.finish(), Ok(()));
}

#[test]
fn split_at_every_offset_gives_the_same_messages() {
    let msgs = broker_messages();
    let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
    for cut in 0..=stream.len() {
        let mut d = Decoder::<BrokerMessage>::new();
        let mut got = d.feed(&stream[..cut]);
        got.extend(d.feed(&stream[cut..]));
        let got: Vec<BrokerMessage> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, msgs, "cut at {cut}");
        assert_eq!(d.finish(), Ok(()));
    }
    // And one byte at a time.
    let mut d = Decoder::<BrokerMessage>::new();
    let got: Vec<_> = stream.iter().flat_map(|b| d.feed(std::slice::from_ref(b))).collect();
    assert_eq!(got.len(), msgs.len());
}

#[test]
fn oversized_length_is_refused_before_buffering() {
    let mut d = Decoder::<AgentMessage>::new();
    let mut bytes = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    bytes.extend(vec![b'x'; 1000]);
    let got = d.feed(&bytes);
    assert_eq!(
        got,
        vec![Err(DecodeError::Oversized { len: MAX_FRAME as u64 + 1, max: MAX_FRAME })]
    );
    assert!(got[0].as_ref().unwrap_err().is_fatal());
    assert_eq!(d.buffered(), 0);
    assert_eq!(
        d.feed(&encode(&AgentMessage::Pong { seq: 1 }).unwrap()),
        vec![Err(DecodeError::Stopped)]
    );
    // Exactly the limit is fine.
    let mut d = Decoder::<AgentMessage>::new();
    let big = format!(r#"{{"type":"pong","seq":1,"pad":"{}"}}"#, "a".repeat(MAX_FRAME - 32));
    assert_eq!(big.len(), MAX_FRAME);
    assert_eq!(d.feed(&frame(big.as_bytes())), vec![Ok(AgentMessage::Pong { seq: 1 })]);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    // An HTTP request: "GET " read as a length is far above the limit.
    let mut d = Decoder::<AgentMessage>::new();
    let got = d.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(got.as_slice(), [Err(DecodeError::Oversized { .. })]), "{got:?}");
    // Pseudo-random bytes in pseudo-random chunks: whatever comes out, nothing panics and the
    // buffer stays bounded.
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200 {
        let mut d = Decoder::<BrokerMessage>::new();
        let len = (next() % 300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = 1 + (next() as usize % rest.len());
            let _ = d.feed(&rest[..n]);
            assert!(d.buffered() <= MAX_FRAME);
            rest = &rest[n..];
        }
        let _ = d.finish();
    }
}

#[test]
fn truncated_stream_is_reported_at_the_end() {
    let bytes = encode(&AgentMessage::Pong { seq: 9 }).unwrap();
    let mut d = Decoder::<AgentMessage>::new();
    assert!(d.feed(&bytes[..2]).is_empty());
    assert_eq!(d.finish(), Err(DecodeError::Truncated { have: 2, need: 4 }));
    let mut d = Decoder::<AgentMessage>::new();
    assert!(d.feed(&bytes[..bytes.len() - 1]).is_empty());
    let need = bytes.len();
    assert_eq!(d.finish(), Err(DecodeError::Truncated { have: need - 1, need }));
}

#[test]
fn bad_frames_are_skipped_and_the_stream_goes_on() {
    let good = encode(&BrokerMessage::Ping { seq: 1 }).unwrap();
    type Expect = fn(&DecodeError) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (frame(&[0xff, 0xfe, b'{']), |e| matches!(e, DecodeError::Utf8 { at: 0 })),
        (frame(b"{\"type\":"), |e| matches!(e, DecodeError::Json { .. })),
        (frame(b"[1,2]"), |e| *e == DecodeError::NoType),
        (frame(b"{\"seq\":1}"), |e| *e == DecodeError::NoType),
        (frame(b"{\"type\":7}"), |e| *e == DecodeError::NoType),
        (frame(b"{\"type\":\"hello\"}"), |e| matches!(e, DecodeError::UnknownType { .. })),
        (frame(b"{\"type\":\"ping\"}"), |e| matches!(e, DecodeError::Malformed { .. })),
        (frame(b"{\"type\":\"ping\",\"seq\":-1}"), |e| matches!(e, DecodeError::Malformed { .. })),
        (frame(b""), |e| *e == DecodeError::Empty),
    ];
    for (bad, is_expected) in cases {
        let mut d = Decoder::<BrokerMessage>::new();
        let mut stream = bad.clone();
        stream.extend(&good);
        let got = d.feed(&stream);
        assert_eq!(got.len(), 2, "{got:?}");
        let e = got[0].as_ref().unwrap_err();
        assert!(is_expected(e) && !e.is_fatal(), "{:?}: {e:?}", String::from_utf8_lossy(&bad));
        assert_eq!(got[1], Ok(BrokerMessage::Ping { seq: 1 }));
    }
}

#[test]
fn unknown_type_says_which() {
    let mut d = Decoder::<BrokerMessage>::new();
    let got = d.feed(&frame(br#"{"type":"teleport","to":"mars"}"#));
    let msg = got[0].as_ref().unwrap_err().to_string();
    assert!(
        msg.contains("\"teleport\"") && msg.contains("broker") && msg.contains("ping"),
        "{msg}"
    );
}

#[test]
fn unknown_fields_and_states_are_ignored() {
    let mut json = serde_json::to_value(AgentMessage::Hello(hello())).unwrap();
    json["gpu"] = "virtio".into();
    json["display_modes"][0]["hdr"] = true.into();
    let mut d = Decoder::<AgentMessage>::new();
    let got = d.feed(&frame(json.to_string().as_bytes()));
    assert_eq!(got, vec![Ok(AgentMessage::Hello(hello()))]);
    let got = d.feed(&frame(br#"{"type":"status","viewer":"hibernating"}"#));
    assert_eq!(
        got,
        vec![Ok(AgentMessage::Status(Status { viewer: ViewerState::Unknown, error: None }))]
    );
}

#[test]
fn too_large_messages_are_not_sent() {
    let mut h = hello();
    h.cpu_model = "x".repeat(MAX_FRAME);
    let e = encode(&AgentMessage::Hello(h)).unwrap_err();
    assert!(matches!(e, EncodeError::TooLarge { ty: "hello", .. }), "{e}");
}

#[test]
fn mac_addresses_parse_strictly() {
    assert_eq!("52-54-00-AB-cd-ef".parse::<MacAddr>().unwrap().to_string(), "52:54:00:ab:cd:ef");
    for bad in
        ["", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:00", "5:54:00:ab:cd:ef", "zz:54:00:ab:cd:ef"]
    {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
}

#[test]
fn versions_negotiate_on_the_major() {
    let v = |major, minor| ProtocolVersion { major, minor };
    assert_eq!(negotiate(v(1, 3), v(1, 1)), Ok(v(1, 1)));
    assert_eq!(negotiate(v(1, 0), v(1, 4)), Ok(v(1, 0)));
    let e = negotiate(v(1, 0), v(2, 0)).unwrap_err();
    assert!(e.contains("2.0") && e.contains("1.x"), "{e}");
}

#[test]
fn a_password_is_never_printed() {
    let m = AgentMessage::Login { user: "alice".into(), password: Password::new("hunter22".into()) };
    let shown = format!("{m:?} {:#?}", m);
    assert!(!shown.contains("hunter22"), "{shown}");
    assert!(shown.contains("alice"));
    // On the wire (inside TLS) it is the plain string the broker checks.
    let bytes = encode(&m).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes[4..]).unwrap();
    assert_eq!(json, serde_json::json!({"type": "login", "user": "alice", "password": "hunter22"}));
}

#[test]
fn an_unknown_enrolment_state_is_kept_readable() {
    let raw = br#"{"type":"login_prompt","pc":"p","enrolment":"frozen"}"#;
    let got = Decoder::<BrokerMessage>::new().feed(&frame(raw));
    match &got[..] {
        [Ok(BrokerMessage::LoginPrompt(p))] => assert_eq!(p.enrolment, Enrolment::Unknown),
        other => panic!("{other:?}"),
    }
}

mod session {
    use super::*;

    const PING: u64 = 1000;

    fn welcome() -> BrokerMessage {
        BrokerMessage::Welcome(Welcome {
            version: PROTOCOL,
            resume_token: "r1".into(),
            ping_interval_ms: PING,
        })
    }

    fn welcomed(seed: u64) -> Session {
        let mut s = Session::new(SessionConfig::default(), hello(), seed);
        assert_eq!(s.handle(0, Input::Start), vec![Output::Connect]);
        assert_eq!(
            s.handle(10, Input::Connected),
            vec![Output::Send(AgentMessage::Hello(hello()))]
        );
        assert_eq!(s.handle(20, Input::Received(welcome())), vec![]);
        assert_eq!(s.state(), SessionState::Welcomed);
        s
    }

    fn retry_in(out: &[Output]) -> u64 {
        match out.last() {
            Some(Output::Waiting { retry_in_ms, .. }) => *retry_in_ms,
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    #[test]
    fn hello_welcome_assignment_ping() {
        let mut s = welcomed(1);
        assert_eq!(s.version(), Some(PROTOCOL));
        assert_eq!(s.deadline(), Some(20 + 3 * PING));
        let a = BrokerMessage::Assignment(assignment());
        assert_eq!(s.handle(30, Input::Received(a.clone())), vec![Output::Assigned(assignment())]);
        assert_eq!(s.state(), SessionState::Assigned);
        assert_eq!(s.handle(40, Input::Received(a)), vec![], "same assignment: no restart");
        let out = s.handle(900, Input::Received(BrokerMessage::Ping { seq: 5 }));
        assert_eq!(out, vec![Output::Send(AgentMessage::Pong { seq: 5 })]);
        assert_eq!(s.deadline(), Some(900 + 3 * PING));
        assert_eq!(s.handle(1000, Input::Tick), vec![], "not yet due");
        let cmd = Command::ShowMessage { text: "hi".into() };
        let out = s.handle(1100, Input::Received(BrokerMessage::Command(cmd.clone())));
        assert_eq!(out, vec![Output::Run(cmd)]);
    }

    #[test]
    fn missed_pings_reconnect_with_the_resume_token() {
        let mut s = welcomed(1);
        let out = s.handle(20 + 3 * PING, Input::Tick);
        assert!(
            matches!(&out[0], Output::Close { reason } if reason.contains("no ping")),
            "{out:?}"
        );
        let delay = retry_in(&out);
        assert!((250..=500).contains(&delay), "{delay}");
        let t = 20 + 3 * PING + delay;
        assert_eq!(s.handle(t - 1, Input::Tick), vec![]);
        assert_eq!(s.handle(t, Input::Tick), vec![Output::Connect]);
        let mut h = hello();
        h.resume_token = Some("r1".into());
        assert_eq!(s.handle(t + 5, Input::Connected), vec![Output::Send(AgentMessage::Hello(h))]);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets_on_welcome() {
        let cfg = SessionConfig::default();
        let mut s = Session::new(cfg, hello(), 42);
        let mut now = 0;
        s.handle(now, Input::Start);
        let mut delays = Vec::new();
        for _ in 0..12 {
            let out = s.handle(now, Input::ConnectFailed { reason: "refused".into() });
            let d = retry_in(&out);
            delays.push(d);
            now += d;
            assert_eq!(s.handle(now, Input::Tick), vec![Output::Connect]);
        }
        for (i, d) in delays.iter().enumerate() {
            let base = (cfg.backoff_initial_ms << i).min(cfg.backoff_max_ms);
            assert!(base / 2 <= *d && *d <= base, "attempt {i}: {d} not in [{}, {base}]", base / 2);
        }
        assert!(delays.iter().all(|d| *d <= cfg.backoff_max_ms));
        // Different PCs spread out.
        let mut other = Session::new(cfg, hello(), 43);
        other.handle(0, Input::Start);
        let mut theirs = Vec::new();
        for _ in 0..5 {
            let d = retry_in(&other.handle(0, Input::ConnectFailed { reason: "x".into() }));
            theirs.push(d);
            other.handle(d, Input::Tick);
        }
        assert_ne!(theirs, delays[..5]);
        // A welcome resets the backoff.
        s.handle(now, Input::Connected);
        s.handle(now, Input::Received(welcome()));
        let out = s.handle(now, Input::Closed { reason: "reset by peer".into() });
        assert!(retry_in(&out) <= cfg.backoff_initial_ms);
    }

    #[test]
    fn refusal_is_shown_and_retried() {
        let mut s = Session::new(SessionConfig::default(), hello(), 7);
        s.handle(0, Input::Start);
        s.handle(0, Input::Connected);
        let out = s.handle(
            5,
            Input::Received(BrokerMessage::Refused { reason: "protocol 1.0 too old".into() }),
        );
        assert_eq!(out[0], Output::Refused { reason: "protocol 1.0 too old".into() });
        assert!(matches!(out[1], Output::Close { .. }));
        assert!(matches!(s.state(), SessionState::Backoff { .. }));
    }

    #[test]
    fn out_of_turn_messages_and_fatal_errors_close() {
        let mut s = Session::new(SessionConfig::default(), hello(), 7);
        s.handle(0, Input::Start);
        s.handle(0, Input::Connected);
        let out = s.handle(1, Input::Received(BrokerMessage::Assignment(assignment())));
        assert!(
            matches!(&out[0], Output::Close { reason } if reason.contains("assignment")),
            "{out:?}"
        );

        let mut s = welcomed(7);
        let skippable =
            DecodeError::UnknownType { sender: "broker", ty: "x".into(), known: String::new() };
        assert_eq!(s.handle(30, Input::DecodeError(skippable)), vec![]);
        assert_eq!(s.state(), SessionState::Welcomed);
        let out = s.handle(
            31,
            Input::DecodeError(DecodeError::Oversized { len: 1 << 30, max: MAX_FRAME }),
        );
        assert!(matches!(&out[0], Output::Close { .. }));
        assert!(matches!(s.state(), SessionState::Backoff { .. }));
        // A late close of the connection already given up changes nothing.
        assert_eq!(s.handle(32, Input::Closed { reason: "eof".into() }), vec![]);
    }

    #[test]
    fn hello_and_connect_timeouts() {
        let cfg = SessionConfig::default();
        let mut s = Session::new(cfg, hello(), 7);
        s.handle(0, Input::Start);
        let out = s.handle(cfg.connect_timeout_ms, Input::Tick);
        assert!(
            matches!(&out[0], Output::Close { .. })
                && matches!(s.state(), SessionState::Backoff { .. })
        );
        let mut s = Session::new(cfg, hello(), 7);
        s.handle(0, Input::Start);
        s.handle(1, Input::Connected);
        let out = s.handle(1 + cfg.hello_timeout_ms, Input::Tick);
        assert!(
            matches!(&out[0], Output::Close { reason } if reason.contains("welcome")),
            "{out:?}"
        );
    }

    #[test]
    fn reconnect_command_connects_again_at_once() {
        let mut s = welcomed(7);
        let out = s.handle(50, Input::Received(BrokerMessage::Command(Command::Reconnect)));
        assert!(matches!(&out[..], [Output::Close { .. }, Output::Connect]), "{out:?}");
        assert_eq!(s.state(), SessionState::Connecting);
    }

    #[test]
    fn status_waits_for_the_welcome() {
        let mut s = Session::new(SessionConfig::default(), hello(), 7);
        let st = Status { viewer: ViewerState::Idle, error: Some("no desktop yet".into()) };
        assert_eq!(s.handle(0, Input::Status(st.clone())), vec![]);
        s.handle(0, Input::Start);
        s.handle(1, Input::Connected);
        let out = s.handle(2, Input::Received(welcome()));
        assert_eq!(out, vec![Output::Send(AgentMessage::Status(st.clone()))]);
        assert_eq!(
            s.handle(3, Input::Status(st.clone())),
            vec![Output::Send(AgentMessage::Status(st))]
        );
    }

    #[test]
    fn login_prompt_logged_in_and_logout() {
        let mut s = welcomed(3);
        let out = s.handle(30, Input::Received(BrokerMessage::LoginPrompt(prompt(None))));
        assert_eq!(out, vec![Output::Prompt(prompt(None))]);
        let pw = Password::new("pw123456".into());
        let out = s.handle(40, Input::Login { user: "alice".into(), password: pw.clone() });
        assert_eq!(out, vec![Output::Send(AgentMessage::Login { user: "alice".into(), password: pw })]);
        let li = LoggedIn { user: "alice".into(), logout_keys: "Ctrl+Alt+End".into() };
        let out = s.handle(50, Input::Received(BrokerMessage::LoggedIn(li.clone())));
        assert_eq!(out, vec![Output::LoggedIn(li)]);
        let a = BrokerMessage::Assignment(assignment());
        assert_eq!(s.handle(60, Input::Received(a.clone())), vec![Output::Assigned(assignment())]);
        assert_eq!(s.handle(70, Input::Logout), vec![Output::Send(AgentMessage::Logout)]);
        // Back at the login screen, then the same desktop again: the viewer must start anew.
        let out = s.handle(80, Input::Received(BrokerMessage::LoginPrompt(prompt(Some("bye")))));
        assert_eq!(out, vec![Output::Prompt(prompt(Some("bye")))]);
        assert_eq!(s.state(), SessionState::Welcomed);
        assert_eq!(s.handle(90, Input::Received(a)), vec![Output::Assigned(assignment())]);
    }

    #[test]
    fn a_login_before_the_welcome_is_dropped_not_sent() {
        let mut s = Session::new(SessionConfig::default(), hello(), 9);
        s.handle(0, Input::Start);
        let out = s.handle(1, Input::Login { user: "a".into(), password: Password::new("x".into()) });
        assert_eq!(out, vec![]);
        s.handle(2, Input::Connected);
        assert_eq!(s.handle(3, Input::Logout), vec![]);
        let out = s.handle(4, Input::Received(BrokerMessage::Approval { pc: "p".into(), code: "c".into() }));
        assert!(matches!(&out[..], [Output::Close { reason }, Output::Waiting { .. }] if reason.contains("approval")), "{out:?}");
    }
}
