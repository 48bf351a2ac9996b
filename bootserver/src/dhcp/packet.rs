//! DHCP messages on the wire: a client's request parsed into [`Request`], a [`Reply`] emitted
//! into bytes.
//!
//! The fixed BOOTP header is read and written through `smoltcp::wire::DhcpPacket`. Options are
//! walked here rather than with `DhcpPacket::options()` because that iterator silently stops at
//! an option that overruns the packet (we must drop such a packet and say why) and cannot read
//! options overloaded into the `file`/`sname` fields (option 52). `DhcpRepr` is client-oriented
//! (no PXE, vendor or boot options), so replies write their options with smoltcp's
//! `DhcpOptionWriter` on top of `DhcpPacket`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpHardware, DhcpFlags, DhcpMessageType, DhcpOpCode, DhcpOption, DhcpPacket, EthernetAddress,
};

pub(crate) const MAGIC_COOKIE: u32 = 0x6382_5363;
/// Fixed header plus magic cookie.
pub(crate) const HEADER_LEN: usize = 240;
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;
/// BOOTP relays and old PXE ROMs drop replies shorter than a BOOTP message (RFC 1542).
const MIN_REPLY_LEN: usize = 300;
/// What every client must accept (RFC 2131 section 2).
const DEFAULT_MAX_REPLY: usize = 576;
/// Longest value of one option after its repeats are joined (RFC 3396 sets no limit). The
/// longest a client has reason to send (a class, a client identifier, iPXE's encapsulated
/// options) is tens of bytes; more is refused rather than copied.
pub(crate) const MAX_OPTION_LEN: usize = 1024;

pub(crate) mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const BROADCAST: u8 = 28;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER_NAME: u8 = 66;
    pub const BOOTFILE_NAME: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    /// iPXE's encapsulated options (sent by iPXE, and understood by it in replies).
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// Why a datagram is not a usable DHCP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("truncated: {0} bytes, a DHCP message has at least 240")]
    Truncated(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("bad magic cookie {0:#010x}")]
    BadCookie(u32),
    #[error("hardware type {htype} length {hlen}: only Ethernet is served")]
    Hardware { htype: u8, hlen: u8 },
    #[error("option {kind} at offset {at} overruns the {area}")]
    Overrun { kind: u8, at: usize, area: &'static str },
    #[error("no message type (option 53)")]
    MissingType,
    #[error("option {kind} has length {len}, expected {expected}")]
    BadLength { kind: u8, len: usize, expected: &'static str },
    #[error("option {kind} repeated to more than {MAX_OPTION_LEN} bytes")]
    TooLong { kind: u8 },
}

/// A client's message, with the options the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub msg_type: DhcpMessageType,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub client_id: Option<Vec<u8>>,
    pub vendor_class: Option<Vec<u8>>,
    /// Every architecture of option 93 (RFC 4578 2.1), most preferred first.
    pub client_arch: Vec<u16>,
    /// Option 97 as sent (type byte and UUID), echoed back to PXE clients.
    pub client_uuid: Option<Vec<u8>>,
    pub client_ndi: Option<Vec<u8>>,
    pub user_class: Option<Vec<u8>>,
    /// Option 175 was present: the client is iPXE.
    pub ipxe_encap: bool,
    pub max_message_size: Option<u16>,
    pub host_name: Option<String>,
}

/// Walks one options area, appending each option's data to `out` (repeated options are
/// concatenated, RFC 3396, up to [`MAX_OPTION_LEN`]). Returns whether an END option closed
/// the area.
fn walk_options(
    area: &[u8],
    name: &'static str,
    base: usize,
    out: &mut BTreeMap<u8, Vec<u8>>,
) -> Result<bool, ParseError> {
    let mut i = 0;
    while i < area.len() {
        let kind = area[i];
        match kind {
            opt::PAD => i += 1,
            opt::END => return Ok(true),
            _ => {
                let overrun = ParseError::Overrun { kind, at: base + i, area: name };
                let len = *area.get(i + 1).ok_or(overrun.clone())? as usize;
                let data = area.get(i + 2..i + 2 + len).ok_or(overrun)?;
                let value = out.entry(kind).or_default();
                if value.len() + data.len() > MAX_OPTION_LEN {
                    return Err(ParseError::TooLong { kind });
                }
                value.extend_from_slice(data);
                i += 2 + len;
            }
        }
    }
    Ok(false)
}

fn ipv4(kind: u8, data: &[u8]) -> Result<Ipv4Addr, ParseError> {
    let b: [u8; 4] =
        data.try_into().map_err(|_| ParseError::BadLength { kind, len: data.len(), expected: "4" })?;
    Ok(Ipv4Addr::from(b))
}

impl Request {
    pub(crate) fn parse(data: &[u8]) -> Result<Request, ParseError> {
        let pkt = DhcpPacket::new_checked(data).map_err(|_| ParseError::Truncated(data.len()))?;
        if pkt.opcode() != DhcpOpCode::Request {
            return Err(ParseError::NotRequest(data[0]));
        }
        if pkt.magic_number() != MAGIC_COOKIE {
            return Err(ParseError::BadCookie(pkt.magic_number()));
        }
        if pkt.hardware_type() != ArpHardware::Ethernet || pkt.hardware_len() != 6 {
            return Err(ParseError::Hardware { htype: data[1], hlen: data[2] });
        }
        let mut opts = BTreeMap::new();
        walk_options(&data[HEADER_LEN..], "packet", HEADER_LEN, &mut opts)?;
        // Option 52 (RFC 2132 9.3): the file field, then sname, carry more options.
        if let Some(&[overload]) = opts.get(&opt::OVERLOAD).map(Vec::as_slice) {
            if overload & 1 != 0 {
                walk_options(&data[FILE], "file field", FILE.start, &mut opts)?;
            }
            if overload & 2 != 0 {
                walk_options(&data[SNAME], "sname field", SNAME.start, &mut opts)?;
            }
        }
        let msg_type = match opts.get(&opt::MESSAGE_TYPE).map(Vec::as_slice) {
            None => return Err(ParseError::MissingType),
            Some(&[t]) => DhcpMessageType::from(t),
            Some(d) => {
                return Err(ParseError::BadLength { kind: opt::MESSAGE_TYPE, len: d.len(), expected: "1" })
            }
        };
        let requested_ip =
            opts.get(&opt::REQUESTED_IP).map(|d| ipv4(opt::REQUESTED_IP, d)).transpose()?;
        let server_id = opts.get(&opt::SERVER_ID).map(|d| ipv4(opt::SERVER_ID, d)).transpose()?;
        // Lenient with options that only refine the answer: a malformed one counts as absent.
        let client_arch = match opts.get(&opt::CLIENT_ARCH) {
            Some(d) if !d.is_empty() && d.len() % 2 == 0 => {
                d.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
            }
            _ => Vec::new(),
        };
        let max_message_size = match opts.get(&opt::MAX_MESSAGE_SIZE).map(Vec::as_slice) {
            Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
            _ => None,
        };
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(pkt.client_hardware_address().as_bytes());
        let non_empty = |kind: u8| opts.get(&kind).filter(|d| !d.is_empty()).cloned();
        Ok(Request {
            msg_type,
            xid: pkt.transaction_id(),
            secs: pkt.secs(),
            broadcast: pkt.flags().contains(DhcpFlags::BROADCAST),
            ciaddr: pkt.client_ip(),
            giaddr: pkt.relay_agent_ip(),
            chaddr,
            requested_ip,
            server_id,
            client_id: non_empty(opt::CLIENT_ID),
            vendor_class: non_empty(opt::VENDOR_CLASS),
            client_arch,
            client_uuid: non_empty(opt::CLIENT_UUID),
            client_ndi: non_empty(opt::CLIENT_NDI),
            user_class: non_empty(opt::USER_CLASS),
            ipxe_encap: opts.contains_key(&opt::IPXE_ENCAP),
            max_message_size,
            host_name: opts
                .get(&opt::HOST_NAME)
                .map(|d| String::from_utf8_lossy(d).chars().filter(|c| !c.is_control()).collect()),
        })
    }

    /// The lease key: the client identifier when sent, else the hardware address (RFC 2131 4.2).
    pub(crate) fn client_key(&self) -> String {
        match &self.client_id {
            Some(id) => format!("id:{}", hex(id)),
            None => format!("mac:{}", hex(&self.chaddr)),
        }
    }

    pub(crate) fn mac_string(&self) -> String {
        hex(&self.chaddr)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A server message, built by the decision function and emitted by [`Reply::emit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub msg_type: DhcpMessageType,
    pub xid: u32,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub sname: Option<String>,
    pub file: Option<String>,
    /// Options after option 53, in order.
    pub options: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reply does not fit in {0} bytes")]
pub(crate) struct TooLarge(pub usize);

/// Copies `text` into a fixed NUL-padded header field when it fits with its terminator.
fn put_field(field: &mut [u8], text: Option<&str>) {
    field.fill(0);
    if let Some(t) = text.filter(|t| t.len() < field.len()) {
        field[..t.len()].copy_from_slice(t.as_bytes());
    }
}

impl Reply {
    pub(crate) fn new(req: &Request, msg_type: DhcpMessageType) -> Reply {
        Reply {
            msg_type,
            xid: req.xid,
            broadcast: req.broadcast,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            sname: None,
            file: None,
            options: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, kind: u8, data: impl Into<Vec<u8>>) {
        self.options.push((kind, data.into()));
    }

    #[cfg(test)]
    pub(crate) fn option(&self, kind: u8) -> Option<&[u8]> {
        self.options.iter().find(|(k, _)| *k == kind).map(|(_, d)| d.as_slice())
    }

    /// The wire form, at most `max_size` bytes (the client's option 57, at least 576).
    pub(crate) fn emit(&self, max_size: Option<u16>) -> Result<Vec<u8>, TooLarge> {
        let limit = max_size.map_or(DEFAULT_MAX_REPLY, |m| (m as usize).clamp(DEFAULT_MAX_REPLY, 1500));
        let mut buf = vec![0u8; limit];
        let mut pkt = DhcpPacket::new_unchecked(&mut buf[..]);
        pkt.set_opcode(DhcpOpCode::Reply);
        pkt.set_hardware_type(ArpHardware::Ethernet);
        pkt.set_hardware_len(6);
        pkt.set_hops(0);
        pkt.set_transaction_id(self.xid);
        pkt.set_secs(0);
        pkt.set_flags(if self.broadcast { DhcpFlags::BROADCAST } else { DhcpFlags::empty() });
        pkt.set_client_ip(self.ciaddr);
        pkt.set_your_ip(self.yiaddr);
        pkt.set_server_ip(self.siaddr);
        pkt.set_relay_agent_ip(self.giaddr);
        pkt.set_client_hardware_address(EthernetAddress(self.chaddr));
        pkt.set_magic_number(MAGIC_COOKIE);
        {
            let mut w = pkt.options_mut();
            let too_large = |_| TooLarge(limit);
            w.emit(DhcpOption { kind: opt::MESSAGE_TYPE, data: &[self.msg_type.into()] })
                .map_err(too_large)?;
            for (kind, data) in &self.options {
                // Longer values are split into consecutive options (RFC 3396).
                for chunk in data.chunks(255) {
                    w.emit(DhcpOption { kind: *kind, data: chunk }).map_err(too_large)?;
                }
                if data.is_empty() {
                    w.emit(DhcpOption { kind: *kind, data: &[] }).map_err(too_large)?;
                }
            }
            w.end().map_err(too_large)?;
        }
        put_field(&mut buf[SNAME], self.sname.as_deref());
        put_field(&mut buf[FILE], self.file.as_deref());
        // Trim after END, keeping the BOOTP minimum.
        let used = HEADER_LEN + options_len(&buf[HEADER_LEN..]);
        buf.truncate(used.max(MIN_REPLY_LEN));
        Ok(buf)
    }
}

/// Length of a well-formed options area up to and including END.
fn options_len(area: &[u8]) -> usize {
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            opt::END => return i + 1,
            opt::PAD => i += 1,
            _ => i += 2 + area.get(i + 1).copied().unwrap_or(0) as usize,
        }
    }
    area.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a client message the way real clients do: header, cookie, options, END.
    pub(crate) fn client_msg(msg_type: u8, mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b.extend_from_slice(&[opt::MESSAGE_TYPE, 1, msg_type]);
        for (k, d) in options {
            b.push(*k);
            b.push(d.len() as u8);
            b.extend_from_slice(d);
        }
        b.push(opt::END);
        b
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn parses_discover_with_pxe_options() {
        let uuid = [0u8; 17];
        let b = client_msg(
            1,
            MAC,
            &[
                (opt::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016"),
                (opt::CLIENT_ARCH, &[0, 7]),
                (opt::CLIENT_UUID, &uuid),
                (opt::REQUESTED_IP, &[10, 0, 0, 5]),
                (opt::MAX_MESSAGE_SIZE, &[5, 192]),
            ],
        );
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.msg_type, DhcpMessageType::Discover);
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.chaddr, MAC);
        assert_eq!(r.client_arch, vec![7]);
        assert_eq!(r.client_uuid.as_deref(), Some(&uuid[..]));
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(r.max_message_size, Some(1472));
        assert_eq!(r.client_key(), "mac:02:00:00:00:00:01");
    }

    #[test]
    fn each_message_type_parses() {
        for t in 1..=8u8 {
            let r = Request::parse(&client_msg(t, MAC, &[])).unwrap();
            assert_eq!(u8::from(r.msg_type), t);
        }
    }

    #[test]
    fn truncated_header_is_rejected() {
        let b = client_msg(1, MAC, &[]);
        for len in [0, 1, 100, 239] {
            assert_eq!(Request::parse(&b[..len]), Err(ParseError::Truncated(len)));
        }
    }

    #[test]
    fn bad_cookie_and_op_and_hardware() {
        let mut b = client_msg(1, MAC, &[]);
        b[236] = 0x99;
        assert!(matches!(Request::parse(&b), Err(ParseError::BadCookie(_))));
        let mut b = client_msg(1, MAC, &[]);
        b[0] = 2;
        assert_eq!(Request::parse(&b), Err(ParseError::NotRequest(2)));
        let mut b = client_msg(1, MAC, &[]);
        b[2] = 20;
        assert!(matches!(Request::parse(&b), Err(ParseError::Hardware { .. })));
    }

    #[test]
    fn option_overrunning_the_packet() {
        let mut b = client_msg(1, MAC, &[]);
        b.pop();
        b.extend_from_slice(&[opt::HOST_NAME, 10, b'a', b'b']);
        assert!(matches!(Request::parse(&b), Err(ParseError::Overrun { kind: 12, .. })));
        // A kind byte with no length byte.
        let mut b = client_msg(1, MAC, &[]);
        b.pop();
        b.push(opt::HOST_NAME);
        assert!(matches!(Request::parse(&b), Err(ParseError::Overrun { kind: 12, .. })));
    }

    #[test]
    fn missing_or_malformed_message_type() {
        let mut b = client_msg(1, MAC, &[]);
        b.truncate(HEADER_LEN);
        assert_eq!(Request::parse(&b), Err(ParseError::MissingType));
        b.push(opt::END);
        assert_eq!(Request::parse(&b), Err(ParseError::MissingType));
        let mut b = client_msg(1, MAC, &[]);
        b[HEADER_LEN + 1] = 0;
        b.remove(HEADER_LEN + 2);
        assert!(matches!(Request::parse(&b), Err(ParseError::BadLength { kind: 53, .. })));
        let b = client_msg(3, MAC, &[(opt::REQUESTED_IP, &[1, 2, 3])]);
        assert!(matches!(Request::parse(&b), Err(ParseError::BadLength { kind: 50, .. })));
    }

    #[test]
    fn zero_length_options_pad_and_end() {
        // Zero-length options are legal (e.g. rapid commit); pads anywhere; bytes after END
        // are ignored even when they would be garbage.
        let mut b = client_msg(1, MAC, &[(80, &[]), (opt::USER_CLASS, &[])]);
        b.insert(HEADER_LEN, opt::PAD);
        b.insert(HEADER_LEN, opt::PAD);
        b.extend_from_slice(&[opt::HOST_NAME, 200, 1]);
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.msg_type, DhcpMessageType::Discover);
        assert_eq!(r.user_class, None);
        assert_eq!(r.host_name, None);
        // Missing END is tolerated when the options end with the datagram.
        let mut b = client_msg(1, MAC, &[]);
        b.pop();
        assert!(Request::parse(&b).is_ok());
    }

    #[test]
    fn overloaded_file_and_sname_fields() {
        let mut b = client_msg(3, MAC, &[(opt::OVERLOAD, &[3])]);
        b[FILE.start..FILE.start + 6].copy_from_slice(&[opt::REQUESTED_IP, 4, 10, 0, 0, 7]);
        b[FILE.start + 6] = opt::END;
        b[SNAME.start..SNAME.start + 6].copy_from_slice(&[opt::SERVER_ID, 4, 10, 0, 0, 1]);
        let r = Request::parse(&b).unwrap();
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
        // An overloaded field whose option runs past it.
        let mut b = client_msg(3, MAC, &[(opt::OVERLOAD, &[2])]);
        b[SNAME.end - 2] = opt::HOST_NAME;
        b[SNAME.end - 1] = 5;
        assert!(matches!(Request::parse(&b), Err(ParseError::Overrun { area: "sname field", .. })));
    }

    #[test]
    fn repeated_options_concatenate() {
        let b = client_msg(1, MAC, &[(opt::CLIENT_ID, &[1, 2]), (opt::CLIENT_ID, &[3])]);
        assert_eq!(Request::parse(&b).unwrap().client_id, Some(vec![1, 2, 3]));
    }

    #[test]
    fn repeats_are_joined_up_to_the_cap() {
        // Four 255-byte pieces and one of 4: exactly the cap, in the packet and the file field.
        let piece = [7u8; 255];
        let mut opts: Vec<(u8, &[u8])> = vec![(opt::USER_CLASS, &piece[..]); 4];
        opts.push((opt::USER_CLASS, &[7u8; 4][..]));
        let b = client_msg(1, MAC, &opts);
        assert_eq!(Request::parse(&b).unwrap().user_class.map(|c| c.len()), Some(MAX_OPTION_LEN));
        // One byte more, anywhere, and the packet is refused.
        let mut b = client_msg(1, MAC, &[&opts[..], &[(opt::OVERLOAD, &[1][..])]].concat());
        b[FILE.start..FILE.start + 4].copy_from_slice(&[opt::USER_CLASS, 1, 7, opt::END]);
        assert_eq!(Request::parse(&b), Err(ParseError::TooLong { kind: opt::USER_CLASS }));
        // Other options have caps of their own.
        let b = client_msg(1, MAC, &[(opt::USER_CLASS, &piece[..]), (opt::CLIENT_ID, &piece[..])]);
        assert!(Request::parse(&b).is_ok());
    }

    #[test]
    fn reply_round_trips_through_smoltcp() {
        let req = Request::parse(&client_msg(1, MAC, &[])).unwrap();
        let mut r = Reply::new(&req, DhcpMessageType::Offer);
        r.yiaddr = Ipv4Addr::new(10, 0, 0, 100);
        r.file = Some("undionly.kpxe".into());
        r.add(opt::SERVER_ID, [10, 0, 0, 1]);
        r.add(opt::DOMAIN_NAME, vec![b'x'; 300]);
        let bytes = r.emit(None).unwrap();
        assert!(bytes.len() >= MIN_REPLY_LEN);
        let p = DhcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.opcode(), DhcpOpCode::Reply);
        assert_eq!(p.your_ip(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(p.get_boot_file().unwrap(), "undionly.kpxe");
        let opts: Vec<_> = p.options().map(|o| (o.kind, o.data.len())).collect();
        assert_eq!(opts, vec![(53, 1), (54, 4), (15, 255), (15, 45)]);
        // Too much for 576 bytes.
        r.add(opt::MESSAGE, vec![b'y'; 400]);
        assert_eq!(r.emit(None), Err(TooLarge(576)));
        assert!(r.emit(Some(1500)).is_ok());
    }
}
