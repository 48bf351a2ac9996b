//! Keyboard and pointer translation: physical keys (Linux input key codes, which evdev gives
//! directly and SDL's USB scancodes map to) through a layout table to X keysyms, which is what
//! RFB sends. Pure: presenters feed it key codes and get keysyms back.

use std::collections::HashMap;

/// What a presenter hands to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputEvent {
    Key { keysym: u32, down: bool },
    /// Desktop coordinates and the RFB button mask (1 left, 2 middle, 4 right, 8/16 wheel).
    Pointer { x: u16, y: u16, buttons: u8 },
    /// Ctrl+Alt+Shift+Q, or the window was closed.
    Quit,
    /// The logout keys (`--logout-keys`): the viewer exits with [`LOGOUT_EXIT_CODE`].
    Logout,
}

/// The viewer's exit status after the logout keys: the agent then logs out instead of
/// starting the viewer again.
pub(crate) const LOGOUT_EXIT_CODE: i32 = 10;

/// A key combination such as `Ctrl+Alt+End`: modifiers (either side) and one key whose
/// keysym does not depend on the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chord {
    ctrl: bool,
    alt: bool,
    shift: bool,
    code: u16,
}

/// Names of the keys a chord may end with, and their Linux key codes.
const CHORD_KEYS: &[(&str, u16)] = &[
    ("End", 107),
    ("Home", 102),
    ("Insert", 110),
    ("Delete", 111),
    ("Del", 111),
    ("PageUp", 104),
    ("PageDown", 109),
    ("Pause", 119),
    ("Backspace", 14),
    ("Escape", 1),
    ("Esc", 1),
    ("F1", 59),
    ("F2", 60),
    ("F3", 61),
    ("F4", 62),
    ("F5", 63),
    ("F6", 64),
    ("F7", 65),
    ("F8", 66),
    ("F9", 67),
    ("F10", 68),
    ("F11", 87),
    ("F12", 88),
];

impl std::str::FromStr for Chord {
    type Err = String;
    fn from_str(s: &str) -> Result<Chord, String> {
        let (mut ctrl, mut alt, mut shift, mut code) = (false, false, false, None);
        for part in s.split('+').map(str::trim) {
            let found = CHORD_KEYS.iter().find(|(n, _)| n.eq_ignore_ascii_case(part)).map(|(_, c)| *c);
            match part.to_ascii_lowercase().as_str() {
                "ctrl" | "control" => ctrl = true,
                "alt" => alt = true,
                "shift" => shift = true,
                _ if found.is_some() && code.is_none() => code = found,
                _ => {
                    let names: Vec<&str> = CHORD_KEYS.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "{s:?}: {part:?} is not Ctrl, Alt, Shift or one of {}",
                        names.join(", ")
                    ));
                }
            }
        }
        let code = code.ok_or_else(|| format!("{s:?} names no key besides modifiers"))?;
        if !(ctrl || alt) {
            // A chord without Ctrl or Alt would be typed by accident in the desktop.
            return Err(format!("{s:?} needs Ctrl or Alt"));
        }
        Ok(Chord { ctrl, alt, shift, code })
    }
}

impl std::fmt::Display for Chord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = CHORD_KEYS.iter().find(|(_, c)| *c == self.code).map_or("?", |(n, _)| n);
        for (on, name) in [(self.ctrl, "Ctrl+"), (self.alt, "Alt+"), (self.shift, "Shift+")] {
            if on {
                f.write_str(name)?;
            }
        }
        f.write_str(key)
    }
}


#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Layout {
    /// US English (QWERTY).
    Us,
    /// German (QWERTZ, AltGr symbols).
    De,
}

// Linux input key codes (linux/input-event-codes.h) that the layout logic names.
const KEY_Q: u16 = 16;
const KEY_LEFTCTRL: u16 = 29;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTSHIFT: u16 = 54;
const KEY_LEFTALT: u16 = 56;
const KEY_CAPSLOCK: u16 = 58;
const KEY_RIGHTCTRL: u16 = 97;
const KEY_RIGHTALT: u16 = 100;

/// Keys whose keysym does not depend on the layout.
fn fixed_keysym(code: u16) -> Option<u32> {
    Some(match code {
        1 => 0xff1b,   // Escape
        14 => 0xff08,  // BackSpace
        15 => 0xff09,  // Tab
        28 => 0xff0d,  // Return
        29 => 0xffe3,  // Control_L
        42 => 0xffe1,  // Shift_L
        54 => 0xffe2,  // Shift_R
        55 => 0xffaa,  // KP_Multiply
        56 => 0xffe9,  // Alt_L
        57 => 0x20,    // space
        58 => 0xffe5,  // Caps_Lock
        59..=68 => 0xffbe + u32::from(code - 59), // F1..F10
        69 => 0xff7f,  // Num_Lock
        70 => 0xff14,  // Scroll_Lock
        71 => 0xffb7,
        72 => 0xffb8,
        73 => 0xffb9,
        74 => 0xffad, // KP_Subtract
        75 => 0xffb4,
        76 => 0xffb5,
        77 => 0xffb6,
        78 => 0xffab, // KP_Add
        79 => 0xffb1,
        80 => 0xffb2,
        81 => 0xffb3,
        82 => 0xffb0,
        83 => 0xffae, // KP_Decimal
        87 => 0xffc8, // F11
        88 => 0xffc9, // F12
        96 => 0xff8d, // KP_Enter
        97 => 0xffe4, // Control_R
        98 => 0xffaf, // KP_Divide
        99 => 0xff61, // Print
        102 => 0xff50, // Home
        103 => 0xff52, // Up
        104 => 0xff55, // Prior
        105 => 0xff51, // Left
        106 => 0xff53, // Right
        107 => 0xff57, // End
        108 => 0xff54, // Down
        109 => 0xff56, // Next
        110 => 0xff63, // Insert
        111 => 0xffff, // Delete
        119 => 0xff13, // Pause
        125 => 0xffeb, // Super_L
        126 => 0xffec, // Super_R
        127 => 0xff67, // Menu
        _ => return None,
    })
}

/// Printable keys as rows of Linux key codes, matched with the layout strings below.
const ROWS: [&[u16]; 5] = [
    &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    &[16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27],
    &[30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 43],
    &[44, 45, 46, 47, 48, 49, 50, 51, 52, 53],
    &[86],
];

struct LayoutTable {
    /// Per row: plain, with Shift, with AltGr (space = none).
    rows: [(&'static str, &'static str, &'static str); 5],
    /// Right Alt is AltGr (ISO_Level3_Shift) rather than a second Alt.
    altgr: bool,
}

const US: LayoutTable = LayoutTable {
    rows: [
        ("1234567890-=", "!@#$%^&*()_+", "            "),
        ("qwertyuiop[]", "QWERTYUIOP{}", "            "),
        ("asdfghjkl;'`\\", "ASDFGHJKL:\"~|", "             "),
        ("zxcvbnm,./", "ZXCVBNM<>?", "          "),
        ("\\", "|", " "),
    ],
    altgr: false,
};

const DE: LayoutTable = LayoutTable {
    rows: [
        ("1234567890ß´", "!\"§$%&/()=?`", " ²³   {[]}\\ "),
        ("qwertzuiopü+", "QWERTZUIOPÜ*", "@ €        ~"),
        ("asdfghjklöä^#", "ASDFGHJKLÖÄ°'", "             "),
        ("yxcvbnm,.-", "YXCVBNM;:_", "      µ   "),
        ("<", ">", "|"),
    ],
    altgr: true,
};

/// X keysym of a character: Latin-1 maps to itself, the rest to the Unicode keysym range.
fn char_keysym(c: char) -> u32 {
    match c as u32 {
        0x20..=0x7e | 0xa0..=0xff => c as u32,
        0x20ac => 0x20ac, // EuroSign
        u => 0x0100_0000 | u,
    }
}

/// Keyboard state: modifiers, and the keysym each held key went down with, so that its
/// release sends the same keysym even if Shift changed in between (servers keep keys stuck
/// otherwise).
pub(crate) struct Keyboard {
    table: HashMap<u16, [Option<u32>; 3]>,
    altgr_layout: bool,
    held: HashMap<u16, u32>,
    shift: u8,
    ctrl: u8,
    alt: u8,
    altgr: bool,
    caps: bool,
    logout: Option<Chord>,
}

impl Keyboard {
    pub(crate) fn new(layout: Layout) -> Self {
        let t = match layout {
            Layout::Us => &US,
            Layout::De => &DE,
        };
        let mut table = HashMap::new();
        for (codes, (plain, shifted, altgr)) in ROWS.iter().zip(t.rows.iter()) {
            let cols = [plain, shifted, altgr].map(|s| s.chars().collect::<Vec<_>>());
            for (i, &code) in codes.iter().enumerate() {
                let get = |n: usize| cols[n].get(i).filter(|c| **c != ' ').map(|&c| char_keysym(c));
                table.insert(code, [get(0), get(1), get(2)]);
            }
        }
        Self {
            table,
            altgr_layout: t.altgr,
            held: HashMap::new(),
            shift: 0,
            ctrl: 0,
            alt: 0,
            altgr: false,
            caps: false,
            logout: None,
        }
    }

    /// Also report `chord` as [`InputEvent::Logout`] (the key itself is not sent on).
    pub(crate) fn with_logout(mut self, chord: Option<Chord>) -> Self {
        self.logout = chord;
        self
    }

    /// A Ctrl key is held: the letter keys then make shortcuts, not text.
    pub(crate) fn ctrl_held(&self) -> bool {
        self.ctrl > 0
    }

    /// A physical key changed; returns what to send (nothing for unknown keys).
    pub(crate) fn key(&mut self, code: u16, down: bool) -> Option<InputEvent> {
        let bump = |n: &mut u8| if down { *n = n.saturating_add(1) } else { *n = n.saturating_sub(1) };
        match code {
            KEY_LEFTSHIFT | KEY_RIGHTSHIFT => bump(&mut self.shift),
            KEY_LEFTCTRL | KEY_RIGHTCTRL => bump(&mut self.ctrl),
            KEY_LEFTALT => bump(&mut self.alt),
            KEY_RIGHTALT if !self.altgr_layout => bump(&mut self.alt),
            KEY_RIGHTALT => self.altgr = down,
            KEY_CAPSLOCK if down => self.caps = !self.caps,
            _ => {}
        }
        if down && code == KEY_Q && self.shift > 0 && self.ctrl > 0 && self.alt > 0 {
            return Some(InputEvent::Quit);
        }
        if let Some(c) = self.logout.filter(|c| down && c.code == code) {
            let held = |want: bool, n: u8| !want || n > 0;
            // AltGr counts as Alt here: on a German keyboard either may be reached for.
            let alt = if self.altgr { 1 } else { self.alt };
            if held(c.ctrl, self.ctrl) && held(c.alt, alt) && held(c.shift, self.shift) {
                return Some(InputEvent::Logout);
            }
        }
        let keysym = if !down {
            self.held.remove(&code)?
        } else {
            let ks = self.keysym(code)?;
            self.held.insert(code, ks);
            ks
        };
        Some(InputEvent::Key { keysym, down })
    }

    fn keysym(&self, code: u16) -> Option<u32> {
        if code == KEY_RIGHTALT {
            return Some(if self.altgr_layout { 0xfe03 } else { 0xffea });
        }
        if let Some(ks) = fixed_keysym(code) {
            return Some(ks);
        }
        let [plain, shifted, altgr] = *self.table.get(&code)?;
        if self.altgr {
            return altgr.or(plain);
        }
        let letter = plain.is_some_and(|k| (0x61..=0x7a).contains(&k) || (0xe0..=0xfe).contains(&k));
        let shift = (self.shift > 0) ^ (self.caps && letter);
        if shift {
            shifted.or(plain)
        } else {
            plain
        }
    }

    /// Keys still held when the connection or the viewer goes away: release them remotely.
    pub(crate) fn release_all(&mut self) -> Vec<InputEvent> {
        self.shift = 0;
        self.ctrl = 0;
        self.alt = 0;
        self.altgr = false;
        self.held.drain().map(|(_, keysym)| InputEvent::Key { keysym, down: false }).collect()
    }
}

/// SDL scancodes are USB HID usage ids; this maps them to Linux key codes so that both
/// presenters share one layout table.
#[cfg_attr(not(feature = "sdl"), allow(dead_code))]
pub(crate) fn hid_to_linux(usage: u32) -> Option<u16> {
    const LETTERS: [u16; 26] = [
        30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38, 50, 49, 24, 25, 16, 19, 31, 20, 22, 47,
        17, 45, 21, 44,
    ];
    Some(match usage {
        4..=29 => LETTERS[(usage - 4) as usize],
        30..=38 => (usage - 30 + 2) as u16, // 1..9
        39 => 11,                           // 0
        40 => 28,
        41 => 1,
        42 => 14,
        43 => 15,
        44 => 57,
        45 => 12,
        46 => 13,
        47 => 26,
        48 => 27,
        49 | 50 => 43,
        51 => 39,
        52 => 40,
        53 => 41,
        54 => 51,
        55 => 52,
        56 => 53,
        57 => 58,
        58..=67 => (usage - 58 + 59) as u16, // F1..F10
        68 => 87,
        69 => 88,
        70 => 99,
        71 => 70,
        72 => 119,
        73 => 110,
        74 => 102,
        75 => 104,
        76 => 111,
        77 => 107,
        78 => 109,
        79 => 106,
        80 => 105,
        81 => 108,
        82 => 103,
        83 => 69,
        84 => 98,
        85 => 55,
        86 => 74,
        87 => 78,
        88 => 96,
        89 => 79,
        90 => 80,
        91 => 81,
        92 => 75,
        93 => 76,
        94 => 77,
        95 => 71,
        96 => 72,
        97 => 73,
        98 => 82,
        99 => 83,
        100 => 86,
        101 => 127,
        224 => 29,
        225 => 42,
        226 => 56,
        227 => 125,
        228 => 97,
        229 => 54,
        230 => 100,
        231 => 126,
        _ => return None,
    })
}

/// Mouse buttons as RFB mask bits; the wheel is buttons 4-7, sent as press then release.
pub(crate) const BUTTON_LEFT: u8 = 1;
pub(crate) const BUTTON_MIDDLE: u8 = 2;
pub(crate) const BUTTON_RIGHT: u8 = 4;
pub(crate) const WHEEL_UP: u8 = 8;
pub(crate) const WHEEL_DOWN: u8 = 16;
pub(crate) const WHEEL_LEFT: u8 = 32;
pub(crate) const WHEEL_RIGHT: u8 = 64;

/// Wheel clicks as pointer events: each click is a press and a release of its button.
pub(crate) fn wheel(x: u16, y: u16, held: u8, dy: i32, dx: i32, out: &mut Vec<InputEvent>) {
    let mut click = |bit: u8, n: i32| {
        for _ in 0..n.unsigned_abs().min(10) {
            out.push(InputEvent::Pointer { x, y, buttons: held | bit });
            out.push(InputEvent::Pointer { x, y, buttons: held });
        }
    };
    click(if dy > 0 { WHEEL_UP } else { WHEEL_DOWN }, dy);
    click(if dx > 0 { WHEEL_RIGHT } else { WHEEL_LEFT }, dx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(e: Option<InputEvent>) -> u32 {
        match e {
            Some(InputEvent::Key { keysym, .. }) => keysym,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn us_letters_shift_and_release_same_keysym() {
        let mut k = Keyboard::new(Layout::Us);
        assert_eq!(ks(k.key(30, true)), 'a' as u32);
        assert_eq!(ks(k.key(30, false)), 'a' as u32);
        assert_eq!(ks(k.key(42, true)), 0xffe1);
        assert_eq!(ks(k.key(3, true)), '@' as u32);
        k.key(42, false);
        // Released after Shift went up: still the keysym it went down with.
        assert_eq!(ks(k.key(3, false)), '@' as u32);
        assert_eq!(k.key(240, true), None);
    }

    #[test]
    fn german_layout_and_altgr() {
        let mut k = Keyboard::new(Layout::De);
        assert_eq!(ks(k.key(21, true)), 'z' as u32);
        assert_eq!(ks(k.key(44, true)), 'y' as u32);
        assert_eq!(ks(k.key(100, true)), 0xfe03);
        assert_eq!(ks(k.key(16, true)), '@' as u32);
        assert_eq!(ks(k.key(18, true)), 0x20ac);
        k.key(100, false);
        assert_eq!(ks(k.key(39, true)), 0xf6); // ö
    }

    #[test]
    fn caps_lock_and_quit_chord() {
        let mut k = Keyboard::new(Layout::Us);
        k.key(58, true);
        k.key(58, false);
        assert_eq!(ks(k.key(30, true)), 'A' as u32);
        assert_eq!(ks(k.key(2, true)), '1' as u32);
        for c in [29, 56, 42] {
            k.key(c, true);
        }
        assert_eq!(k.key(16, true), Some(InputEvent::Quit));
        assert!(k.release_all().len() >= 3);
    }

    #[test]
    fn logout_chord_is_parsed_and_detected_only_with_its_modifiers() {
        let chord: Chord = "Ctrl+Alt+End".parse().unwrap();
        assert_eq!(chord.to_string(), "Ctrl+Alt+End");
        assert_eq!("ctrl + alt + del".parse::<Chord>().unwrap().to_string(), "Ctrl+Alt+Delete");
        assert!("End".parse::<Chord>().is_err(), "a bare key would be typed by accident");
        assert!("Ctrl+Alt".parse::<Chord>().is_err());
        assert!("Ctrl+Alt+Banana".parse::<Chord>().is_err());
        assert!("Ctrl+Alt+End+Home".parse::<Chord>().is_err());

        let mut k = Keyboard::new(Layout::Us).with_logout(Some(chord));
        // End alone, and with Ctrl only, is an ordinary key.
        assert_eq!(ks(k.key(107, true)), 0xff57);
        k.key(107, false);
        k.key(29, true);
        assert_eq!(ks(k.key(107, true)), 0xff57);
        k.key(107, false);
        k.key(56, true);
        assert_eq!(k.key(107, true), Some(InputEvent::Logout));
        // The End that made the logout was never sent down: its release sends nothing.
        assert_eq!(k.key(107, false), None);
        // Right Ctrl and AltGr on a German keyboard do it too.
        let mut k = Keyboard::new(Layout::De).with_logout(Some(chord));
        k.key(97, true);
        k.key(100, true);
        assert_eq!(k.key(107, true), Some(InputEvent::Logout));
        // Without a chord, Ctrl+Alt+End goes to the desktop.
        let mut k = Keyboard::new(Layout::Us);
        k.key(29, true);
        k.key(56, true);
        assert_eq!(ks(k.key(107, true)), 0xff57);
    }

    #[test]
    fn hid_mapping_and_wheel() {
        assert_eq!(hid_to_linux(4), Some(30));
        assert_eq!(hid_to_linux(20), Some(16));
        assert_eq!(hid_to_linux(39), Some(11));
        assert_eq!(hid_to_linux(230), Some(100));
        let mut out = vec![];
        wheel(1, 2, BUTTON_LEFT, -2, 0, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], InputEvent::Pointer { x: 1, y: 2, buttons: BUTTON_LEFT | WHEEL_DOWN });
    }
}
