//! VNC authentication (RFC 6143 section 7.2.2) and the session tokens that serve as its
//! passwords.
//!
//! Why VNC authentication rather than a custom token exchange: every viewer speaks it (the
//! team's, TigerVNC, vnc-rs, noVNC), so a user can also reach their desktop with a stock
//! viewer. Its weakness is that only the first 8 bytes of a password count, so the proxy's
//! tokens are exactly 8 characters from a 64-symbol alphabet (48 bits), are unique among live
//! sessions, die with the session, and each failed attempt costs the peer a delay: guessing
//! online is hopeless. The token never crosses the wire in clear, only the DES response to a
//! fresh random challenge.

use des::cipher::{BlockEncrypt, KeyInit};
use rand::Rng;

/// Length of a session token: VNC authentication uses the first 8 bytes of a password.
pub const TOKEN_LEN: usize = 8;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A fresh random session token.
pub fn new_token() -> String {
    let mut rng = rand::thread_rng();
    (0..TOKEN_LEN).map(|_| ALPHABET[rng.gen_range(0..64)] as char).collect()
}

/// A fresh random challenge.
pub fn new_challenge() -> [u8; 16] {
    rand::thread_rng().gen()
}

/// The response a viewer with `password` sends to `challenge`: DES-ECB of the challenge keyed
/// with the password's first 8 bytes, each byte's bits mirrored (a quirk of the original VNC).
pub fn response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = des::Des::new_from_slice(&key).expect("DES takes an 8-byte key");
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// Compares without an early exit, so timing tells nothing about how much matched.
pub fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_des() {
        // Reference: `openssl enc -des-ecb -nopad -K 0e86ceceeef64e26` (the bit-mirrored
        // "password") on the bytes 00..0f.
        let challenge: [u8; 16] = core::array::from_fn(|i| i as u8);
        let expected = [
            0xb8, 0x66, 0x92, 0x41, 0x25, 0xc8, 0xee, 0xbb, 0x9d, 0xeb, 0xc1, 0xdb, 0x61, 0xc5, 0x38, 0xe2,
        ];
        let r = response(b"password", &challenge);
        assert_eq!(r, expected);
        assert!(same(&r, &expected));
        assert!(!same(&r, &response(b"passwore", &challenge)));
    }

    #[test]
    fn passwords_longer_than_8_bytes_are_cut() {
        let c = new_challenge();
        assert_eq!(response(b"abcdefgh", &c), response(b"abcdefghXYZ", &c));
        assert_ne!(response(b"abcdefgh", &c), response(b"abcdefgX", &c));
    }

    #[test]
    fn tokens_are_8_characters_of_the_alphabet() {
        let t = new_token();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(new_token(), t);
    }
}
