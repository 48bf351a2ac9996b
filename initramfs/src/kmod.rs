//! Kernel modules: the tree's `modules.dep` and `modules.alias`, the `.modinfo` of a module,
//! and choosing modules by name, alias or class with their dependency closure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::compress::{self, Compression};

/// Module classes and the parts of the kernel tree that hold them.
pub const CLASSES: &[(&str, &[&str])] = &[
    (
        "network",
        &[
            "kernel/drivers/net/ethernet/",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/vmxnet3/",
            "kernel/drivers/net/hyperv/",
            "kernel/drivers/net/xen-netfront.ko",
            "kernel/drivers/net/usb/",
        ],
    ),
    ("display", &["kernel/drivers/gpu/drm/"]),
    ("input", &["kernel/drivers/input/", "kernel/drivers/hid/"]),
    (
        "storage",
        &[
            "kernel/drivers/ata/",
            "kernel/drivers/scsi/",
            "kernel/drivers/nvme/",
            "kernel/drivers/block/",
            "kernel/drivers/mmc/",
            "kernel/drivers/usb/storage/",
        ],
    ),
];

/// `e1000e`, `virtio-net` and `virtio_net.ko.xz` name modules the way modprobe compares them.
pub fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = ["", ".gz", ".xz", ".zst"]
        .iter()
        .find_map(|z| base.strip_suffix(&format!(".ko{z}")))
        .unwrap_or(base);
    base.replace('-', "_")
}

/// A module file's compression, judged by its name the way kmod does.
pub fn file_compression(rel: &str) -> Option<Compression> {
    if rel.ends_with(".ko.xz") {
        Some(Compression::Xz)
    } else if rel.ends_with(".ko.zst") {
        Some(Compression::Zstd)
    } else if rel.ends_with(".ko.gz") {
        Some(Compression::Gzip)
    } else {
        None
    }
}

/// The path a module gets once decompressed.
pub fn decompressed_name(rel: &str) -> String {
    match file_compression(rel) {
        Some(_) => rel[..rel.rfind(".ko").unwrap() + 3].to_string(),
        None => rel.to_string(),
    }
}

/// A module file as the kernel's loader wants it: decompressed.
pub fn module_bytes(rel: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    match file_compression(rel) {
        Some(c) => Ok(compress::decompress(c, &data, 1 << 30).with_context(|| format!("decompressing {rel}"))?.0),
        None => Ok(data),
    }
}

/// The key=value strings of a module's `.modinfo` section.
pub fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let elf = goblin::elf::Elf::parse(ko).context("not an ELF module")?;
    let Some(sh) = elf.section_headers.iter().find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo")) else {
        bail!("no .modinfo section");
    };
    let start = sh.sh_offset as usize;
    let bytes = ko.get(start..start + sh.sh_size as usize).context(".modinfo section out of bounds")?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// First word of a module's vermagic: the kernel release it was built for.
pub fn vermagic_release(info: &[(String, String)]) -> Option<&str> {
    info.iter().find(|(k, _)| k == "vermagic").and_then(|(_, v)| v.split_whitespace().next())
}

/// A kernel's module tree: `lib/modules/<version>`.
pub struct Tree {
    pub dir: PathBuf,
    pub version: String,
    /// Module name to (path relative to `dir`, dependency paths).
    pub dep: BTreeMap<String, (String, Vec<String>)>,
    /// Alias pattern to module name, in file order.
    pub alias: Vec<(String, String)>,
    pub builtin: BTreeSet<String>,
}

impl Tree {
    pub fn open(dir: &Path, version: &str) -> Result<Tree> {
        let depfile = dir.join("modules.dep");
        let text = std::fs::read_to_string(&depfile)
            .with_context(|| format!("reading {} (is `kernel.modules_dir` a lib/modules/<version> folder, and was depmod run there?)", depfile.display()))?;
        let mut dep = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (m, deps) = line.split_once(':').with_context(|| format!("{}:{}: no ':'", depfile.display(), n + 1))?;
            let deps = deps.split_whitespace().map(String::from).collect();
            dep.insert(module_name(m), (m.to_string(), deps));
        }
        let mut alias = Vec::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.alias")) {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if let (Some("alias"), Some(pat), Some(m)) = (w.next(), w.next(), w.next()) {
                    alias.push((pat.to_string(), module_name(m)));
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| t.lines().map(module_name).collect())
            .unwrap_or_default();
        Ok(Tree { dir: dir.to_path_buf(), version: version.to_string(), dep, alias, builtin })
    }

    /// Modules whose alias patterns match `alias` (modprobe's fnmatch rules).
    pub fn by_alias(&self, alias: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .alias
            .iter()
            .filter(|(pat, _)| pat == alias || glob::Pattern::new(pat).map(|p| p.matches(alias)).unwrap_or(false))
            .map(|(_, m)| m.clone())
            .collect();
        out.dedup();
        out
    }

    pub fn by_class(&self, class: &str) -> Result<Vec<String>> {
        let Some((_, prefixes)) = CLASSES.iter().find(|(c, _)| *c == class) else {
            let names: Vec<_> = CLASSES.iter().map(|(c, _)| *c).collect();
            bail!("unknown module class {class:?}; use one of {}", names.join(", "));
        };
        Ok(self
            .dep
            .iter()
            .filter(|(_, (rel, _))| {
                let rel = decompressed_name(rel);
                prefixes.iter().any(|p| if p.ends_with('/') { rel.starts_with(p) } else { rel == *p })
            })
            .map(|(n, _)| n.clone())
            .collect())
    }

    /// Paths (relative to the tree) of the given modules and everything they depend on.
    pub fn closure(&self, names: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let by_path: BTreeMap<&str, &str> = self.dep.iter().map(|(n, (p, _))| (p.as_str(), n.as_str())).collect();
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = names.iter().cloned().collect();
        while let Some(n) = todo.pop() {
            let (rel, deps) = self.dep.get(&n).with_context(|| format!("module {n} not in {}/modules.dep", self.dir.display()))?;
            if out.insert(rel.clone()) {
                for d in deps {
                    let dn = by_path.get(d.as_str()).map(|s| s.to_string()).unwrap_or_else(|| module_name(d));
                    todo.push(dn);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/drivers/net/virtio-net.ko.xz"), "virtio_net");
        assert_eq!(module_name("e1000"), "e1000");
        assert_eq!(decompressed_name("a/b.ko.zst"), "a/b.ko");
        assert_eq!(decompressed_name("a/b.ko"), "a/b.ko");
    }

    #[test]
    fn tree_closure_alias_class() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/gpu/drm/tiny/bochs.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.alias"), "alias virtio:d00000001v* virtio_net\nalias pci:v00001234d00001111sv*sd*bc03sc*i* bochs\n").unwrap();
        let t = Tree::open(d.path(), "6.1").unwrap();
        assert_eq!(t.by_alias("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(t.by_class("network").unwrap(), ["virtio_net"]);
        assert_eq!(t.by_class("display").unwrap(), ["bochs"]);
        assert!(t.by_class("sound").is_err());
        let c = t.closure(&["virtio_net".to_string()].into()).unwrap();
        assert_eq!(c.len(), 3);
        assert!(t.closure(&["nope".to_string()].into()).is_err());
    }
}
