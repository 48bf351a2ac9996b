//! What kind of client asks (plain DHCP, a PXE ROM, iPXE) and which boot file it gets.

use super::packet::{opt, Reply, Request};

/// RFC 4578 2.1 processor architecture types.
pub(crate) const ARCH_BIOS: u16 = 0;
pub(crate) const ARCH_EFI_BC: u16 = 7;
pub(crate) const ARCH_EFI_X64: u16 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientKind {
    /// No PXE vendor class and not iPXE: address only, no boot information.
    Plain,
    /// A PXE ROM (option 60 starts with `PXEClient`), with its option 93 architecture.
    Pxe { arch: Option<u16> },
    /// iPXE (user class `iPXE` or option 175): it gets the boot script's URL.
    Ipxe,
}

impl ClientKind {
    pub(crate) fn of(req: &Request) -> ClientKind {
        let user_ipxe = req.user_class.as_deref().is_some_and(|u| contains(u, b"iPXE"));
        if user_ipxe || req.ipxe_encap {
            ClientKind::Ipxe
        } else if req.vendor_class.as_deref().is_some_and(|v| v.starts_with(b"PXEClient")) {
            ClientKind::Pxe { arch: req.client_arch.first().copied() }
        } else {
            ClientKind::Plain
        }
    }

    pub(crate) fn is_pxe(self) -> bool {
        self != ClientKind::Plain
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Boot files per client kind, fixed at start-up.
#[derive(Debug, Clone)]
pub(crate) struct BootChoice {
    pub bios: String,
    pub uefi: String,
    /// For other architectures; None: they get no boot file.
    pub other: Option<String>,
    /// `BootPlan::script_url()`, for iPXE.
    pub script_url: String,
}

impl BootChoice {
    pub(crate) fn file_for(&self, kind: ClientKind, peer: &str) -> Option<String> {
        match kind {
            ClientKind::Plain => None,
            ClientKind::Ipxe => Some(self.script_url.clone()),
            ClientKind::Pxe { arch: Some(ARCH_BIOS) | None } => Some(self.bios.clone()),
            ClientKind::Pxe { arch: Some(ARCH_EFI_BC | ARCH_EFI_X64) } => Some(self.uefi.clone()),
            ClientKind::Pxe { arch: Some(a) } => {
                log::info!(
                    "dhcp: {peer}: PXE client architecture {a} has no boot file of its own; {}",
                    match &self.other {
                        Some(f) => format!("offering {f}"),
                        None => "offering none (set dhcp.other_boot_file)".into(),
                    }
                );
                self.other.clone()
            }
        }
    }
}

/// Adds the PXE and iPXE boot information to `reply`. `tftp_name` is option 66's text.
/// `no_proxy_wait`: tell iPXE not to wait for a ProxyDHCP offer (175.176 = 1); only true when
/// this server hands out the addresses itself.
pub(crate) fn add_boot_options(
    reply: &mut Reply,
    req: &Request,
    kind: ClientKind,
    file: Option<&str>,
    tftp_name: &str,
    no_proxy_wait: bool,
) {
    if kind == ClientKind::Plain {
        return;
    }
    // PXE ROMs ignore an offer without the class echoed back (PXE spec 2.1, RFC 4578 2.4).
    reply.add(opt::VENDOR_CLASS, &b"PXEClient"[..]);
    if let Some(uuid) = &req.client_uuid {
        reply.add(opt::CLIENT_UUID, uuid.clone());
    }
    if let ClientKind::Pxe { .. } = kind {
        // PXE_DISCOVERY_CONTROL (sub-option 6) = 8: boot the file named in this offer, skip
        // boot server discovery.
        reply.add(opt::VENDOR_SPECIFIC, [6u8, 1, 8, opt::END]);
    }
    if kind == ClientKind::Ipxe && no_proxy_wait {
        reply.add(opt::IPXE_ENCAP, [176u8, 1, 1]);
    }
    if let Some(f) = file {
        reply.sname = Some(tftp_name.to_string());
        reply.file = Some(f.to_string());
        reply.add(opt::TFTP_SERVER_NAME, tftp_name.as_bytes());
        reply.add(opt::BOOTFILE_NAME, f.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::tests::client_msg;

    fn choice() -> BootChoice {
        BootChoice {
            bios: "undionly.kpxe".into(),
            uefi: "ipxe.efi".into(),
            other: None,
            script_url: "http://10.0.0.1:8080/boot.ipxe".into(),
        }
    }

    fn kind(options: &[(u8, &[u8])]) -> ClientKind {
        ClientKind::of(&Request::parse(&client_msg(1, [2, 0, 0, 0, 0, 1], options)).unwrap())
    }

    #[test]
    fn classifies_and_picks_files() {
        let c = choice();
        let pxe = b"PXEClient:Arch:00000:UNDI:002001";
        assert_eq!(kind(&[]), ClientKind::Plain);
        assert_eq!(kind(&[(opt::VENDOR_CLASS, b"udhcp 1.36")]), ClientKind::Plain);
        let bios = kind(&[(opt::VENDOR_CLASS, pxe), (opt::CLIENT_ARCH, &[0, 0])]);
        assert_eq!(bios, ClientKind::Pxe { arch: Some(0) });
        assert_eq!(c.file_for(bios, "t").as_deref(), Some("undionly.kpxe"));
        for a in [7u8, 9] {
            let uefi = kind(&[(opt::VENDOR_CLASS, pxe), (opt::CLIENT_ARCH, &[0, a])]);
            assert_eq!(c.file_for(uefi, "t").as_deref(), Some("ipxe.efi"));
        }
        let arm = kind(&[(opt::VENDOR_CLASS, pxe), (opt::CLIENT_ARCH, &[0, 11])]);
        assert_eq!(c.file_for(arm, "t"), None);
        let c2 = BootChoice { other: Some("grub.efi".into()), ..choice() };
        assert_eq!(c2.file_for(arm, "t").as_deref(), Some("grub.efi"));
        assert_eq!(c.file_for(ClientKind::Plain, "t"), None);
        let ipxe = kind(&[(opt::VENDOR_CLASS, pxe), (opt::USER_CLASS, b"iPXE")]);
        assert_eq!(ipxe, ClientKind::Ipxe);
        assert_eq!(kind(&[(opt::IPXE_ENCAP, &[19, 1, 1])]), ClientKind::Ipxe);
        assert_eq!(c.file_for(ipxe, "t").as_deref(), Some("http://10.0.0.1:8080/boot.ipxe"));
    }
}
