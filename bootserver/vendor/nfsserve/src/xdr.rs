use byteorder::BigEndian;
use byteorder::{ReadBytesExt, WriteBytesExt};
use std::io::{Read, Write};
pub type XDREndian = BigEndian;
use crate::nfs::nfsstring;

/// See https://datatracker.ietf.org/doc/html/rfc1014

#[allow(clippy::upper_case_acronyms)]
pub trait XDR {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()>;
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()>;
}

/// Serializes a basic enumeration.
/// Casts everything as u32 BigEndian
#[allow(non_camel_case_types)]
#[macro_export]
macro_rules! XDREnumSerde {
    ($t:ident) => {
        impl XDR for $t {
            fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
                dest.write_u32::<XDREndian>(*self as u32)
            }
            fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
                let r: u32 = src.read_u32::<XDREndian>()?;
                if let Some(p) = FromPrimitive::from_u32(r) {
                    *self = p;
                } else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("Invalid value for {}", stringify!($t)),
                    ));
                }
                Ok(())
            }
        }
    };
}

/// Serializes a bool as a 4 byte big endian integer.
impl XDR for bool {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        let val: u32 = *self as u32;
        dest.write_u32::<XDREndian>(val)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        let val: u32 = src.read_u32::<XDREndian>()?;
        *self = val > 0;
        Ok(())
    }
}

/// Serializes a i32 as a 4 byte big endian integer.
impl XDR for i32 {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        dest.write_i32::<XDREndian>(*self)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        *self = src.read_i32::<XDREndian>()?;
        Ok(())
    }
}

/// Serializes a i64 as a 8 byte big endian integer.
impl XDR for i64 {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        dest.write_i64::<XDREndian>(*self)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        *self = src.read_i64::<XDREndian>()?;
        Ok(())
    }
}

/// Serializes a u32 as a 4 byte big endian integer.
impl XDR for u32 {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        dest.write_u32::<XDREndian>(*self)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        *self = src.read_u32::<XDREndian>()?;
        Ok(())
    }
}

/// Serializes a u64 as a 8 byte big endian integer.
impl XDR for u64 {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        dest.write_u64::<XDREndian>(*self)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        *self = src.read_u64::<XDREndian>()?;
        Ok(())
    }
}

impl<const N: usize> XDR for [u8; N] {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        dest.write_all(self)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        src.read_exact(self)
    }
}

/// Largest opaque or string field accepted from a peer, whatever its type allows. A record
/// is capped well below this (see `rpcwire`); the cap keeps the decoder safe on its own.
pub const MAX_OPAQUE: usize = 4 << 20;
/// Largest counted array accepted from a peer.
pub const MAX_ARRAY: usize = 1 << 16;

fn too_long(what: &str, length: usize, max: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{what} of {length} items, at most {max} allowed"),
    )
}

/// Reads a variable-length opaque of at most `max` bytes, with its padding, into `out`.
/// Memory grows with the bytes that actually arrive, so a length field that promises more
/// than the message holds fails at the message's end instead of allocating what it claims.
pub fn deserialize_opaque<R: Read>(
    src: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    let length = src.read_u32::<XDREndian>()? as usize;
    if length > max {
        return Err(too_long("opaque", length, max));
    }
    out.clear();
    out.reserve(length.min(4096));
    (&mut *src).take(length as u64).read_to_end(out)?;
    if out.len() != length {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let pad = (4 - length % 4) % 4;
    let mut zeros: [u8; 4] = [0, 0, 0, 0];
    src.read_exact(&mut zeros[..pad])
}

/// Reads a counted array of at most `max` u32s into `out`, growing with what arrives.
pub fn deserialize_u32s<R: Read>(
    src: &mut R,
    out: &mut Vec<u32>,
    max: usize,
) -> std::io::Result<()> {
    let length = src.read_u32::<XDREndian>()? as usize;
    if length > max {
        return Err(too_long("array", length, max));
    }
    out.clear();
    out.reserve(length.min(1024));
    for _ in 0..length {
        out.push(src.read_u32::<XDREndian>()?);
    }
    Ok(())
}

impl XDR for Vec<u8> {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        assert!(self.len() < u32::MAX as usize);
        let length = self.len() as u32;
        length.serialize(dest)?;
        dest.write_all(self)?;
        // write padding
        let pad = ((4 - length % 4) % 4) as usize;
        let zeros: [u8; 4] = [0, 0, 0, 0];
        if pad > 0 {
            dest.write_all(&zeros[..pad])?;
        }
        Ok(())
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        deserialize_opaque(src, self, MAX_OPAQUE)
    }
}

/// Longest path or file name accepted (Linux's PATH_MAX); names are shorter still, but the
/// type is shared with paths.
pub const MAX_NFSSTRING: usize = 4096;

impl XDR for nfsstring {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        self.0.serialize(dest)
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        deserialize_opaque(src, &mut self.0, MAX_NFSSTRING)
    }
}

impl XDR for Vec<u32> {
    fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
        assert!(self.len() < u32::MAX as usize);
        let length = self.len() as u32;
        length.serialize(dest)?;
        for i in self {
            i.serialize(dest)?;
        }
        Ok(())
    }
    fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
        deserialize_u32s(src, self, MAX_ARRAY)
    }
}

#[allow(non_camel_case_types)]
#[macro_export]
macro_rules! XDRStruct {
    (
        $t:ident,
        $($element:ident),*
    ) => {
        impl XDR for $t {
            fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
                $(self.$element.serialize(dest)?;)*
                Ok(())
            }
            fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
                $(self.$element.deserialize(src)?;)*
                Ok(())
            }
        }
    };
}

/// This macro only handles XDR Unions of the form
///       union pre_op_attr switch (bool attributes_follow) {
///       case TRUE:
///            wcc_attr  attributes;
///       case FALSE:
///            void;
///       };
/// This is translated to
///       enum pre_op_attr  {
///          Void,
///          attributes(wcc_attr)
///       }
/// The serde methods can be generated with XDRBoolUnion(pre_op_attr, attributes, wcc_attr)
/// The "true" type must have the Default trait
#[allow(non_camel_case_types)]
#[macro_export]
macro_rules! XDRBoolUnion {
    (
        $t:ident, $enumcase:ident, $enumtype:ty
    ) => {
        impl XDR for $t {
            fn serialize<R: Write>(&self, dest: &mut R) -> std::io::Result<()> {
                match self {
                    $t::Void => {
                        false.serialize(dest)?;
                    }
                    $t::$enumcase(v) => {
                        true.serialize(dest)?;
                        v.serialize(dest)?;
                    }
                }
                Ok(())
            }
            fn deserialize<R: Read>(&mut self, src: &mut R) -> std::io::Result<()> {
                let mut c: bool = false;
                c.deserialize(src)?;
                if c == false {
                    *self = $t::Void;
                } else {
                    let mut r = <$enumtype>::default();
                    r.deserialize(src)?;
                    *self = $t::$enumcase(r);
                }
                Ok(())
            }
        }
    };
}

pub(crate) use XDRBoolUnion;
pub(crate) use XDREnumSerde;
pub(crate) use XDRStruct;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::nfs_fh3;
    use crate::rpc::{auth_unix, call_body, opaque_auth, rpc_msg};
    use std::io::Cursor;

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn opaque_lengths_beyond_the_data_fail_without_allocating() {
        // 4 GiB announced, 8 bytes present.
        let mut v: Vec<u8> = Vec::new();
        let e = v
            .deserialize(&mut Cursor::new(words(&[u32::MAX, 1, 2])))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Under the cap but past the end: fails at the end, memory as small as the data.
        let mut v: Vec<u8> = Vec::new();
        let e = v
            .deserialize(&mut Cursor::new(words(&[3 << 20, 1, 2])))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(v.capacity() < 16 << 10, "{}", v.capacity());
        // A good one, with its padding.
        let mut v: Vec<u8> = Vec::new();
        let mut c = Cursor::new([&words(&[5])[..], b"hello\0\0\0", &words(&[9])[..]].concat());
        v.deserialize(&mut c).unwrap();
        assert_eq!(v, b"hello");
        assert_eq!(c.position(), 12);
    }

    #[test]
    fn arrays_and_typed_fields_have_their_limits() {
        let mut gids: Vec<u32> = Vec::new();
        assert!(gids
            .deserialize(&mut Cursor::new(words(&[0x4000_0000, 1])))
            .is_err());
        assert!(gids.capacity() < 4096);
        // AUTH_UNIX: stamp, machinename, uid, gid, gids<16>.
        let cred = |n: u32| {
            let mut w = vec![1, 4, u32::from_be_bytes(*b"host"), 1000, 1000, n];
            w.extend(0..n.min(40));
            words(&w)
        };
        let mut a = auth_unix::default();
        a.deserialize(&mut Cursor::new(cred(16))).unwrap();
        for n in [17, 40, 0x3fff_ffff, u32::MAX] {
            let e = auth_unix::default()
                .deserialize(&mut Cursor::new(cred(n)))
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{n} gids");
        }
        let long_name = words(&[1, 256]);
        assert!(auth_unix::default()
            .deserialize(&mut Cursor::new(long_name))
            .is_err());
        // Credentials are at most 400 bytes, file handles 64.
        let mut cred = words(&[1, 401]);
        cred.resize(cred.len() + 404, 0);
        assert!(opaque_auth::default()
            .deserialize(&mut Cursor::new(cred))
            .is_err());
        let mut fh = words(&[65]);
        fh.resize(fh.len() + 68, 0);
        assert!(nfs_fh3::default()
            .deserialize(&mut Cursor::new(fh))
            .is_err());
        let mut name = words(&[5000]);
        name.resize(name.len() + 5000, b'a');
        assert!(nfsstring::default()
            .deserialize(&mut Cursor::new(name))
            .is_err());
    }

    #[test]
    fn a_call_with_a_bad_message_type_is_refused() {
        let mut c = Cursor::new(words(&[7, 5, 2, 100003, 3, 0, 0, 0, 0, 0]));
        assert!(rpc_msg::default().deserialize(&mut c).is_err());
        // A well-formed call decodes.
        let mut c = Cursor::new(words(&[7, 0, 2, 100003, 3, 0, 0, 0, 0, 0]));
        let mut m = rpc_msg::default();
        m.deserialize(&mut c).unwrap();
        assert!(matches!(
            m.body,
            crate::rpc::rpc_body::CALL(call_body { prog: 100003, .. })
        ));
    }
}
