//! Presenters put the framebuffer on a screen and turn local keys and pointer moves into
//! [`InputEvent`]s. They run on the main thread (SDL requires it) and only ever read the
//! shared screen, so the network never waits for them.

use std::path::Path;

use log::info;
use tokio::sync::mpsc::UnboundedSender;

use super::input::{InputEvent, Layout};
use super::session::Shared;

pub(crate) mod fbdev;
#[cfg(feature = "sdl")]
pub(crate) mod sdl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Choice {
    /// SDL2 if it can open a display (window system or KMS/DRM), else fbdev.
    Auto,
    /// SDL2: KMS/DRM on a console, X11 or Wayland on a desktop.
    Sdl,
    /// /dev/fb0 with evdev input: for images without a GL stack.
    Fbdev,
}

/// The SDL renderer to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Renderer {
    /// `software` on X11, `gpu` elsewhere (KMS/DRM and Wayland show frames through GL).
    Auto,
    Gpu,
    Software,
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub layout: Layout,
    /// Scale the desktop to the screen (aspect ratio kept); false shows it 1:1.
    pub scale: bool,
    /// SDL: a window of this size instead of full screen.
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub window: Option<(u32, u32)>,
    #[cfg_attr(not(feature = "sdl"), allow(dead_code))]
    pub renderer: Renderer,
    pub fbdev: std::path::PathBuf,
    /// The logout keys, reported as [`InputEvent::Logout`].
    pub logout: Option<super::input::Chord>,
}

pub(crate) trait Presenter {
    /// Runs until the user quits or `shared.quitting()`.
    fn run(&mut self, shared: &Shared, input: &UnboundedSender<InputEvent>) -> anyhow::Result<()>;
}

pub(crate) fn open(choice: Choice, opts: &Options) -> anyhow::Result<Box<dyn Presenter>> {
    match choice {
        Choice::Fbdev => Ok(Box::new(fbdev::Fbdev::open(opts)?)),
        Choice::Sdl => open_sdl(opts),
        Choice::Auto => {
            let display = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
            let drm = Path::new("/dev/dri/card0").exists();
            if cfg!(feature = "sdl") && (display || drm) {
                let why = if display { "a window system is running" } else { "/dev/dri/card0 exists (KMS/DRM)" };
                match open_sdl(opts) {
                    Ok(p) => {
                        info!("presenter auto: sdl, because {why}");
                        return Ok(p);
                    }
                    Err(e) => info!("presenter auto: sdl failed ({e:#}), trying fbdev"),
                }
            } else if !cfg!(feature = "sdl") {
                info!("presenter auto: built without SDL");
            } else {
                info!("presenter auto: no window system and no /dev/dri/card0");
            }
            let p = fbdev::Fbdev::open(opts)?;
            info!("presenter auto: fbdev on {}", opts.fbdev.display());
            Ok(Box::new(p))
        }
    }
}

#[cfg(feature = "sdl")]
fn open_sdl(opts: &Options) -> anyhow::Result<Box<dyn Presenter>> {
    Ok(Box::new(sdl::Sdl::open(opts)?))
}

#[cfg(not(feature = "sdl"))]
fn open_sdl(_: &Options) -> anyhow::Result<Box<dyn Presenter>> {
    anyhow::bail!("this thinclient was built without SDL (cargo feature `sdl`)")
}
