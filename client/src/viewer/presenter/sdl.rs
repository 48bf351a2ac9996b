//! SDL2 presenter: one streaming texture the size of the desktop, updated only where the
//! desktop changed, scaled by the GPU (or SDL's software renderer) into the window.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use log::{debug, info};
use sdl2::event::{Event, WindowEvent};
use sdl2::mouse::{MouseButton, MouseWheelDirection};
use sdl2::pixels::{Color, PixelFormatEnum};
use sdl2::rect::Rect as SdlRect;
use tokio::sync::mpsc::UnboundedSender;

use super::{Options, Presenter};
use crate::viewer::framebuffer::BPP;
use crate::viewer::input::{self, InputEvent, Keyboard};
use crate::viewer::layout::Fit;
use crate::viewer::overlay;
use crate::viewer::session::Shared;

const FRAME: Duration = Duration::from_millis(16);

pub(crate) struct Sdl {
    sdl: sdl2::Sdl,
    canvas: sdl2::render::WindowCanvas,
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
        info!("SDL video driver: {}", video.current_video_driver());
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
        let canvas = window.into_canvas().build().context("SDL renderer")?;
        info!("SDL renderer: {}", canvas.info().name);
        Ok(Sdl { sdl, canvas, opts: opts.clone() })
    }
}

impl Presenter for Sdl {
    fn run(&mut self, shared: &Shared, input: &UnboundedSender<InputEvent>) -> anyhow::Result<()> {
        let tc = self.canvas.texture_creator();
        let mut pump = self.sdl.event_pump().map_err(e)?;
        let mouse = self.sdl.mouse();
        let mut kb = Keyboard::new(self.opts.layout);
        let mut tex: Option<sdl2::render::Texture> = None;
        let mut status_tex: Option<(sdl2::render::Texture, u32, u32)> = None;
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
                    Event::Window { win_event: WindowEvent::SizeChanged(..) | WindowEvent::Exposed, .. } => {
                        redraw = true;
                    }
                    other => debug!("SDL event {other:?}"),
                }
            }
            let dirty = shared.dirty();
            // At most one present per display refresh: a busy desktop changes far more often,
            // and every present costs a full-screen copy.
            if (dirty == seen && !redraw) || last_present.elapsed() < FRAME {
                continue;
            }
            seen = dirty;
            last_present = Instant::now();
            {
                let mut s = shared.lock();
                if s.size_gen != size_gen {
                    size_gen = s.size_gen;
                    fb_size = (s.fb.width(), s.fb.height());
                    tex = if fb_size.0 > 0 {
                        s.fb.damage_all();
                        Some(tc.create_texture_streaming(PixelFormatEnum::RGB888, fb_size.0, fb_size.1)?)
                    } else {
                        None
                    };
                }
                if let Some(t) = tex.as_mut() {
                    let stride = s.fb.stride();
                    for r in s.fb.take_damage() {
                        let off = r.y as usize * stride + r.x as usize * BPP;
                        let rect = SdlRect::new(r.x as i32, r.y as i32, r.w, r.h);
                        t.update(rect, &s.fb.pixels()[off..], stride).context("texture update")?;
                    }
                }
                if s.status_gen != status_gen {
                    status_gen = s.status_gen;
                    let (ww, _) = self.canvas.output_size().map_err(e)?;
                    status_tex = match &s.status {
                        None => None,
                        Some(text) => {
                            let bar = overlay::render(text, ww);
                            let mut t = tc.create_texture_static(PixelFormatEnum::RGB888, bar.w, bar.h)?;
                            t.update(None, &bar.bgrx, bar.w as usize * 4)?;
                            Some((t, bar.w, bar.h))
                        }
                    };
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
            }
            let _ = &cursor;
            let (ww, wh) = self.canvas.output_size().map_err(e)?;
            if fb_size.0 > 0 {
                fit = Fit::new(fb_size.0, fb_size.1, ww, wh, self.opts.scale);
            }
            self.canvas.set_draw_color(Color::BLACK);
            self.canvas.clear();
            if let Some(t) = &tex {
                let dst = SdlRect::new(fit.x as i32, fit.y as i32, fit.w, fit.h);
                self.canvas.copy(t, None, dst).map_err(e)?;
            }
            if let Some((t, w, h)) = &status_tex {
                self.canvas.copy(t, None, SdlRect::new(0, 0, *w, *h)).map_err(e)?;
            }
            self.canvas.present();
            redraw = false;
        }
        kb.release_all().into_iter().for_each(send);
        Ok(())
    }
}
