//! The image config file (TOML). Every key, its default and an example are in
//! `initramfs/examples/thinclient.toml` and the crate README. Relative host paths are taken
//! from the folder of the config file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::compress::Compression;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Compression of the image: none, gzip, bzip2, lzma, xz, lzo, lz4, zstd. Default zstd.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Compression level; default: the one mkinitramfs uses (gzip 6, bzip2 9, xz/lzma 6, zstd 9).
    pub compression_level: Option<i32>,
    /// Modification time given to every entry (seconds since 1970). Default 0.
    #[serde(default)]
    pub mtime: u32,
    /// Host file that becomes `/init` (the agent, or a script). Required.
    pub init: Option<PathBuf>,
    /// Host binaries copied at their own path, with their interpreter and libraries.
    #[serde(default)]
    pub binaries: Vec<PathBuf>,
    /// Folders searched for shared libraries after DT_RPATH. Default: Debian's multiarch ones.
    #[serde(default = "crate::elf::default_library_dirs")]
    pub library_dirs: Vec<String>,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub modules: Modules,
    #[serde(default)]
    pub files: Vec<File>,
    #[serde(default)]
    pub dirs: Vec<Dir>,
    #[serde(default)]
    pub symlinks: Vec<Symlink>,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Host file with the boot server's CA certificate (`bootserver ca init` prints its path);
    /// it lands at `/etc/thinclient/ca.pem`, where the agent reads the one CA it trusts.
    /// Default: none (an agent image without it does not talk to any broker).
    pub ca_cert: Option<PathBuf>,
}

fn default_compression() -> Compression {
    Compression::Zstd
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel release, e.g. "6.1.0-28-amd64". Default: the one cached by scripts/setup.
    pub version: Option<String>,
    /// The `lib/modules/<version>` folder. Default: the cached kernel's.
    pub modules_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modules {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// network, display, input, storage.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Store compressed modules decompressed (the agent loads them with finit_module). Default true.
    #[serde(default = "yes")]
    pub decompress: bool,
    /// Copy the firmware files modules name in their `firmware=` fields. Default true.
    #[serde(default = "yes")]
    pub firmware: bool,
    /// Where firmware is looked for. Default ["/lib/firmware"].
    #[serde(default = "default_firmware_dirs")]
    pub firmware_dirs: Vec<PathBuf>,
}

impl Default for Modules {
    fn default() -> Self {
        Modules { names: vec![], aliases: vec![], classes: vec![], decompress: true, firmware: true, firmware_dirs: default_firmware_dirs() }
    }
}

fn yes() -> bool {
    true
}
fn default_firmware_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/lib/firmware")]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Host file or folder (folders are copied whole).
    pub src: PathBuf,
    /// Path in the image. Default: the same as `src`.
    pub dest: Option<String>,
    /// Permission bits for copied files, e.g. 0o644. Default: the host file's.
    pub mode: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dir {
    pub path: String,
    #[serde(default = "dir_mode")]
    pub mode: u32,
}
fn dir_mode() -> u32 {
    0o755
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub path: String,
    /// "char" or "block".
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    #[serde(default = "dev_mode")]
    pub mode: u32,
}
fn dev_mode() -> u32 {
    0o600
}

/// Where scripts/setup caches Debian's kernel: `$TC_CACHE`, else `<repo>/.cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("TC_CACHE") {
        return PathBuf::from(c);
    }
    // The repo is found from the running binary (target/<profile>/initramfs) or, failing
    // that, from where this crate was built; last, the current folder.
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors().skip(1).find(|d| d.join(".cache/kernel").is_dir()).map(|d| d.join(".cache"))
    });
    let from_build = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|r| r.join(".cache")).filter(|c| c.is_dir());
    from_exe.or(from_build).unwrap_or_else(|| PathBuf::from(".cache"))
}

/// A config read and checked, with host paths made absolute.
pub struct Loaded {
    pub config: Config,
    pub init: PathBuf,
    pub kernel_version: Option<String>,
    pub modules_dir: Option<PathBuf>,
}

fn check_image_path(key: &str, p: &str) -> Result<()> {
    if p.is_empty() || p.split('/').any(|c| c == "..") {
        bail!("{key}: {p:?} is not a valid path inside the image; write an absolute path such as \"/etc/motd\" without `..`");
    }
    Ok(())
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))
    }

    pub fn load(path: &Path) -> Result<Loaded> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let Some(init) = config.init.as_ref().map(|p| abs(p)) else {
            bail!("{}: key `init` is missing; set it to the host file that becomes /init (scripts/build-client prints the agent's path)", path.display());
        };
        if !init.is_file() {
            bail!("{}: `init` = {}: no such file; build the agent with scripts/build-client or point `init` at an existing file", path.display(), init.display());
        }
        for b in &mut config.binaries {
            *b = abs(b);
            if !b.is_file() {
                bail!("{}: `binaries` entry {} does not exist; remove it or install it", path.display(), b.display());
            }
        }
        for f in &mut config.files {
            f.src = abs(&f.src);
            if !f.src.exists() {
                bail!("{}: `files` entry src = {} does not exist", path.display(), f.src.display());
            }
            if let Some(d) = &f.dest {
                check_image_path("files.dest", d)?;
            }
            if f.mode.is_some_and(|m| m > 0o7777) {
                bail!("files.mode for {}: {:o} is not a permission mode; write it like 0o644", f.src.display(), f.mode.unwrap());
            }
        }
        for d in &config.dirs {
            check_image_path("dirs.path", &d.path)?;
        }
        for s in &config.symlinks {
            check_image_path("symlinks.path", &s.path)?;
            if s.target.is_empty() {
                bail!("symlinks: {} has an empty target", s.path);
            }
        }
        for d in &config.devices {
            check_image_path("devices.path", &d.path)?;
        }
        if let Some(ca) = &mut config.ca_cert {
            *ca = abs(ca);
        }
        for c in &config.modules.classes {
            if !crate::kmod::CLASSES.iter().any(|(n, _)| n == c) {
                let names: Vec<_> = crate::kmod::CLASSES.iter().map(|(n, _)| *n).collect();
                bail!("modules.classes: unknown class {c:?}; use one of {}", names.join(", "));
            }
        }
        let wants_modules = !(config.modules.names.is_empty() && config.modules.aliases.is_empty() && config.modules.classes.is_empty());
        let (mut kernel_version, mut modules_dir) = (config.kernel.version.clone(), config.kernel.modules_dir.as_ref().map(|p| abs(p)));
        if wants_modules {
            if kernel_version.is_none() {
                if let Some(d) = &modules_dir {
                    kernel_version = d.file_name().map(|n| n.to_string_lossy().into_owned());
                } else {
                    let vf = cache_dir().join("kernel/version");
                    let v = std::fs::read_to_string(&vf).with_context(|| {
                        format!("kernel.version is not set and {} is missing; run scripts/setup, set TC_CACHE, or set kernel.version and kernel.modules_dir", vf.display())
                    })?;
                    kernel_version = Some(v.trim().to_string());
                }
            }
            let v = kernel_version.clone().unwrap();
            let dir = modules_dir.unwrap_or_else(|| cache_dir().join("kernel/root/lib/modules").join(&v));
            if !dir.join("modules.dep").is_file() {
                bail!("kernel.modules_dir = {}: no modules.dep there; point it at lib/modules/<version> of an installed kernel (or run depmod)", dir.display());
            }
            modules_dir = Some(dir);
        }
        Ok(Loaded { config, init, kernel_version, modules_dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/thinclient.toml")).unwrap();
        let c = Config::parse(&text, "example").unwrap();
        assert_eq!(c.compression, Compression::Zstd);
        assert!(!c.modules.classes.is_empty());
    }

    #[test]
    fn bad_keys_are_named() {
        let e = Config::parse("init = \"x\"\ncompresion = \"gzip\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("compresion") && e.contains("compression"), "{e}");
        let e = Config::parse("compression = \"rar\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("rar") && e.contains("zstd"), "{e}");
        let e = Config::parse("[modules]\nname = [\"e1000\"]\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("name") && e.contains("names"), "{e}");
    }

    #[test]
    fn load_checks_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "compression = \"gzip\"\n").unwrap();
        assert!(Config::load(&p).err().unwrap().to_string().contains("`init` is missing"));
        std::fs::write(d.path().join("init"), "#!/bin/sh\n").unwrap();
        std::fs::write(&p, "init = \"init\"\n[modules]\nclasses = [\"sound\"]\n").unwrap();
        assert!(Config::load(&p).err().unwrap().to_string().contains("modules.classes"));
        std::fs::write(&p, "init = \"init\"\n[[symlinks]]\npath = \"../x\"\ntarget = \"y\"\n").unwrap();
        assert!(Config::load(&p).err().unwrap().to_string().contains("symlinks.path"));
    }
}
