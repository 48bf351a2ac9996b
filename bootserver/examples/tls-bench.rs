//! Benchmark driver for scripts/bench/tls: what TLS costs on the two links between a booted PC
//! and its desktop, each against the same link in clear, in one run on loopback:
//!
//! - **agent**: connect, hello and the broker's Welcome from a real `bootserver serve`, over
//!   TLS checked against the CA that `serve` made, against plain TCP (`--agent-plain-tcp`).
//! - **viewer**: connect, the proxy's handshake and the first whole frame of a real QEMU VM
//!   (held at reset: its 640x480 VGA screen), with VeNCrypt X509Plain against VNC
//!   authentication (`legacy_vnc_auth`), through the broker's own proxy.
//! - **relay**: the proxy's CPU time per MiB it relays, with and without TLS to the viewer: the
//!   viewer asks for whole Raw frames back to back. The proxy runs on a runtime of its own on one
//!   thread, whose CPU time the kernel counts (`/proc/self/task/TID/schedstat`).
//!
//! The two links are the whole of what TLS adds between the agent's announce and the desktop
//! on the screen; rounds alternate TLS and clear so that both see the same machine load.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bootserver::broker::proxy::backend::{self, Backend, Stream, VncAddr};
use bootserver::broker::proxy::rfb::{self, PixelFormat, ServerFramer, ServerInit, ServerItem};
use bootserver::broker::proxy::{vencrypt, Proxy, ProxyOptions, ViewerTls};
use bootserver::net::limits::{ConnLimiter, Limits};
use clap::Parser;
use proto::agent::{encode, AgentMessage, BrokerMessage, Decoder};
use proto::tls::rustls::{ClientConfig, ClientConnection, StreamOwned};
use testkit::KillOnDrop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "What TLS adds to time to desktop and to the proxy's CPU (see scripts/bench/tls)")]
struct Cli {
    /// The bootserver binary to run for the agent link.
    #[arg(long)]
    bootserver: PathBuf,
    /// Rounds of each link, TLS and clear alternating; medians are printed.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// MiB relayed by the proxy for each of TLS and clear.
    #[arg(long, default_value_t = 256)]
    relay_mib: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `bootserver serve` with only the broker, on loopback, taking TLS and plain agents.
struct Serve {
    _child: KillOnDrop,
    broker: SocketAddr,
    tls: Arc<ClientConfig>,
}

fn serve(bin: &Path, dir: &Path) -> anyhow::Result<Serve> {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot)?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(boot.join(f), b"unused")?;
    }
    let broker: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()).parse()?;
    let state = dir.join("state");
    let log = dir.join("serve.log");
    let child = KillOnDrop::spawn(
        Command::new(bin)
            .args(["serve", "--interface", "lo", "--address", "127.0.0.1", "--no-dhcp", "--no-tftp", "--no-http"])
            .arg("--broker")
            .arg(broker.to_string())
            // Both kinds of agent on one port, and hellos from loopback (no lease to bind to).
            .args(["--agent-plain-tcp", "--no-hello-binding", "--boot-dir"])
            .arg(&boot)
            .arg("--state-dir")
            .arg(&state)
            .env("BOOTSERVER_ADMIN", format!("127.0.0.1:{}", testkit::free_port()))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?),
    )?;
    let t0 = Instant::now();
    while TcpStream::connect(broker).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("bootserver serve did not listen on {broker}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tls = proto::tls::client_config(&state.join("ca/ca.pem")).context("the CA that serve made")?;
    Ok(Serve { _child: child, broker, tls })
}

/// Reads until the broker's first message.
fn first_answer(link: &mut impl Read) -> anyhow::Result<BrokerMessage> {
    let (mut dec, mut buf) = (Decoder::<BrokerMessage>::new(), [0u8; 4096]);
    loop {
        let n = link.read(&mut buf)?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        if let Some(m) = dec.feed(&buf[..n]).into_iter().next() {
            return Ok(m?);
        }
    }
}

/// Connect, hello, Welcome: what the agent does once it has its address.
fn announce(broker: SocketAddr, config: &Arc<ClientConfig>, tls: bool) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(broker)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let frame = encode(&AgentMessage::Hello(testkit::agent_hello("52:54:00:b0:00:01", "127.0.0.1")))?;
    let answer = if tls {
        let conn = ClientConnection::new(config.clone(), proto::tls::server_name(broker.ip()))?;
        let mut link = StreamOwned::new(conn, tcp);
        link.write_all(&frame)?;
        link.flush()?;
        first_answer(&mut link)?
    } else {
        let mut link = tcp;
        link.write_all(&frame)?;
        first_answer(&mut link)?
    };
    let took = t0.elapsed();
    match answer {
        BrokerMessage::Welcome(_) => Ok(took),
        other => bail!("the broker answered {other:?}"),
    }
}

/// QEMU held before its first instruction, with its VNC on a unix socket.
struct Vm {
    _qemu: KillOnDrop,
    vnc: PathBuf,
}

fn vm(dir: &Path) -> anyhow::Result<Vm> {
    let vnc = dir.join("vm.vnc");
    let qemu = KillOnDrop::spawn(
        Command::new("qemu-system-x86_64")
            .args(testkit::accel_args())
            .args(["-S", "-nodefaults", "-m", "64", "-display", "none", "-vga", "std", "-vnc"])
            .arg(format!("unix:{}", vnc.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )?;
    let t0 = Instant::now();
    while !vnc.exists() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("QEMU made no VNC socket");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Vm { _qemu: qemu, vnc })
}

/// The client half of VeNCrypt X509Plain as a stock viewer does it (RFB 3.8, security type 19,
/// VeNCrypt 0.2, subtype 262, TLS checked against the CA, Plain with the token), up to
/// ServerInit.
async fn vencrypt_connect(addr: SocketAddr, tls: Arc<ClientConfig>, token: &str) -> anyhow::Result<(Stream, ServerInit)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await?;
    s.write_all(b"RFB 003.008\n").await?;
    let n = s.read_u8().await? as usize;
    let mut types = vec![0u8; n];
    s.read_exact(&mut types).await?;
    if !types.contains(&vencrypt::SECURITY_TYPE) {
        bail!("the proxy offers {types:?}, no VeNCrypt");
    }
    s.write_u8(vencrypt::SECURITY_TYPE).await?;
    let mut v = [0u8; 2];
    s.read_exact(&mut v).await?;
    s.write_all(&[0, 2]).await?;
    let (ok, count) = (s.read_u8().await?, s.read_u8().await?);
    let mut subtypes = Vec::new();
    for _ in 0..count {
        subtypes.push(s.read_u32().await?);
    }
    if ok != 0 || !subtypes.contains(&vencrypt::X509_PLAIN) {
        bail!("VeNCrypt {v:?}: accepted {ok}, subtypes {subtypes:?}");
    }
    s.write_u32(vencrypt::X509_PLAIN).await?;
    if s.read_u8().await? != 1 {
        bail!("X509Plain refused");
    }
    let mut t = tokio_rustls::TlsConnector::from(tls).connect(proto::tls::server_name(addr.ip()), s).await?;
    t.write_all(&vencrypt::plain_message("bench", token)).await?;
    t.flush().await?;
    if t.read_u32().await? != 0 {
        bail!("the proxy refused the token");
    }
    t.write_all(&[1]).await?;
    t.flush().await?;
    let mut buf = Vec::new();
    loop {
        if let Some((init, _)) = ServerInit::parse(&buf)? {
            return Ok((Box::new(t), init));
        }
        if t.read_buf(&mut buf).await? == 0 {
            bail!("the proxy closed before ServerInit");
        }
    }
}

/// A viewer through the proxy that asks for whole Raw frames, one at a time.
struct Viewer {
    s: Stream,
    w: u16,
    h: u16,
    format: PixelFormat,
    framer: ServerFramer,
    buf: Vec<u8>,
}

impl Viewer {
    async fn open(proxy: SocketAddr, tls: Option<Arc<ClientConfig>>, token: &str) -> anyhow::Result<Viewer> {
        let (mut s, init) = match tls {
            Some(tls) => vencrypt_connect(proxy, tls, token).await?,
            None => backend::connect(&Backend { addr: VncAddr::Tcp(proxy.to_string()), password: Some(token.into()) }).await?,
        };
        s.write_all(&rfb::set_encodings(&[rfb::enc::RAW])).await?;
        Ok(Viewer { s, w: init.width, h: init.height, format: init.format, framer: ServerFramer::default(), buf: Vec::new() })
    }

    /// One whole frame; the bytes it took on the wire.
    async fn frame(&mut self) -> anyhow::Result<usize> {
        self.s.write_all(&rfb::update_request(false, self.w, self.h)).await?;
        self.s.flush().await?;
        let (mut in_update, mut bytes) = (false, 0);
        loop {
            let mut at = 0;
            while let Some((item, len)) = self.framer.next(&self.buf[at..], &self.format)? {
                at += len;
                in_update |= matches!(item, ServerItem::UpdateHeader { .. });
                if in_update && self.framer.at_boundary() {
                    self.buf.drain(..at);
                    return Ok(bytes + at);
                }
            }
            bytes += at;
            self.buf.drain(..at);
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("the proxy closed the connection");
            }
        }
    }
}

/// The nanoseconds the kernel has run thread `tid` of this process.
fn thread_cpu(tid: i32) -> anyhow::Result<Duration> {
    let path = format!("/proc/self/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let ns: u64 = text.split_whitespace().next().context("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// The proxy on a one-thread runtime of its own; its address and the thread's id.
fn start_proxy(proxy: Arc<Proxy>) -> anyhow::Result<(SocketAddr, i32)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("proxy".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            // SAFETY: gettid(2) has no preconditions.
            let tid = unsafe { libc::gettid() };
            tx.send((l.local_addr().expect("address"), tid)).expect("send");
            let limits = Limits::default().proxy;
            let _ = proxy.serve(l, ConnLimiter::unbounded("proxy", limits)).await;
        });
    })?;
    Ok(rx.recv()?)
}

/// The proxy thread's CPU milliseconds per MiB that reached the viewer. (Not a throughput:
/// QEMU's VNC server paces its answers by its refresh timer.)
async fn relay(v: &mut Viewer, mib: usize, tid: i32) -> anyhow::Result<f64> {
    let cpu0 = thread_cpu(tid)?;
    let mut bytes = 0usize;
    while bytes < mib << 20 {
        bytes += v.frame().await?;
    }
    let cpu = thread_cpu(tid)? - cpu0;
    let mib = bytes as f64 / (1 << 20) as f64;
    Ok(ms(cpu) / mib)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let cli = Cli::parse();
    let dir = tempfile::tempdir()?;

    // The boot server's certificate, made by the same CA code `serve` uses.
    let names = bootserver::ca::ServerNames { ips: vec!["127.0.0.1".parse()?], dns: vec![] };
    let ca_dir = dir.path().join("proxy-state");
    let (cert, key) = bootserver::ca::ensure_server(&ca_dir, &names)?;
    let viewer_tls = proto::tls::client_config(&bootserver::ca::CaFiles::new(&ca_dir).ca_cert())?;
    let vm = vm(dir.path())?;
    let proxy = Proxy::new(ProxyOptions {
        tls: Some(ViewerTls::from_files(&cert, &key)?),
        legacy_vnc_auth: true,
        ..Default::default()
    });
    let token = proxy.open_session("bench", Backend { addr: VncAddr::Unix(vm.vnc.clone()), password: None });
    let (proxy_addr, tid) = start_proxy(proxy.clone())?;
    let s = serve(&cli.bootserver, dir.path())?;

    eprintln!("tls-bench: {} rounds of each link, TLS and clear alternating", cli.rounds);
    let (mut agent, mut viewer) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    // One warm-up round of each, not counted: the first connections pay for page faults.
    for round in 0..=cli.rounds {
        for (i, tls) in [true, false].into_iter().enumerate() {
            let (broker, config) = (s.broker, s.tls.clone());
            let a = tokio::task::spawn_blocking(move || announce(broker, &config, tls)).await??;
            let t0 = Instant::now();
            let mut v = Viewer::open(proxy_addr, tls.then(|| viewer_tls.clone()), &token).await?;
            v.frame().await?;
            let first = t0.elapsed();
            if round > 0 {
                agent[i].push(a);
                viewer[i].push(first);
            }
        }
    }
    let [agent_tls, agent_plain] = agent.map(median);
    let [viewer_tls_t, viewer_plain] = viewer.map(median);

    eprintln!("tls-bench: relaying {} MiB of whole 640x480 Raw frames each way", cli.relay_mib);
    let mut v = Viewer::open(proxy_addr, Some(viewer_tls.clone()), &token).await?;
    let cpu_tls = relay(&mut v, cli.relay_mib, tid).await?;
    drop(v);
    let mut v = Viewer::open(proxy_addr, None, &token).await?;
    let cpu_plain = relay(&mut v, cli.relay_mib, tid).await?;
    drop(v);

    let (with, without) = (agent_tls + viewer_tls_t, agent_plain + viewer_plain);
    println!("link                          TLS        clear      ratio");
    println!("agent: connect+hello+Welcome  {:7.2} ms {:7.2} ms {:6.2}x", ms(agent_tls), ms(agent_plain), ms(agent_tls) / ms(agent_plain));
    println!(
        "viewer: connect to 1st frame  {:7.2} ms {:7.2} ms {:6.2}x",
        ms(viewer_tls_t),
        ms(viewer_plain),
        ms(viewer_tls_t) / ms(viewer_plain)
    );
    println!("both (announce to desktop)    {:7.2} ms {:7.2} ms {:6.2}x", ms(with), ms(without), ms(with) / ms(without));
    println!("TLS adds {:.2} ms to time to desktop (medians of {} rounds)", ms(with) - ms(without), cli.rounds);
    println!("proxy CPU per MiB relayed     {:7.2} ms {:7.2} ms {:6.2}x", cpu_tls, cpu_plain, cpu_tls / cpu_plain);
    Ok(())
}
