//! Entry points of the proxy's fuzz targets (`proxy_rfb`, `proxy_handshake` in
//! bootserver/fuzz). Whatever a viewer or a VM sends, the proxy must answer with an error or a
//! message boundary, never a panic, a hang or an allocation its input does not justify.

use std::sync::OnceLock;
use std::time::Duration;

use super::backend::{self, Backend, Stream, VncAddr};
use super::recode::{self, ZStreams};
use super::rfb::{self, PixelFormat, ServerFramer, ServerItem};
use super::{session, vencrypt, Proxy, ProxyOptions, ViewerTls};
use proto::tls::rustls;

/// The viewer's pixel format, picked by one input byte: the framing lengths depend on it.
fn format(sel: u8) -> PixelFormat {
    let pf = PixelFormat::rgb888();
    match sel % 4 {
        0 => pf,
        1 => PixelFormat { depth: 32, ..pf },
        2 => PixelFormat { bits_per_pixel: 16, depth: 16, red_max: 31, green_max: 63, blue_max: 31, ..pf },
        _ => PixelFormat { bits_per_pixel: 8, depth: 8, true_colour: false, ..pf },
    }
}

/// Feeds `stream` to `next` `chunk` bytes at a time, the way the relay buffers a socket: `next`
/// frames one item at the start of what is buffered (`None`: needs more bytes, `Err`: the
/// stream is refused). Returns the items and their lengths up to the first error.
fn chunked<T: std::fmt::Debug>(
    stream: &[u8],
    chunk: usize,
    mut next: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ()>,
) -> Vec<(T, usize)> {
    let mut items = Vec::new();
    let mut buf = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let mut at = 0;
        while let Some((item, len)) = match next(&buf[at..]) {
            Ok(framed) => framed,
            Err(()) => return items,
        } {
            assert!(len > 0 && at + len <= buf.len(), "{item:?}: length {len} past the buffer");
            items.push((item, len));
            at += len;
        }
        buf.drain(..at);
    }
    items
}

/// The VM's stream through the framer; ZRLE and Zlib rectangles go through the re-compression,
/// and what it emits must frame again as one whole rectangle.
fn frame_vm(stream: &[u8], pf: &PixelFormat, chunk: usize) -> Vec<(ServerItem, usize)> {
    let mut framer = ServerFramer::default();
    let mut z = ZStreams::default();
    chunked(stream, chunk, |b| {
        let framed = framer.next(b, pf).map_err(drop)?;
        if let Some((ServerItem::Rect { encoding, .. }, len)) = framed {
            if recode::recoded(encoding) {
                let mut out = Vec::new();
                z.recode(&b[..len], &mut out).map_err(drop)?;
                let mut again = ServerFramer::default();
                again.next(&[0, 0, 0, 1], pf).expect("an update header frames");
                let reframed = again.next(&out, pf).expect("recoded rectangle frames");
                assert_eq!(reframed.map(|(_, n)| n), Some(out.len()), "recoded rectangle is whole");
            }
        }
        Ok(framed)
    })
}

/// The viewer's stream through the client message parser.
fn frame_viewer(stream: &[u8], chunk: usize) -> Vec<(rfb::ClientMsg, usize)> {
    chunked(stream, chunk, |b| rfb::parse_client(b).map_err(drop))
}

/// `data[0]` picks the pixel format and the chunk size; the rest is read both as a VM's
/// stream after ServerInit and as a viewer's stream after ClientInit. Cutting the stream into
/// chunks must not change where messages end: an incomplete message leaves the framer as it was.
#[doc(hidden)]
pub fn rfb_stream(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let pf = format(sel);
    let chunk = 1 + (sel >> 2) as usize * 7;
    assert_eq!(frame_vm(rest, &pf, rest.len()), frame_vm(rest, &pf, chunk), "VM stream framed differently in chunks");
    assert_eq!(frame_viewer(rest, rest.len()), frame_viewer(rest, chunk), "viewer stream framed differently in chunks");
    // Padding and flag bytes are normalised, so the round trip is checked from the parsed side.
    if let Ok(Some((init, _))) = rfb::ServerInit::parse(rest) {
        let again = init.to_bytes();
        assert_eq!(rfb::ServerInit::parse(&again), Ok(Some((init, again.len()))), "ServerInit round trip");
    }
    if let Some(v) = rest.first_chunk::<12>() {
        let _ = rfb::parse_version(v);
    }
}

/// What a peer sends, as a stream: reads come from the input, writes go nowhere.
fn scripted(input: &[u8]) -> Stream {
    Box::new(tokio::io::join(std::io::Cursor::new(input.to_vec()), tokio::io::sink()))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime")
    })
}

/// A server certificate for the VeNCrypt side, made once: its TLS handshake with fuzz bytes
/// fails early, but the negotiation before it runs for real.
fn viewer_tls() -> ViewerTls {
    static TLS: OnceLock<ViewerTls> = OnceLock::new();
    TLS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .and_then(|p| p.self_signed(&key))
            .expect("a self-signed certificate");
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(proto::tls::provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert.der().clone()], der.into()))
            .expect("a server config");
        ViewerTls(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    })
    .clone()
}

/// Both handshakes from the input: the proxy as the server a viewer connects to, and as the
/// client of a VM (with a VNC password when `data[0]` is odd). `data[0] >> 1` picks what the
/// proxy offers: VeNCrypt, VNC authentication, both, or neither. The challenge is random and
/// the TLS handshake cannot complete from fixed bytes, so a viewer never gets in; the VM side
/// runs through to ServerInit. The VeNCrypt messages that follow TLS go through their parser.
#[doc(hidden)]
pub fn rfb_handshake(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let opts = ProxyOptions {
        auth_fail_delay: Duration::ZERO,
        tls: (sel & 2 != 0).then(viewer_tls),
        legacy_vnc_auth: sel & 4 != 0,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(opts);
    let vm = Backend { addr: VncAddr::Tcp("vm.invalid:5900".into()), password: (sel & 1 == 1).then(|| "secret".into()) };
    let token = proxy.open_session("fuzz", vm.clone());
    runtime().block_on(async {
        assert!(session::handshake(&proxy, scripted(rest)).await.is_err(), "a viewer authenticated without the token");
        if let Ok((_, init)) = backend::handshake(&vm, scripted(rest)).await {
            assert!(init.name.len() <= 4096);
        }
    });
    vencrypt_messages(rest);
    // What a parsed password opens is the token's session only.
    if let Ok(Some((password, _))) = vencrypt::parse_plain(rest) {
        assert_eq!(proxy.authenticate_token(&password).is_some(), password == token);
    }
}

/// The VeNCrypt messages a viewer sends, parsed from the input: every answer is bounded, and a
/// Plain message round-trips.
fn vencrypt_messages(data: &[u8]) {
    if let Some(v) = data.first_chunk::<2>() {
        let _ = vencrypt::version_reply(*v);
    }
    if let Some(p) = data.first_chunk::<4>() {
        let _ = vencrypt::subtype_reply(*p);
    }
    match vencrypt::parse_plain(data) {
        Ok(Some((password, len))) => {
            assert!(len <= data.len() && len <= 8 + 2 * vencrypt::MAX_CREDENTIAL as usize);
            let (user, _) = vencrypt::plain_lengths(*data.first_chunk::<8>().expect("parsed")).expect("parsed");
            let again = vencrypt::plain_message(&"u".repeat(user), &password);
            assert_eq!(vencrypt::parse_plain(&again), Ok(Some((password, len))), "Plain round trip");
        }
        Ok(None) => assert!(data.len() < 8 + 2 * vencrypt::MAX_CREDENTIAL as usize),
        Err(_) => {}
    }
}
