//! VeNCrypt (RFB security type 19), the proxy's server half, without I/O: the messages before
//! the TLS handshake and the Plain credentials after it.
//!
//! The proxy offers one subtype, X509Plain: TLS with the certificate the deployment's CA
//! issued to the boot server, then a username and password in the clear inside the tunnel.
//! The password is the session token; the username means nothing here. VeNCrypt rather than
//! RFB's VNC authentication because the latter's DES response to a sniffed challenge gives
//! the token away offline, and rather than a custom scheme because stock viewers (TigerVNC,
//! gtk-vnc, Remmina) speak it.
//!
//! The exchange (VeNCrypt 0.2, as TigerVNC and QEMU speak it):
//!
//! ```text
//! server: 0 2                      its version
//! client: 0 2                      the version it speaks
//! server: 0, 1, u32 262            version accepted, one subtype: X509Plain
//! client: u32 262                  its pick
//! server: 1                        accepted: the TLS handshake follows
//! ... TLS ...
//! client: u32 ulen, u32 plen, username, password
//! server: SecurityResult
//! ```

/// RFB security type of VeNCrypt.
pub const SECURITY_TYPE: u8 = 19;
/// RFB security type of VNC authentication (DES challenge and response).
pub const VNC_AUTH: u8 = 2;
/// VeNCrypt subtype: TLS with an X.509 certificate, then Plain username and password.
pub const X509_PLAIN: u32 = 262;
/// The VeNCrypt version the proxy speaks, and sends first.
pub const VERSION: [u8; 2] = [0, 2];
/// Longest Plain username or password accepted: a token is tens of bytes, and the lengths are
/// u32 that a peer could set to 4 GiB.
pub const MAX_CREDENTIAL: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VencryptError {
    #[error("VeNCrypt version {0}.{1}; only 0.2 is spoken")]
    Version(u8, u8),
    #[error("VeNCrypt subtype {0}; only X509Plain (262) is offered")]
    Subtype(u32),
    #[error("Plain {what} of {len} bytes, more than {MAX_CREDENTIAL}")]
    TooLong { what: &'static str, len: u32 },
    #[error("Plain password is not UTF-8")]
    NotUtf8,
}

/// The server's answer to the client's version: accepted, followed by the subtype list.
pub fn version_reply(client: [u8; 2]) -> Result<Vec<u8>, VencryptError> {
    if client != VERSION {
        return Err(VencryptError::Version(client[0], client[1]));
    }
    let mut v = vec![0, 1];
    v.extend_from_slice(&X509_PLAIN.to_be_bytes());
    Ok(v)
}

/// What the server sends when the client's version is not 0.2, before hanging up.
pub const VERSION_REFUSED: [u8; 1] = [1];

/// The server's answer to the client's subtype pick: 1, after which TLS starts.
pub fn subtype_reply(pick: [u8; 4]) -> Result<[u8; 1], VencryptError> {
    match u32::from_be_bytes(pick) {
        X509_PLAIN => Ok([1]),
        other => Err(VencryptError::Subtype(other)),
    }
}

/// What the server sends when the client picked a subtype it did not offer.
pub const SUBTYPE_REFUSED: [u8; 1] = [0];

/// The username and password lengths that open a Plain message, checked against
/// [`MAX_CREDENTIAL`] before anything is allocated for them.
pub fn plain_lengths(head: [u8; 8]) -> Result<(usize, usize), VencryptError> {
    let [u0, u1, u2, u3, p0, p1, p2, p3] = head;
    let user = u32::from_be_bytes([u0, u1, u2, u3]);
    let pass = u32::from_be_bytes([p0, p1, p2, p3]);
    if user > MAX_CREDENTIAL {
        return Err(VencryptError::TooLong { what: "username", len: user });
    }
    if pass > MAX_CREDENTIAL {
        return Err(VencryptError::TooLong { what: "password", len: pass });
    }
    Ok((user as usize, pass as usize))
}

/// The password of a Plain message's body (the username, its first `user_len` bytes, is
/// skipped: the token alone names the session).
pub fn plain_password(body: &[u8], user_len: usize) -> Result<String, VencryptError> {
    let pass = body.get(user_len..).unwrap_or_default();
    String::from_utf8(pass.to_vec()).map_err(|_| VencryptError::NotUtf8)
}

/// A whole Plain message at the start of `buf`: the password and the message's length, or
/// `None` while more bytes are needed.
pub fn parse_plain(buf: &[u8]) -> Result<Option<(String, usize)>, VencryptError> {
    let Some(head) = buf.first_chunk::<8>() else {
        return Ok(None);
    };
    let (user, pass) = plain_lengths(*head)?;
    let end = 8 + user + pass;
    let Some(body) = buf.get(8..end) else {
        return Ok(None);
    };
    Ok(Some((plain_password(body, user)?, end)))
}

/// A Plain message as a client sends it (for tests and the fuzz target's round trip).
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + user.len() + password.len());
    v.extend_from_slice(&(user.len() as u32).to_be_bytes());
    v.extend_from_slice(&(password.len() as u32).to_be_bytes());
    v.extend_from_slice(user.as_bytes());
    v.extend_from_slice(password.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_negotiation_accepts_0_2_and_x509plain_only() {
        assert_eq!(version_reply([0, 2]).unwrap(), vec![0, 1, 0, 0, 1, 6]);
        assert_eq!(version_reply([0, 1]), Err(VencryptError::Version(0, 1)));
        assert_eq!(version_reply([2, 0]), Err(VencryptError::Version(2, 0)));
        assert_eq!(subtype_reply([0, 0, 1, 6]), Ok([1]));
        // X509None (260) and TLSPlain (259) would give a password without, or to an unchecked,
        // certificate.
        assert_eq!(subtype_reply([0, 0, 1, 4]), Err(VencryptError::Subtype(260)));
        assert_eq!(subtype_reply([0, 0, 1, 3]), Err(VencryptError::Subtype(259)));
    }

    #[test]
    fn plain_messages_parse_whole_and_wait_for_more() {
        let m = plain_message("user", "tok-123");
        assert_eq!(parse_plain(&m), Ok(Some(("tok-123".to_string(), m.len()))));
        for cut in 0..m.len() {
            assert_eq!(parse_plain(&m[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = m.clone();
        more.extend_from_slice(b"next");
        assert_eq!(parse_plain(&more), Ok(Some(("tok-123".to_string(), m.len()))));
        assert_eq!(parse_plain(&plain_message("", "")), Ok(Some((String::new(), 8))));
    }

    #[test]
    fn lengths_are_capped_before_anything_is_read() {
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        assert_eq!(parse_plain(&huge), Err(VencryptError::TooLong { what: "username", len: u32::MAX }));
        let long_pass = [0, 0, 0, 0, 0, 0, 4, 1];
        assert_eq!(plain_lengths(long_pass), Err(VencryptError::TooLong { what: "password", len: 1025 }));
        let at_cap = [0, 0, 4, 0, 0, 0, 4, 0];
        assert_eq!(plain_lengths(at_cap), Ok((1024, 1024)));
    }

    #[test]
    fn a_password_that_is_not_utf8_is_refused() {
        let m = [0, 0, 0, 1, 0, 0, 0, 2, b'u', 0xc3, 0x28];
        assert_eq!(parse_plain(&m), Err(VencryptError::NotUtf8));
    }
}
