//! fbdev presenter: draws straight into the memory-mapped /dev/fb0 (16, 24 or 32 bpp, any line
//! length) and reads keyboards and mice with evdev, for boot images that have no GL stack.
//!
//! The two framebuffer ioctls and their structs are written out here: the crates that wrap them
//! are unmaintained, and this is forty lines of `linux/fb.h`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::{debug, info, warn};
use memmap2::MmapMut;
use tokio::sync::mpsc::UnboundedSender;

use super::{Options, Presenter};
use crate::viewer::framebuffer::{Cursor, Framebuffer, Rect, BPP};
use crate::viewer::input::{self, InputEvent, Keyboard};
use crate::viewer::layout::Fit;
use crate::viewer::overlay;
use crate::viewer::session::Shared;

#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;
const KDSETMODE: libc::c_ulong = 0x4B3A;
const KD_TEXT: libc::c_ulong = 0;
const KD_GRAPHICS: libc::c_ulong = 1;

/// How the screen stores a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PixFmt {
    pub bytes: usize,
    pub r: (u32, u32),
    pub g: (u32, u32),
    pub b: (u32, u32),
}

impl PixFmt {
    /// B, G, R, X in memory: the desktop's own layout, so rows copy as they are.
    fn is_bgrx(&self) -> bool {
        self.bytes == 4 && self.r == (16, 8) && self.g == (8, 8) && self.b == (0, 8)
    }

    fn pack(&self, p: &[u8]) -> u32 {
        let c = |v: u8, (off, len): (u32, u32)| (u32::from(v) >> (8 - len.min(8))) << off;
        c(p[2], self.r) | c(p[1], self.g) | c(p[0], self.b)
    }
}

/// Draws the part of the desktop that falls into `screen_rect` (screen coordinates) into a
/// screen buffer, scaled by `fit` with nearest sampling. Pure, so it is tested on a Vec.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blit(
    dst: &mut [u8],
    line: usize,
    fmt: PixFmt,
    fb: &Framebuffer,
    fit: &Fit,
    xmap: &[u32],
    ymap: &[u32],
    screen_rect: Rect,
) {
    let x0 = screen_rect.x.max(fit.x);
    let y0 = screen_rect.y.max(fit.y);
    let x1 = (screen_rect.x + screen_rect.w).min(fit.x + fit.w);
    let y1 = (screen_rect.y + screen_rect.h).min(fit.y + fit.h);
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let src = fb.pixels();
    let stride = fb.stride();
    for sy in y0..y1 {
        let row = ymap[(sy - fit.y) as usize] as usize * stride;
        let d = sy as usize * line;
        if fit.is_unscaled() && fmt.is_bgrx() {
            let s = row + (x0 - fit.x) as usize * BPP;
            let n = (x1 - x0) as usize * 4;
            dst[d + x0 as usize * 4..d + x0 as usize * 4 + n].copy_from_slice(&src[s..s + n]);
            continue;
        }
        for sx in x0..x1 {
            let s = row + xmap[(sx - fit.x) as usize] as usize * BPP;
            let v = fmt.pack(&src[s..s + 4]);
            let o = d + sx as usize * fmt.bytes;
            dst[o..o + fmt.bytes].copy_from_slice(&v.to_le_bytes()[..fmt.bytes]);
        }
    }
}

/// Draws the server's cursor (not scaled) with its hotspot at `at`; returns the screen area
/// it covers.
fn draw_cursor(dst: &mut [u8], line: usize, fmt: PixFmt, c: &Cursor, at: (i32, i32), size: (u32, u32)) -> Option<Rect> {
    let x0 = at.0 - c.hot_x as i32;
    let y0 = at.1 - c.hot_y as i32;
    let (mut lo, mut hi) = ((i32::MAX, i32::MAX), (i32::MIN, i32::MIN));
    for cy in 0..c.h as i32 {
        for cx in 0..c.w as i32 {
            let (x, y) = (x0 + cx, y0 + cy);
            if x < 0 || y < 0 || x >= size.0 as i32 || y >= size.1 as i32 {
                continue;
            }
            let p = &c.bgra[((cy as u32 * c.w + cx as u32) * 4) as usize..][..4];
            // vnc-rs puts the cursor mask into the alpha byte.
            if p[3] == 0 {
                continue;
            }
            let o = y as usize * line + x as usize * fmt.bytes;
            dst[o..o + fmt.bytes].copy_from_slice(&fmt.pack(p).to_le_bytes()[..fmt.bytes]);
            lo = (lo.0.min(x), lo.1.min(y));
            hi = (hi.0.max(x), hi.1.max(y));
        }
    }
    (hi.0 >= lo.0).then(|| Rect::new(lo.0 as u32, lo.1 as u32, (hi.0 - lo.0 + 1) as u32, (hi.1 - lo.1 + 1) as u32))
}

/// Puts the console back into text mode when the viewer ends.
struct GraphicsMode(File);

impl Drop for GraphicsMode {
    fn drop(&mut self) {
        // SAFETY: KDSETMODE takes an integer argument; the fd is open.
        unsafe { libc::ioctl(self.0.as_raw_fd(), KDSETMODE, KD_TEXT) };
    }
}

pub(crate) struct Fbdev {
    map: MmapMut,
    /// Byte offset of the visible area (panning) in the mapping.
    origin: usize,
    width: u32,
    height: u32,
    line: usize,
    fmt: PixFmt,
    opts: Options,
    _tty: Option<GraphicsMode>,
    _file: File,
}

impl Fbdev {
    pub(crate) fn open(opts: &Options) -> anyhow::Result<Fbdev> {
        let path = &opts.fbdev;
        let file = OpenOptions::new().read(true).write(true).open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut var = FbVarScreeninfo::default();
        let mut fix = FbFixScreeninfo::default();
        // SAFETY: the structs match linux/fb.h and outlive the calls.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), FBIOGET_VSCREENINFO, &mut var) != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("FBIOGET_VSCREENINFO on {}", path.display()));
            }
            if libc::ioctl(file.as_raw_fd(), FBIOGET_FSCREENINFO, &mut fix) != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("FBIOGET_FSCREENINFO on {}", path.display()));
            }
        }
        let bytes = match var.bits_per_pixel {
            16 | 24 | 32 => var.bits_per_pixel as usize / 8,
            n => bail!("{}: {n} bits per pixel is not supported (16, 24, 32 are)", path.display()),
        };
        let line = fix.line_length as usize;
        let origin = var.yoffset as usize * line + var.xoffset as usize * bytes;
        let need = origin + var.yres as usize * line;
        let len = (fix.smem_len as usize).max(need);
        if line < var.xres as usize * bytes {
            bail!("{}: line length {line} is shorter than {} pixels", path.display(), var.xres);
        }
        // SAFETY: a device mapping; nothing else in this process maps it.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(&file) }
            .with_context(|| format!("mapping {} ({len} bytes)", path.display()))?;
        let fmt = PixFmt {
            bytes,
            r: (var.red.offset, var.red.length),
            g: (var.green.offset, var.green.length),
            b: (var.blue.offset, var.blue.length),
        };
        info!("fbdev {}: {}x{} {} bpp, line {line}, {:?}", path.display(), var.xres, var.yres, var.bits_per_pixel, fmt);
        let tty = OpenOptions::new().write(true).open("/dev/tty0").ok().and_then(|t| {
            // SAFETY: integer argument, open fd.
            (unsafe { libc::ioctl(t.as_raw_fd(), KDSETMODE, KD_GRAPHICS) } == 0).then_some(GraphicsMode(t))
        });
        if tty.is_none() {
            debug!("console left in text mode (no /dev/tty0 or not a VT)");
        }
        Ok(Fbdev { map, origin, width: var.xres, height: var.yres, line, fmt, opts: opts.clone(), _tty: tty, _file: file })
    }

    fn screen(&mut self) -> &mut [u8] {
        let end = self.origin + self.height as usize * self.line;
        &mut self.map[self.origin..end]
    }
}

/// Raw evdev events from the reader threads, with the absolute range for pointer axes.
struct RawEvent {
    kind: u16,
    code: u16,
    value: i32,
    abs_range: (i32, i32),
}

const EV_SYN: u16 = 0;
const EV_KEY: u16 = 1;
const EV_REL: u16 = 2;
const EV_ABS: u16 = 3;
const BTN_LEFT: u16 = 0x110;
const BTN_RIGHT: u16 = 0x111;
const BTN_MIDDLE: u16 = 0x112;
const BTN_TOUCH: u16 = 0x14a;

/// How often /dev/input is looked at again for keyboards and mice plugged in (or probed by
/// the kernel) after the viewer started.
const RESCAN: Duration = Duration::from_secs(2);

/// One blocking reader thread per keyboard, mouse or tablet not yet in `known`. Devices are
/// grabbed so that typing does not also reach the console underneath.
fn spawn_readers(tx: &std_mpsc::Sender<RawEvent>, known: &Arc<Mutex<HashSet<PathBuf>>>) {
    for (path, mut dev) in evdev::enumerate() {
        if !known.lock().unwrap_or_else(PoisonError::into_inner).insert(path.clone()) {
            continue;
        }
        let keys = dev.supported_keys().is_some_and(|k| k.contains(evdev::KeyCode::KEY_A) || k.contains(evdev::KeyCode::BTN_LEFT));
        let rel = dev.supported_relative_axes().is_some();
        let abs = dev.supported_absolute_axes().is_some_and(|a| a.contains(evdev::AbsoluteAxisCode::ABS_X));
        if !(keys || rel || abs) {
            continue;
        }
        let mut ranges = [(0, 0); 2];
        if let Ok(infos) = dev.get_absinfo() {
            for (code, info) in infos {
                if code.0 < 2 {
                    ranges[code.0 as usize] = (info.minimum(), info.maximum());
                }
            }
        }
        if let Err(e) = dev.grab() {
            warn!("cannot grab {}: {e}", path.display());
        }
        info!("input {}: {}", path.display(), dev.name().unwrap_or("?"));
        let tx = tx.clone();
        let known = Arc::clone(known);
        std::thread::spawn(move || loop {
            let Ok(events) = dev.fetch_events() else {
                // Unplugged: the next scan may find it (or another device) at this path again.
                known.lock().unwrap_or_else(PoisonError::into_inner).remove(&path);
                return;
            };
            for ev in events {
                let abs_range = if ev.event_type().0 == EV_ABS && ev.code() < 2 { ranges[ev.code() as usize] } else { (0, 0) };
                if tx.send(RawEvent { kind: ev.event_type().0, code: ev.code(), value: ev.value(), abs_range }).is_err() {
                    return;
                }
            }
        });
    }
}

impl Presenter for Fbdev {
    fn run(&mut self, shared: &Shared, input: &UnboundedSender<InputEvent>) -> anyhow::Result<()> {
        let (events_tx, events) = std_mpsc::channel();
        let known = Arc::new(Mutex::new(HashSet::new()));
        spawn_readers(&events_tx, &known);
        let mut scanned = Instant::now();
        let mut kb = Keyboard::new(self.opts.layout).with_logout(self.opts.logout);
        let (sw, sh) = (self.width, self.height);
        let mut ptr = (sw as i32 / 2, sh as i32 / 2);
        let mut moved = false;
        let mut buttons = 0u8;
        let (mut size_gen, mut status_gen) = (u64::MAX, u64::MAX);
        let mut fit = Fit::new(1, 1, sw, sh, true);
        let (mut xmap, mut ymap) = (vec![], vec![]);
        let mut seen = u64::MAX;
        let mut status_h = 0u32;
        let (mut cursor, mut cursor_gen): (Option<Cursor>, u64) = (None, u64::MAX);
        let mut under_cursor: Option<Rect> = None;
        let mut drawn_at = (-1, -1);
        let send = |ev: InputEvent| {
            let _ = input.send(ev);
        };
        while !shared.quitting() {
            if scanned.elapsed() >= RESCAN {
                spawn_readers(&events_tx, &known);
                scanned = Instant::now();
            }
            // Input first, so that a busy desktop never delays it.
            let mut first = events.recv_timeout(Duration::from_millis(5)).ok();
            while let Some(ev) = first.take().or_else(|| events.try_recv().ok()) {
                match (ev.kind, ev.code) {
                    (EV_KEY, BTN_LEFT | BTN_TOUCH | BTN_RIGHT | BTN_MIDDLE) => {
                        let bit = match ev.code {
                            BTN_RIGHT => input::BUTTON_RIGHT,
                            BTN_MIDDLE => input::BUTTON_MIDDLE,
                            _ => input::BUTTON_LEFT,
                        };
                        if ev.value != 0 { buttons |= bit } else { buttons &= !bit }
                        moved = true;
                    }
                    (EV_KEY, code) if code < 0x100 => {
                        if let Some(e) = kb.key(code, ev.value != 0) {
                            send(e);
                        }
                    }
                    (EV_REL, 0) => { ptr.0 = (ptr.0 + ev.value).clamp(0, sw as i32 - 1); moved = true; }
                    (EV_REL, 1) => { ptr.1 = (ptr.1 + ev.value).clamp(0, sh as i32 - 1); moved = true; }
                    (EV_REL, 6 | 8) => {
                        let (x, y) = fit.to_desktop(ptr.0, ptr.1);
                        let mut out = vec![];
                        let (dy, dx) = if ev.code == 8 { (ev.value, 0) } else { (0, ev.value) };
                        input::wheel(x, y, buttons, dy, dx, &mut out);
                        out.into_iter().for_each(send);
                    }
                    (EV_ABS, axis @ (0 | 1)) => {
                        let (lo, hi) = ev.abs_range;
                        let span = i64::from((hi - lo).max(1));
                        let len = i64::from(if axis == 0 { sw } else { sh });
                        let v = (i64::from(ev.value - lo) * (len - 1) / span) as i32;
                        if axis == 0 { ptr.0 = v } else { ptr.1 = v }
                        moved = true;
                    }
                    (EV_SYN, _) if moved => {
                        let (x, y) = fit.to_desktop(ptr.0, ptr.1);
                        send(InputEvent::Pointer { x, y, buttons });
                        moved = false;
                    }
                    _ => {}
                }
            }
            let dirty = shared.dirty();
            if dirty == seen && ptr == drawn_at {
                continue;
            }
            seen = dirty;
            let mut s = shared.lock();
            if s.cursor_gen != cursor_gen {
                cursor_gen = s.cursor_gen;
                cursor = s.cursor.clone();
            }
            let mut full = false;
            if s.size_gen != size_gen {
                size_gen = s.size_gen;
                fit = Fit::new(s.fb.width(), s.fb.height(), sw, sh, self.opts.scale);
                xmap = Fit::sample_map(fit.w, s.fb.width());
                ymap = Fit::sample_map(fit.h, s.fb.height());
                self.screen().fill(0);
                full = true;
            }
            if s.status_gen != status_gen {
                status_gen = s.status_gen;
                // The bar covered part of the desktop: repaint what it leaves behind.
                full |= status_h > 0;
                status_h = 0;
            }
            if s.fb.width() > 0 {
                let damage = s.fb.take_damage();
                let (line, fmt) = (self.line, self.fmt);
                let rects: Vec<Rect> = if full {
                    vec![Rect::new(0, 0, sw, sh)]
                } else {
                    damage.iter().map(|r| {
                        let (x0, x1) = fit.span_x(r.x, r.w);
                        let (y0, y1) = fit.span_y(r.y, r.h);
                        Rect::new(x0, y0, x1 - x0, y1 - y0)
                    }).collect()
                };
                let fb = &s.fb;
                let screen = {
                    let end = self.origin + sh as usize * line;
                    &mut self.map[self.origin..end]
                };
                // The pointer is drawn over the desktop: put back what it covered first.
                for r in rects.into_iter().chain(under_cursor.take()) {
                    blit(screen, line, fmt, fb, &fit, &xmap, &ymap, r);
                }
                if let Some(cur) = &cursor {
                    under_cursor = draw_cursor(screen, line, fmt, cur, ptr, (sw, sh));
                }
                drawn_at = ptr;
                shared.presented();
            }
            if let Some(text) = s.status.clone() {
                drop(s);
                let bar = overlay::render(&text, sw);
                status_h = bar.h.min(sh);
                let (line, fmt) = (self.line, self.fmt);
                let screen = self.screen();
                for y in 0..status_h as usize {
                    for x in 0..bar.w as usize {
                        let p = &bar.bgrx[(y * bar.w as usize + x) * 4..][..4];
                        let o = y * line + x * fmt.bytes;
                        screen[o..o + fmt.bytes].copy_from_slice(&fmt.pack(p).to_le_bytes()[..fmt.bytes]);
                    }
                }
            }
        }
        kb.release_all().into_iter().for_each(send);
        self.screen().fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desktop() -> Framebuffer {
        let mut fb = Framebuffer::default();
        fb.resize(2, 2);
        let px: Vec<u8> = [[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [255, 255, 255, 0]].concat();
        fb.put_bgrx(Rect::new(0, 0, 2, 2), &px).unwrap();
        fb
    }

    #[test]
    fn blits_32bpp_unscaled_with_padding_lines() {
        let fb = desktop();
        let fmt = PixFmt { bytes: 4, r: (16, 8), g: (8, 8), b: (0, 8) };
        let fit = Fit::new(2, 2, 4, 2, true);
        let fit = if fit.is_unscaled() { fit } else { Fit::new(2, 2, 4, 2, false) };
        let (xm, ym) = (Fit::sample_map(fit.w, 2), Fit::sample_map(fit.h, 2));
        let line = 20; // 4 pixels of 4 bytes plus 4 bytes of padding
        let mut scr = vec![0u8; line * 2];
        blit(&mut scr, line, fmt, &fb, &fit, &xm, &ym, Rect::new(0, 0, 4, 2));
        assert_eq!(&scr[4..8], &[255, 0, 0, 0]); // centred: desktop starts at x=1
        assert_eq!(&scr[line + 8..line + 12], &[255, 255, 255, 0]);
        assert_eq!(&scr[16..20], &[0; 4]);
    }

    #[test]
    fn blits_16bpp_scaled() {
        let fb = desktop();
        let fmt = PixFmt { bytes: 2, r: (11, 5), g: (5, 6), b: (0, 5) };
        let fit = Fit::new(2, 2, 4, 4, true);
        let (xm, ym) = (Fit::sample_map(fit.w, 2), Fit::sample_map(fit.h, 2));
        let mut scr = vec![0u8; 8 * 4];
        blit(&mut scr, 8, fmt, &fb, &fit, &xm, &ym, Rect::new(0, 0, 4, 4));
        let px = |x: usize, y: usize| u16::from_le_bytes([scr[y * 8 + x * 2], scr[y * 8 + x * 2 + 1]]);
        assert_eq!(px(0, 0), 0x001f); // blue
        assert_eq!(px(3, 0), 0x07e0); // green
        assert_eq!(px(0, 3), 0xf800); // red
        assert_eq!(px(3, 3), 0xffff);
    }

    #[test]
    fn cursor_is_clipped_and_masked() {
        let fmt = PixFmt { bytes: 4, r: (16, 8), g: (8, 8), b: (0, 8) };
        let c = Cursor { hot_x: 1, hot_y: 1, w: 2, h: 2, bgra: [[1, 2, 3, 255], [9, 9, 9, 0], [4, 5, 6, 255], [7, 8, 9, 255]].concat() };
        let mut scr = vec![0u8; 4 * 4 * 4];
        let r = draw_cursor(&mut scr, 16, fmt, &c, (0, 0), (4, 4)).unwrap();
        assert_eq!(r, Rect::new(0, 0, 1, 1));
        assert_eq!(&scr[..4], &[7, 8, 9, 0]);
        assert!(draw_cursor(&mut scr, 16, fmt, &c, (-5, -5), (4, 4)).is_none());
    }

    #[test]
    fn pixel_formats() {
        let rgb24 = PixFmt { bytes: 3, r: (16, 8), g: (8, 8), b: (0, 8) };
        assert_eq!(rgb24.pack(&[1, 2, 3, 0]), 0x030201);
        assert!(!rgb24.is_bgrx());
    }
}
