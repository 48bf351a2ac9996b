//! Loads the kernel modules the hardware needs, the way udev and modprobe would: every device's
//! modalias is matched against `modules.alias`, and each match is loaded after its
//! dependencies from `modules.dep`, with `finit_module(2)`.
//!
//! Hand-written rather than a libkmod binding: the agent is linked statically and needs only
//! these two text files, while libkmod brings a C library and its own compression libraries.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

/// `finit_module` flag: the file is compressed and the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// The parsed `modules.alias`, `modules.dep` and `modules.builtin` of one kernel.
#[derive(Debug, Default)]
pub(crate) struct ModuleIndex {
    dir: PathBuf,
    aliases: Vec<(glob::Pattern, String)>,
    /// Module name (underscores) to its file and its dependencies' files, relative to `dir`.
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// Module names use `-` and `_` interchangeably; the kernel reports them with `_`.
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/net/e1000.ko.xz` -> `e1000`.
fn name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.split(".ko").next().unwrap_or(file))
}

impl ModuleIndex {
    /// Reads the index of the running kernel (`/lib/modules/$(uname -r)`).
    pub(crate) fn for_running_kernel() -> anyhow::Result<Self> {
        let release = nix::sys::utsname::uname().context("uname")?.release().to_string_lossy().into_owned();
        Self::load(&Path::new("/lib/modules").join(release))
    }

    pub(crate) fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let mut index = Self::parse(&read("modules.alias")?, &read("modules.dep")?);
        index.dir = dir.to_path_buf();
        if let Ok(text) = read("modules.builtin") {
            index.builtin = text.lines().map(name_of_path).collect();
        }
        Ok(index)
    }

    /// Parses the two files; lines that make no sense are skipped with a log line.
    pub(crate) fn parse(alias_text: &str, dep_text: &str) -> Self {
        let mut aliases = Vec::new();
        for line in alias_text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pat), Some(module)) => match glob::Pattern::new(pat) {
                    Ok(p) => aliases.push((p, normalize(module))),
                    Err(e) => log::debug!("modules.alias: skipping {pat:?}: {e}"),
                },
                _ if line.starts_with('#') || line.trim().is_empty() => {}
                _ => log::debug!("modules.alias: skipping {line:?}"),
            }
        }
        let mut deps = HashMap::new();
        for line in dep_text.lines() {
            let Some((path, rest)) = line.split_once(':') else { continue };
            let list = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(name_of_path(path), (path.to_string(), list));
        }
        ModuleIndex { dir: PathBuf::new(), aliases, deps, builtin: HashSet::new() }
    }

    /// Modules whose alias pattern matches `modalias` (or that are named so), in file order.
    pub(crate) fn resolve(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.deps.contains_key(&normalize(modalias)) {
            out.push(normalize(modalias));
        }
        for (pat, module) in &self.aliases {
            if pat.matches(modalias) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// Files to load for `module`, dependencies first. Empty for built-in modules.
    pub(crate) fn load_order(&self, module: &str) -> anyhow::Result<Vec<String>> {
        let module = normalize(module);
        if self.builtin.contains(&module) {
            return Ok(Vec::new());
        }
        let (path, deps) =
            self.deps.get(&module).with_context(|| format!("module {module} is not in modules.dep"))?;
        // depmod lists the dependencies so that loading them from last to first works.
        let mut order: Vec<String> = deps.iter().rev().cloned().collect();
        order.push(path.clone());
        Ok(order)
    }
}

/// Loads modules once each and remembers what it did, for the boot log and the status screen.
#[derive(Debug)]
pub(crate) struct Loader {
    index: ModuleIndex,
    loaded: Mutex<HashSet<String>>,
    pub(crate) failures: Vec<String>,
}

impl Loader {
    pub(crate) fn new(index: ModuleIndex) -> Self {
        Loader { index, loaded: Mutex::new(HashSet::new()), failures: Vec::new() }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a module by name or alias (e.g. `nfs`, `fs-nfs`) with its dependencies.
    pub(crate) fn load(&mut self, name_or_alias: &str) -> anyhow::Result<()> {
        let modules = self.index.resolve(name_or_alias);
        if modules.is_empty() {
            anyhow::bail!("no module provides {name_or_alias:?}");
        }
        for m in modules {
            self.load_module(&m)?;
        }
        Ok(())
    }

    /// Safe to run from several threads at once: two threads that both need a dependency both
    /// call finit_module for it, and the kernel makes the second wait until the first has
    /// finished, then answers EEXIST, which counts as loaded.
    fn load_module(&self, module: &str) -> anyhow::Result<()> {
        for rel in self.index.load_order(module)? {
            let name = name_of_path(&rel);
            if self.loaded().contains(&name) {
                continue;
            }
            let path = self.index.dir.join(&rel);
            insmod(&path).with_context(|| format!("loading {name} ({})", path.display()))?;
            log::debug!("loaded {name}");
            self.loaded().insert(name);
        }
        Ok(())
    }

    /// Loads a module for every device in `/sys/bus/*/devices/*/modalias`, repeating while new
    /// devices appear (a USB host controller's driver brings the keyboard behind it).
    /// The modules of one pass load in parallel, one thread each: most of a driver's load time
    /// is its probe (a NIC's EEPROM and PHY reset), which does not need the CPU.
    /// Returns how many modules were loaded.
    pub(crate) fn load_for_hardware(&mut self, sys: &Path) -> usize {
        let before = self.loaded().len();
        let mut seen = HashSet::new();
        for _pass in 0..4 {
            let fresh: Vec<String> =
                device_modaliases(sys).into_iter().filter(|a| seen.insert(a.clone())).collect();
            if fresh.is_empty() {
                break;
            }
            let mut wanted: Vec<(String, String)> = Vec::new();
            for alias in fresh {
                for module in self.index.resolve(&alias) {
                    if !wanted.iter().any(|(_, m)| *m == module) {
                        wanted.push((alias.clone(), module));
                    }
                }
            }
            let this = &*self;
            let failures: Vec<String> = std::thread::scope(|scope| {
                let jobs: Vec<_> = wanted
                    .iter()
                    .map(|(alias, module)| {
                        let job = move || match this.load_module(module) {
                            Ok(()) => None,
                            Err(e) => {
                                log::warn!("{alias}: {e:#}");
                                Some(format!("{module}: {e:#}"))
                            }
                        };
                        // A thread that cannot start loads its module here instead.
                        std::thread::Builder::new()
                            .name(format!("modprobe {module}"))
                            .spawn_scoped(scope, job)
                            .map_err(|_| job)
                    })
                    .collect();
                jobs.into_iter()
                    .filter_map(|j| match j {
                        Ok(handle) => handle.join().unwrap_or_else(|_| Some("a module thread panicked".into())),
                        Err(job) => job(),
                    })
                    .collect()
            });
            self.failures.extend(failures);
        }
        self.loaded().len() - before
    }
}

/// Every modalias the kernel reports under `sys` (normally `/sys`): the devices of every bus,
/// and the input devices, which are a class and no bus (their alias brings `evdev`, without
/// which neither the login screen nor the fbdev viewer can read a keyboard).
pub(crate) fn device_modaliases(sys: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(sys.join("bus"))
        .map(|buses| buses.flatten().map(|b| b.path().join("devices")).collect())
        .unwrap_or_default();
    dirs.push(sys.join("class/input"));
    for dir in dirs {
        let Ok(devices) = std::fs::read_dir(dir) else { continue };
        for dev in devices.flatten() {
            if let Ok(text) = std::fs::read_to_string(dev.path().join("modalias")) {
                let text = text.trim();
                if !text.is_empty() {
                    out.push(text.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn insmod(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)?;
    let compressed = path.extension().is_some_and(|e| e != "ko");
    let flags = if compressed { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    // SAFETY: finit_module reads the open file; the parameter string is a valid C string.
    let rc = unsafe {
        libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), flags)
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(err.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net
alias pci:v*d*sv*sd*bc02sc00i* generic-nic
alias fs-nfs nfs
alias pci:v00001234d00001111sv*sd*bc03sc*i* bochs
";
    const DEP: &str = "\
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/nfs/nfs.ko: kernel/fs/lockd/lockd.ko kernel/net/sunrpc/sunrpc.ko
kernel/drivers/net/generic-nic.ko.xz:
";

    #[test]
    fn input_devices_are_found_beside_bus_devices() {
        let sys = tempfile::tempdir().unwrap();
        let put = |rel: &str, alias: &str| {
            let d = sys.path().join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("modalias"), alias).unwrap();
        };
        put("bus/pci/devices/0000:00:03.0", "pci:v00008086d0000100Esv*\n");
        put("class/input/input1", "input:b0011v0001p0001eAB41-e0,1,4,11,14,k71,72,73,ram4,l0,1,2,sfw\n");
        std::fs::create_dir_all(sys.path().join("class/input/event1")).unwrap();
        let got = device_modaliases(sys.path());
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().any(|a| a.starts_with("input:b0011")), "{got:?}");
        let index = ModuleIndex::parse(
            "alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev\n",
            "kernel/drivers/input/evdev.ko.xz:\n",
        );
        assert_eq!(index.resolve(got.iter().find(|a| a.starts_with("input:")).unwrap()), vec!["evdev".to_string()]);
    }

    #[test]
    fn matches_pci_modalias_with_globs() {
        let idx = ModuleIndex::parse(ALIAS, DEP);
        let e1000 = "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00";
        assert_eq!(idx.resolve(e1000), vec!["e1000".to_string(), "generic_nic".to_string()]);
        assert!(idx.resolve("pci:v00001111d00002222sv0sd0bc06sc01i00").is_empty());
        assert_eq!(idx.resolve("fs-nfs"), vec!["nfs".to_string()]);
        assert_eq!(idx.resolve("nfs"), vec!["nfs".to_string()]);
    }

    #[test]
    fn dependencies_load_first() {
        let idx = ModuleIndex::parse(ALIAS, DEP);
        assert_eq!(
            idx.load_order("virtio-net").unwrap(),
            vec!["kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"]
        );
        assert_eq!(idx.load_order("generic_nic").unwrap(), vec!["kernel/drivers/net/generic-nic.ko.xz"]);
        assert!(idx.load_order("missing").is_err());
    }

    #[test]
    fn builtin_modules_need_no_file() {
        let mut idx = ModuleIndex::parse(ALIAS, DEP);
        idx.builtin.insert("e1000".into());
        assert!(idx.load_order("e1000").unwrap().is_empty());
    }

    #[test]
    fn real_index_of_the_cached_kernel_resolves_e1000() {
        // The Debian kernel's own files, cached by scripts/setup.
        let cache = std::env::var_os("TC_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
        let ver = std::fs::read_to_string(cache.join("kernel/version"))
            .expect("the cached kernel is missing: run scripts/setup (or set TC_CACHE)");
        let dir = cache.join("kernel/root/lib/modules").join(ver.trim());
        let idx = ModuleIndex::load(&dir).unwrap();
        let mods = idx.resolve("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00");
        assert!(mods.contains(&"e1000".to_string()), "{mods:?}");
        assert!(idx.load_order("nfs").unwrap().iter().any(|p| p.ends_with("sunrpc.ko")));
    }
}
