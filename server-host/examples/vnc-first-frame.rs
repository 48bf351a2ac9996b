//! Benchmark helper: connects to a VNC server (unix socket or TCP), retrying until it listens,
//! authenticates with a password and prints, in seconds since `--since` (Unix time, float),
//! when the first framebuffer update arrived and when the desktop template's known screen
//! (white bar top left, white bar bottom right, black bar bottom left) was first complete.
//!
//! Usage: vnc-first-frame (--unix PATH | --tcp ADDR) --password PW --since UNIX_SECS

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let get = |k: &str| a.iter().position(|x| x == k).and_then(|i| a.get(i + 1)).cloned();
    let since: f64 = get("--since").ok_or_else(|| anyhow::anyhow!("--since missing"))?.parse()?;
    let pw = get("--password").unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = match (get("--unix"), get("--tcp")) {
            (Some(p), _) => match tokio::net::UnixStream::connect(&p).await {
                Ok(s) => Some(session(s, &pw, since).await),
                Err(_) => None,
            },
            (_, Some(t)) => match tokio::net::TcpStream::connect(&t).await {
                Ok(s) => Some(session(s, &pw, since).await),
                Err(_) => None,
            },
            _ => anyhow::bail!("--unix PATH or --tcp ADDR needed"),
        };
        match r {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => eprintln!("vnc-first-frame: {e}; retrying"),
            None => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!("no VNC frame within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn session<S>(s: S, pw: &str, since: f64) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let pw = pw.to_owned();
    let vnc = vnc::VncConnector::new(s)
        .set_auth_method(async move { Ok(pw) })
        .add_encoding(vnc::VncEncoding::Raw)
        .add_encoding(vnc::VncEncoding::DesktopSizePseudo)
        .allow_shared(true)
        .set_pixel_format(vnc::PixelFormat::bgra())
        .build()?
        .try_start()
        .await?
        .finish()?;
    let (mut w, mut h) = (0usize, 0usize);
    let mut fb: Vec<u8> = Vec::new();
    let mut first = None;
    vnc.input(vnc::X11Event::FullRefresh).await?;
    loop {
        let ev = tokio::time::timeout(Duration::from_millis(250), vnc.recv_event()).await;
        match ev {
            Ok(Ok(vnc::VncEvent::SetResolution(sc))) => {
                (w, h) = (sc.width as usize, sc.height as usize);
                fb = vec![0; w * h * 4];
                vnc.input(vnc::X11Event::FullRefresh).await?;
            }
            Ok(Ok(vnc::VncEvent::RawImage(r, data))) => {
                if first.is_none() {
                    first = Some(now() - since);
                    println!("first_frame {:.3}", first.unwrap());
                }
                for y in 0..r.height as usize {
                    let (py, px) = (r.y as usize + y, r.x as usize);
                    let n = (r.width as usize).min(w.saturating_sub(px));
                    if py >= h || n == 0 {
                        continue;
                    }
                    let s = y * r.width as usize * 4;
                    let d = (py * w + px) * 4;
                    fb[d..d + n * 4].copy_from_slice(&data[s..s + n * 4]);
                }
                let px = |x: usize, y: usize| -> [u8; 3] {
                    let o = (y * w + x) * 4;
                    [fb[o], fb[o + 1], fb[o + 2]]
                };
                if w == 1280 && h == 800 && px(10, 100) == [255; 3] && px(1270, 700) == [255; 3] && px(10, 700) == [0; 3] {
                    println!("desktop {:.3}", now() - since);
                    let _ = vnc.close().await;
                    return Ok(());
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow::anyhow!("VNC: {e}")),
            Err(_) => vnc.input(vnc::X11Event::Refresh).await?,
        }
    }
}
