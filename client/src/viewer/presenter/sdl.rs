//! SDL2 presenter. With a GPU renderer: one streaming texture the size of the desktop, updated
//! only where the desktop changed, scaled by the GPU into the window. With the software path:
//! no renderer and no texture; the changed parts of the framebuffer are copied straight into the
//! window's own surface (X11 shared memory) and only those parts are pushed to the display.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use log::{debug, info, warn};
use sdl2::event::{Event, WindowEvent};
use sdl2::mouse::{MouseButton, MouseWheelDirection};
use sdl2::pixels::{Color, PixelFormatEnum};
use sdl2::rect::Rect as SdlRect;
use sdl2::surface::Surface;
use tokio::sync::mpsc::UnboundedSender;

use super::{Options, Presenter};
use crate::viewer::framebuffer::{Rect, BPP};
use crate::viewer::input::{self, InputEvent, Keyboard};
use crate::viewer::layout::Fit;
use crate::viewer::overlay;
use crate::viewer::session::{Screen, Shared};

const FRAME: Duration = Duration::from_millis(16);

/// Where frames go.
enum Output {
    Canvas(sdl2::render::WindowCanvas),
    /// A texture and SDL's software renderer would hold two more copies of the desktop and
    /// redraw the whole window on every present; the window surface is the one copy the
    /// display needs anyway.
    Surface(sdl2::video::Window),
}

pub(crate) struct Sdl {
    sdl: sdl2::Sdl,
    out: Output,
    opts: Options,
}

fn e(s: String) -> anyhow::Error {
    anyhow!(s)
}

impl Sdl {
    pub(crate) fn open(opts: &Options) -> anyhow::Result<Sdl> {
        sdl2::hint::set("SDL_RENDER_SCALE_QUALITY", "linear");

        let sdl = sdl2::init().map_err(e).context("SDL init")?;
        let video = sdl.video().map_err(e).context("SDL video")?;
        let driver = video.current_video_driver();
        info!("SDL video driver: {driver}");
        // X11 can take finished frames from the CPU (shared memory images); elsewhere (KMS/DRM,
        // Wayland) SDL needs GL to show anything, so `auto` keeps SDL's own pick there.
        let software = match opts.renderer {
            super::Renderer::Software => true,
            super::Renderer::Gpu => false,
            super::Renderer::Auto => driver == "x11",
        };
        if software {
            // Otherwise SDL puts the software renderer's window surface on an OpenGL texture,
            // which loads the GL stack (llvmpipe: 60 MiB resident) that this choice avoids.
            sdl2::hint::set("SDL_FRAMEBUFFER_ACCELERATION", "0");
        }
        let mut wb = match opts.window {
            Some((w, h)) => video.window("thinclient", w, h),
            None => {
                let mode = video.desktop_display_mode(0).map_err(e).context("SDL display mode")?;
                let mut wb = video.window("thinclient", mode.w as u32, mode.h as u32);
                wb.fullscreen_desktop();
                wb
            }
        };
        let window = wb.position(0, 0).build().context("SDL window")?;
        let out = if software {
            info!("SDL renderer: none, window surface");
            Output::Surface(window)
        } else {
            let canvas = window.into_canvas().build().context("SDL renderer")?;
            info!("SDL renderer: {}", canvas.info().name);
            Output::Canvas(canvas)
        };
        Ok(Sdl { sdl, out, opts: opts.clone() })
    }
}

/// What a present needs from the shared screen, taken under its lock.
struct Changes {
    /// The desktop changed size (or this is the first frame).
    resized: bool,
    status: Option<Option<overlay::StatusBar>>,
}

/// The GPU path's state: the desktop texture and the status bar texture.
struct CanvasState<'a> {
    tc: &'a sdl2::render::TextureCreator<sdl2::video::WindowContext>,
    tex: Option<sdl2::render::Texture<'a>>,
    status: Option<(sdl2::render::Texture<'a>, u32, u32)>,
}

/// The software path's state: the status bar, drawn over the desktop after each copy.
#[derive(Default)]
struct SurfaceState {
    status: Option<overlay::StatusBar>,
    /// The window changed size since the last present: SDL replaces the window surface on the
    /// next `window.surface()`, so the framebuffer must not be living in it by then.
    window_changed: bool,
}

impl Presenter for Sdl {
    fn run(&mut self, shared: &Shared, input: &UnboundedSender<InputEvent>) -> anyhow::Result<()> {
        let tc = match &self.out {
            Output::Canvas(c) => Some(c.texture_creator()),
            Output::Surface(_) => None,
        };
        let mut cs = tc.as_ref().map(|tc| CanvasState { tc, tex: None, status: None });
        let mut ss = SurfaceState::default();
        let mut pump = self.sdl.event_pump().map_err(e)?;
        let mouse = self.sdl.mouse();
        let mut kb = Keyboard::new(self.opts.layout).with_logout(self.opts.logout);
        let mut cursor: Option<sdl2::mouse::Cursor> = None;
        let (mut size_gen, mut status_gen, mut cursor_gen) = (u64::MAX, u64::MAX, u64::MAX);
        let mut seen = u64::MAX;
        let mut fit = Fit::new(1, 1, 1, 1, true);
        let mut fb_size = (0u32, 0u32);
        let mut buttons = 0u8;
        let mut pos = (0u16, 0u16);
        let mut redraw = true;
        let mut last_present = Instant::now() - FRAME;
        let send = |ev: InputEvent| {
            let _ = input.send(ev);
        };
        while !shared.quitting() {
            // Sleep in SDL until input arrives; a short timeout picks up new frames promptly.
            let first = pump.wait_event_timeout(4);
            for ev in first.into_iter().chain(pump.poll_iter().collect::<Vec<_>>()) {
                match ev {
                    Event::Quit { .. } => send(InputEvent::Quit),
                    Event::KeyDown { scancode: Some(sc), .. } | Event::KeyUp { scancode: Some(sc), .. } => {
                        let down = matches!(ev, Event::KeyDown { .. });
                        if let Some(ev) = input::hid_to_linux(sc as i32 as u32).and_then(|c| kb.key(c, down)) {
                            send(ev);
                        }
                    }
                    Event::MouseMotion { x, y, .. } => {
                        pos = fit.to_desktop(x, y);
                        send(InputEvent::Pointer { x: pos.0, y: pos.1, buttons });
                    }
                    Event::MouseButtonDown { mouse_btn, x, y, .. } | Event::MouseButtonUp { mouse_btn, x, y, .. } => {
                        let bit = match mouse_btn {
                            MouseButton::Left => input::BUTTON_LEFT,
                            MouseButton::Middle => input::BUTTON_MIDDLE,
                            MouseButton::Right => input::BUTTON_RIGHT,
                            _ => 0,
                        };
                        if matches!(ev, Event::MouseButtonDown { .. }) { buttons |= bit } else { buttons &= !bit }
                        pos = fit.to_desktop(x, y);
                        send(InputEvent::Pointer { x: pos.0, y: pos.1, buttons });
                    }
                    Event::MouseWheel { x, y, direction, .. } => {
                        let k = if direction == MouseWheelDirection::Flipped { -1 } else { 1 };
                        let mut out = vec![];
                        input::wheel(pos.0, pos.1, buttons, y * k, x * k, &mut out);
                        out.into_iter().for_each(send);
                    }
                    Event::Window { win_event: WindowEvent::FocusLost, .. } => {
                        kb.release_all().into_iter().for_each(send);
                    }
                    Event::Window { win_event: WindowEvent::SizeChanged(..), .. } => {
                        redraw = true;
                        ss.window_changed = true;
                    }
                    Event::Window { win_event: WindowEvent::Exposed, .. } => {
                        redraw = true;
                    }
                    other => debug!("SDL event {other:?}"),
                }
            }
            let dirty = shared.dirty();
            // At most one present per display refresh: a busy desktop changes far more often,
            // and every present costs a copy of what changed.
            if (dirty == seen && !redraw) || last_present.elapsed() < FRAME {
                continue;
            }
            seen = dirty;
            last_present = Instant::now();
            let (ww, wh) = match &self.out {
                Output::Canvas(c) => c.output_size().map_err(e)?,
                Output::Surface(w) => w.size(),
            };
            let mut s = shared.lock();
            let mut ch = Changes { resized: false, status: None };
            if s.size_gen != size_gen {
                size_gen = s.size_gen;
                fb_size = (s.fb.width(), s.fb.height());
                s.fb.damage_all();
                ch.resized = true;
            }
            if s.status_gen != status_gen {
                status_gen = s.status_gen;
                ch.status = Some(s.status.as_deref().map(|t| overlay::render(t, ww)));
            }
            if s.cursor_gen != cursor_gen {
                cursor_gen = s.cursor_gen;
                cursor = match s.cursor.as_mut() {
                    Some(c) => {
                        let surf = sdl2::surface::Surface::from_data(
                            &mut c.bgra, c.w, c.h, c.w * 4, PixelFormatEnum::ARGB8888,
                        )
                        .map_err(e)?;
                        let cur = sdl2::mouse::Cursor::from_surface(surf, c.hot_x as i32, c.hot_y as i32)
                            .map_err(e)?;
                        cur.set();
                        mouse.show_cursor(true);
                        Some(cur)
                    }
                    None => {
                        mouse.show_cursor(false);
                        None
                    }
                };
            }
            if fb_size.0 > 0 {
                fit = Fit::new(fb_size.0, fb_size.1, ww, wh, self.opts.scale);
            }
            match (&mut self.out, cs.as_mut()) {
                (Output::Canvas(canvas), Some(cs)) => {
                    cs.update(&mut s, ch)?;
                    drop(s);
                    cs.present(canvas, &fit)?;
                }
                (Output::Surface(window), _) => {
                    // A status change or a new window size shows through everywhere: repaint all.
                    let all = redraw || ch.resized || ch.status.is_some();
                    if let Some(st) = ch.status {
                        ss.status = st;
                    }
                    ss.present(window, &pump, &mut s, &fit, all)?;
                }
                (Output::Canvas(_), None) => unreachable!("a canvas always has a texture creator"),
            }
            shared.presented();
            redraw = false;
        }
        let _ = &cursor;
        // The window (and its surface) goes away with the presenter; the session may still run.
        shared.lock().fb.withdraw();
        kb.release_all().into_iter().for_each(send);
        Ok(())
    }
}

impl CanvasState<'_> {
    fn update(&mut self, s: &mut Screen, ch: Changes) -> anyhow::Result<()> {
        if ch.resized {
            let (w, h) = (s.fb.width(), s.fb.height());
            self.tex = if w > 0 { Some(self.tc.create_texture_streaming(PixelFormatEnum::RGB888, w, h)?) } else { None };
        }
        if let Some(t) = self.tex.as_mut() {
            let stride = s.fb.stride();
            for r in s.fb.take_damage() {
                let off = r.y as usize * stride + r.x as usize * BPP;
                let rect = SdlRect::new(r.x as i32, r.y as i32, r.w, r.h);
                t.update(rect, &s.fb.pixels()[off..], stride).context("texture update")?;
            }
        }
        if let Some(st) = ch.status {
            self.status = match st {
                None => None,
                Some(bar) => {
                    let mut t = self.tc.create_texture_static(PixelFormatEnum::RGB888, bar.w, bar.h)?;
                    t.update(None, &bar.bgrx, bar.w as usize * 4)?;
                    Some((t, bar.w, bar.h))
                }
            };
        }
        Ok(())
    }

    fn present(&self, canvas: &mut sdl2::render::WindowCanvas, fit: &Fit) -> anyhow::Result<()> {
        canvas.set_draw_color(Color::BLACK);
        canvas.clear();
        if let Some(t) = &self.tex {
            canvas.copy(t, None, SdlRect::new(fit.x as i32, fit.y as i32, fit.w, fit.h)).map_err(e)?;
        }
        if let Some((t, w, h)) = &self.status {
            canvas.copy(t, None, SdlRect::new(0, 0, *w, *h)).map_err(e)?;
        }
        canvas.present();
        Ok(())
    }
}

impl SurfaceState {
    /// Copies what changed into the window surface and pushes just that to the display; `all`
    /// repaints the whole window (borders included). Where the desktop fills the window 1:1 in
    /// our pixel layout, the framebuffer lives in the window surface itself (see
    /// [`crate::viewer::framebuffer::Framebuffer::offer`]): then presenting copies nothing.
    fn present(
        &mut self,
        window: &sdl2::video::Window,
        pump: &sdl2::EventPump,
        s: &mut Screen,
        fit: &Fit,
        mut all: bool,
    ) -> anyhow::Result<()> {
        if std::mem::take(&mut self.window_changed) {
            s.fb.withdraw();
        }
        let mut ws = window.surface(pump).map_err(e).context("SDL window surface")?;
        let (fw, fh) = (s.fb.width(), s.fb.height());
        let stride = s.fb.stride();
        let display = if ws.must_lock() { None } else { ws.without_lock_mut().map(|p| (p.as_mut_ptr(), p.len())) };
        if let Some(lent) = s.fb.lent_ptr() {
            if display.map(|d| d.0) != Some(lent) {
                warn!("the window surface was replaced while the desktop lived in it; repainting black");
                s.fb.forget_lent();
                all = true;
            }
        }
        let (sw, sh) = (ws.width(), ws.height());
        if let Some((ptr, len)) = display {
            if s.fb.offered() != Some(ptr)
                && ws.pitch() as usize == sw as usize * BPP
                && ws.pixel_format_enum() == PixelFormatEnum::RGB888
            {
                // SAFETY: the surface stays valid until SDL replaces it, which only happens in
                // `window.surface()` after a size change (withdrawn above first) or when the
                // window goes away (withdrawn at the end of `run`); the screen lock is held.
                unsafe { s.fb.offer(ptr, len, sw, sh) };
                if s.fb.lent_ptr().is_some() {
                    debug!("the desktop now lives in the window surface");
                    all = true;
                }
            }
        }
        let damage = s.fb.take_damage();
        let mut shown: Vec<SdlRect> = vec![];
        if all {
            shown.push(SdlRect::new(0, 0, ws.width(), ws.height()));
        }
        if s.fb.lent_ptr().is_some() {
            if !all {
                shown.extend(damage.iter().map(|r| SdlRect::new(r.x as i32, r.y as i32, r.w, r.h)));
            }
        } else {
            if all {
                ws.fill_rect(None, Color::BLACK).map_err(e)?;
            }
            if fw > 0 {
                let src = Surface::from_data(s.fb.pixels_mut(), fw, fh, stride as u32, PixelFormatEnum::RGB888)
                    .map_err(e)?;
                let whole = SdlRect::new(fit.x as i32, fit.y as i32, fit.w, fit.h);
                if fit.is_unscaled() {
                    let rects = if all { vec![Rect::new(0, 0, fw, fh)] } else { damage };
                    for r in rects {
                        let from = SdlRect::new(r.x as i32, r.y as i32, r.w, r.h);
                        let to = SdlRect::new(fit.x as i32 + r.x as i32, fit.y as i32 + r.y as i32, r.w, r.h);
                        src.blit(from, &mut ws, to).map_err(e)?;
                        if !all {
                            shown.push(to);
                        }
                    }
                } else if all || !damage.is_empty() {
                    // Stretching part of the image would sample differently from stretching all
                    // of it (seams at the edges of each part), so scaled frames are stretched
                    // whole; only the changed parts are pushed to the display.
                    stretch(&src, &mut ws, whole)?;
                    if !all {
                        for r in damage {
                            let (x0, x1) = fit.span_x(r.x, r.w);
                            let (y0, y1) = fit.span_y(r.y, r.h);
                            shown.push(SdlRect::new(x0 as i32, y0 as i32, x1 - x0, y1 - y0));
                        }
                    }
                }
            }
        }
        // Drawn over the desktop for this present only: where the desktop lives in the surface,
        // what the bar covers is put back once the display has taken the frame (SDL waits for
        // the X server before returning).
        let mut under = vec![];
        if let Some(bar) = &self.status {
            let h = bar.h.min(ws.height());
            if s.fb.lent_ptr().is_some() {
                under = s.fb.pixels()[..(h as usize * stride).min(s.fb.pixels().len())].to_vec();
            }
            let mut px = bar.bgrx.clone();
            let b = Surface::from_data(&mut px, bar.w, bar.h, bar.w * 4, PixelFormatEnum::RGB888).map_err(e)?;
            let to = SdlRect::new(0, 0, bar.w, h);
            b.blit(None, &mut ws, to).map_err(e)?;
            if !all {
                shown.push(to);
            }
        }
        if !shown.is_empty() {
            ws.update_window_rects(&shown).map_err(e)?;
        }
        if !under.is_empty() {
            s.fb.pixels_mut()[..under.len()].copy_from_slice(&under);
        }
        Ok(())
    }
}

/// Linear filtering like the GPU path where the window surface has our pixel format (SDL's
/// linear stretch needs that); nearest-neighbour otherwise.
fn stretch(src: &Surface, dst: &mut sdl2::surface::SurfaceRef, to: SdlRect) -> anyhow::Result<()> {
    if dst.pixel_format_enum() == PixelFormatEnum::RGB888 {
        let from = SdlRect::new(0, 0, src.width(), src.height());
        // SAFETY: both surfaces are alive and of the same 32-bit format; the rects are inside
        // them (SDL checks and fails otherwise).
        let r = unsafe { sdl2::sys::SDL_SoftStretchLinear(src.raw(), from.raw(), dst.raw(), to.raw()) };
        if r == 0 {
            return Ok(());
        }
    }
    src.blit_scaled(None, dst, to).map_err(e)?;
    Ok(())
}
