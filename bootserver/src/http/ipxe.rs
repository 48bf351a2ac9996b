//! The iPXE script that loads our kernel and initramfs.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::config::Transport;

/// What a boot script needs to know. Built once from the settings.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub server: Ipv4Addr,
    pub http_port: u16,
    pub tftp_port: u16,
    pub transport: Transport,
    /// Names under which the kernel and initramfs are served.
    pub kernel: String,
    pub initrd: String,
    /// The admin's command line followed by the `tc.*` keys for the agent.
    pub cmdline: String,
}

impl BootPlan {
    /// URL of the iPXE script, handed out by DHCP to iPXE clients.
    pub fn script_url(&self) -> String {
        format!("http://{}:{}/boot.ipxe", self.server, self.http_port)
    }

    fn base(&self) -> String {
        match self.transport {
            Transport::Http => format!("http://{}:{}", self.server, self.http_port),
            Transport::Tftp if self.tftp_port == 69 => format!("tftp://{}", self.server),
            Transport::Tftp => format!("tftp://{}:{}", self.server, self.tftp_port),
        }
    }

    /// The script. `client` is the MAC iPXE reported, for the on-screen line and the log.
    pub fn script(&self, client: Option<&str>) -> String {
        let base = self.base();
        let mut s = String::from("#!ipxe\n");
        let who = client.map(sanitize).unwrap_or_else(|| "${net0/mac}".into());
        let _ = writeln!(s, "echo Thin client {who}: loading from {}", self.server);
        // `initrd=NAME` lets the kernel's EFI stub find the image iPXE registered; BIOS kernels
        // ignore it.
        let _ = writeln!(
            s,
            "kernel {base}/{} initrd={} {}",
            self.kernel,
            file_name(&self.initrd),
            self.cmdline
        );
        let _ = writeln!(s, "initrd {base}/{}", self.initrd);
        s.push_str("boot\n");
        s
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Keeps only characters that are safe inside an iPXE `echo` line.
fn sanitize(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-').take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(transport: Transport) -> BootPlan {
        BootPlan {
            server: Ipv4Addr::new(10, 0, 0, 1),
            http_port: 8080,
            tftp_port: 69,
            transport,
            kernel: "vmlinuz".into(),
            initrd: "images/initrd.img".into(),
            cmdline: "console=ttyS0 tc.broker=10.0.0.1:7000".into(),
        }
    }

    #[test]
    fn http_script() {
        let s = plan(Transport::Http).script(Some("52:54:00:12:34:56"));
        assert_eq!(
            s,
            "#!ipxe\necho Thin client 52:54:00:12:34:56: loading from 10.0.0.1\n\
             kernel http://10.0.0.1:8080/vmlinuz initrd=initrd.img console=ttyS0 tc.broker=10.0.0.1:7000\n\
             initrd http://10.0.0.1:8080/images/initrd.img\nboot\n"
        );
    }

    #[test]
    fn tftp_script_and_hostile_mac() {
        let s = plan(Transport::Tftp).script(Some("x\nshell ${evil}"));
        assert!(s.contains("kernel tftp://10.0.0.1/vmlinuz"));
        assert!(!s.contains("\nshell"));
        assert!(!s.contains("evil}"));
    }
}
