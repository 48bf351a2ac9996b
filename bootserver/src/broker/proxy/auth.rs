//! VNC authentication (RFC 6143 section 7.2.2) and the session tokens that serve as its
//! passwords.
//!
//! Why VNC authentication rather than a custom token exchange: every viewer speaks it (the
//! team's, TigerVNC, vnc-rs, noVNC), so a user can also reach their desktop with a stock
//! viewer. Its weakness is that only the first 8 bytes of a password count (48 bits of a token
//! here), and one sniffed challenge and response is enough to search them offline; so a token
//! is 128 bits and more from the OS's random source, whole where it is presented whole (a
//! VeNCrypt Plain password), its first 8 bytes are unique among live sessions, it is replaced
//! at every assignment and handoff and dies with the session, and each failed attempt costs
//! the peer a delay. Only its SHA-256 is ever stored.

use des::cipher::{BlockEncrypt, KeyInit};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

/// How much of a password VNC authentication uses.
pub const VNC_KEY_LEN: usize = 8;
/// Length of a session token: 22 symbols of 6 bits, 132 bits in all.
pub const TOKEN_LEN: usize = 22;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

const _: () = assert!(TOKEN_LEN * 6 >= 128, "a token carries at least 128 random bits");

/// SHA-256 of a token: what the session store keeps.
pub type TokenHash = [u8; 32];

/// A fresh session token from the OS's random source (not a user-space generator seeded
/// once: a token outlives nothing that could predict it).
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(b & 63)] as char).collect()
}

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A hash as the session store writes it.
pub fn hash_hex(h: &TokenHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash `hash_hex` wrote, if `text` is one.
pub fn parse_hash(text: &str) -> Option<TokenHash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn tokens_carry_128_bits_of_the_alphabet_and_are_stored_as_hashes() {
        let t = new_token();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(new_token(), t);
        // Every symbol shows up over a few thousand tokens: all 6 bits of each byte are used.
        let seen: std::collections::HashSet<u8> = (0..200).flat_map(|_| new_token().into_bytes()).collect();
        assert_eq!(seen.len(), 64);
        // SHA-256, checked against `printf abc | sha256sum`.
        assert_eq!(
            hash_hex(&token_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = token_hash(&t);
        assert_eq!(parse_hash(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash(&t), None, "a plaintext token is no hash");
        assert!(same(&h, &token_hash(&t)) && !same(&h, &token_hash("other")) && !same(&h, &h[..31]));
    }
}
