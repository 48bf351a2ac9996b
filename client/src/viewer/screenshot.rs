//! `--screenshot FILE.png`: what the viewer shows (the desktop at its own size, with the status
//! line when one is up; the pointer is drawn by the presenter and not part of it, as in the
//! server's own dumps), written after the first complete frame and on every SIGUSR1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use log::{info, warn};

use super::overlay;
use super::session::{Screen, Shared};

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub path: PathBuf,
    /// Wait this long after the first complete frame (for screens that settle).
    pub delay: Duration,
    pub exit_after: bool,
}

/// Before the first frame there is no desktop yet: the status line is drawn on this canvas.
const EMPTY_W: u32 = 640;
const EMPTY_H: u32 = 480;

pub(crate) fn compose(s: &Screen) -> (u32, u32, Vec<u8>) {
    let (w, h) = if s.fb.width() > 0 { (s.fb.width(), s.fb.height()) } else { (EMPTY_W, EMPTY_H) };
    let mut bgrx = if s.fb.width() > 0 { s.fb.pixels().to_vec() } else { vec![0; (w * h * 4) as usize] };
    if let Some(t) = &s.status {
        overlay::render(t, w).draw_over(&mut bgrx, w, h);
    }
    let rgb = bgrx.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    (w, h, rgb)
}

pub(crate) fn write(path: &Path, shared: &Shared) -> anyhow::Result<()> {
    let (w, h, rgb) = compose(&shared.lock());
    // Write then rename, so a reader polling for the file never sees half a PNG.
    let tmp = path.with_extension("png.part");
    image::save_buffer_with_format(&tmp, &rgb, w, h, image::ColorType::Rgb8, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    info!("screenshot {}x{} written to {}", w, h, path.display());
    Ok(())
}

pub(crate) async fn run(plan: Plan, shared: Arc<Shared>) {
    let p = plan.clone();
    let sh = Arc::clone(&shared);
    tokio::spawn(async move {
        let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) else {
            return;
        };
        while sig.recv().await.is_some() {
            if let Err(e) = write(&p.path, &sh) {
                warn!("{e:#}");
            }
        }
    });
    let mut frames = shared.frames();
    if frames.wait_for(|n| *n >= 1).await.is_err() {
        return;
    }
    tokio::time::sleep(plan.delay).await;
    if let Err(e) = write(&plan.path, &shared) {
        warn!("{e:#}");
    }
    if plan.exit_after {
        shared.request_quit();
    }
}
