//! A throwaway pure cgroup v2 VM: the distribution kernel (linux-image-amd64) under qemu, booted from a small
//! busybox initramfs that shares the HOST ROOT read-only and a writable work dir over 9p, mounts cgroup2 at
//! /sys/fs/cgroup and runs one prebuilt host binary. This is where cgroup limits are really enforced: the
//! project's machines run hybrid cgroups without v2 controllers (see shared/PLATFORM.md for the recipe).
//!
//! Results come back through the work dir (`output`) and the `VM-EXIT-CODE=N` line on the serial console.
//! No such line (kernel panic, hang, timeout) is an INFRASTRUCTURE failure: retried once, then returned as
//! [`VmError::Infrastructure`], never mistaken for a pass. The initramfs (and the extracted ELF kernel,
//! which boots ~6 s faster than the bzImage) are cached under `target/vm/` keyed by the kernel version
//! (and, for the initramfs, a hash of the init script and module list).
//!
//! The guest mounts its own tmpfs over /tmp, /run and /var/tmp. Host paths the command names below them
//! (a checkout or `CARGO_TARGET_DIR` under /tmp) are exposed read-only at the same path ([`guest_paths`]);
//! a host path the guest cannot be given fails on the host, before boot, as [`VmError::Unreachable`]
//! naming it, never as an exit 127 inside the guest.

pub mod guest_paths;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Modules the initramfs loads, in dependency order (virtio PCI transport, then 9p over virtio).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    // For the optional scratch disk (VmConfig::disk_mb): /dev/vda, an io.max target.
    "virtio_blk",
];

/// Where the writable work share is mounted in the guest (on the guest's /tmp tmpfs). `INIT` reads the
/// list of host paths to expose from `expose` in it.
pub const GUEST_WORK: &str = "/tmp/vmwork";

/// How to run the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mb: u32,
    pub cpus: u32,
    /// Wall-clock limit for one boot, including the command.
    pub timeout: Duration,
    /// Environment for the command in the guest.
    pub env: Vec<(String, String)>,
    /// Attach a zeroed scratch disk of this size as /dev/vda (virtio-blk), e.g. for io.max checks.
    pub disk_mb: Option<u32>,
    /// Host files and directories the command reads that `argv` and `env` do not name (each must
    /// exist). Like the absolute paths in `argv` and `env`, they are made reachable in the guest at the
    /// same path, read-only, wherever they are on the host.
    pub share: Vec<PathBuf>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mb: 2048,
            cpus: 2,
            timeout: Duration::from_secs(300),
            env: vec![],
            disk_mb: None,
            share: vec![],
        }
    }
}

/// What a finished guest command produced.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The command's exit code, from the `VM-EXIT-CODE=N` serial line.
    pub exit_code: i32,
    /// The command's stdout and stderr (interleaved), read from the work share.
    pub output: String,
    /// The serial console (kernel messages, init script).
    pub console: String,
    /// Wall time of the successful boot, start of qemu to power-off.
    pub elapsed: Duration,
    /// Which accelerator ran it ("tcg" or "kvm").
    pub accel: &'static str,
}

/// Failures of the VM machinery itself (as opposed to the command failing inside it).
#[derive(Debug)]
pub enum VmError {
    /// Both attempts ended without a VM-EXIT-CODE line; carries the last console output.
    Infrastructure { attempts: u32, reason: String, console_tail: String },
    /// A host path the command names cannot be given to the guest. Found on the host before boot, or
    /// (should exposing it fail in the guest) by the guest's check before the command runs.
    Unreachable(guest_paths::Unreachable),
    /// Setting up (kernel, initramfs, qemu spawn) failed.
    Setup(anyhow::Error),
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Infrastructure { attempts, reason, console_tail } => write!(
                f,
                "VM INFRASTRUCTURE FAILURE (not a test result) after {attempts} attempts: {reason}\n\
                 --- last serial console lines ---\n{console_tail}"
            ),
            VmError::Unreachable(u) => write!(f, "VM setup failed: {u}"),
            VmError::Setup(e) => write!(f, "VM setup failed: {e:#}"),
        }
    }
}

impl std::error::Error for VmError {}

/// Kernel version of the installed linux-image-amd64 package (not `uname -r`: the host kernel is not
/// the one we boot).
pub fn kernel_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .context("run dpkg-query for linux-image-amd64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
    let kver = text
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .find_map(|p| p.strip_prefix("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("linux-image-amd64 is not installed (dpkg-query said {text:?}): apt-get install -y --no-install-recommends linux-image-amd64"))?;
    Ok(kver)
}

/// Why the VM cannot run here, or None. Phrased as what to install.
pub fn missing_prerequisites() -> Option<String> {
    let mut why = Vec::new();
    if crate::prereq::which("qemu-system-x86_64").is_none() {
        why.push("qemu-system-x86_64 (apt-get install -y --no-install-recommends qemu-system-x86)".to_string());
    }
    if !Path::new("/bin/busybox").is_file() {
        why.push("/bin/busybox (apt-get install -y busybox-static)".to_string());
    }
    if crate::prereq::which("cpio").is_none() {
        why.push("cpio (apt-get install -y cpio)".to_string());
    }
    match kernel_version() {
        Ok(kver) => {
            if !Path::new(&format!("/boot/vmlinuz-{kver}")).is_file() {
                why.push(format!("/boot/vmlinuz-{kver} (reinstall linux-image-{kver})"));
            }
        }
        Err(e) => why.push(e.to_string()),
    }
    (!why.is_empty()).then(|| format!("the cgroup v2 VM needs {}", why.join(", ")))
}

fn cache_dir() -> PathBuf {
    crate::bins::bin_dir().parent().map(|p| p.join("vm")).unwrap_or_else(|| PathBuf::from("target/vm"))
}

/// Whether KVM can be used: /dev/kvm opens AND the CPU advertises vmx/svm (the project's machines have a
/// paravirtual /dev/kvm that cannot run a stock kernel).
fn kvm_usable() -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    flags && std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

fn module_path(kver: &str, name: &str) -> Result<PathBuf> {
    let out = Command::new("modprobe")
        .args(["-S", kver, "--show-depends", name])
        .output()
        .with_context(|| format!("modprobe --show-depends {name}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last insmod line is the module itself.
    text.lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .next_back()
        .map(|l| PathBuf::from(l.split_whitespace().next().unwrap_or("")))
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow!("kernel module {name} for {kver} not found (modprobe said {text:?})"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/vm-modules/$m.ko || echo "VM-INIT: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot || { echo "VM-INIT: cannot mount host root"; echo o > /proc/sysrq-trigger; }
for d in tmp run var/tmp; do mkdir -p /hostview/$d; mount --bind /newroot/$d /hostview/$d; done
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
mount -t tmpfs tmpfs /newroot/var/tmp
mkdir -p /newroot/tmp/vmwork
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work /newroot/tmp/vmwork || { echo "VM-INIT: cannot mount work share"; echo o > /proc/sysrq-trigger; }
# Host entries the command needs below the tmpfs dirs, at the same path, read-only (tests/src/vm/guest_paths.rs).
TAB=$(printf '\t')
while IFS=$TAB read -r kind path target; do
  case $kind in
    d) mkdir "/newroot$path" && mount --bind "/hostview$path" "/newroot$path" ;;
    f) touch "/newroot$path" && mount --bind "/hostview$path" "/newroot$path" ;;
    l) ln -s "$target" "/newroot$path" ;;
  esac || echo "VM-INIT: cannot expose host path $path"
done < /newroot/tmp/vmwork/expose
for d in tmp run var/tmp; do umount /hostview/$d; done
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
exec switch_root /newroot /bin/sh /tmp/vmwork/run.sh
"#;

/// Builds (or reuses) `target/vm/initramfs-<kver>.cpio.gz`.
pub fn ensure_initramfs(kver: &str) -> Result<PathBuf> {
    let dir = cache_dir();
    // Keyed by the kernel AND the init script, so an edited script never boots a stale cache.
    let script_id = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{INIT}{MODULES:?}"));
        hex::encode(&digest[..6])
    };
    let out = dir.join(format!("initramfs-{kver}-{script_id}.cpio.gz"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let stage = tempfile::tempdir_in(&dir).context("temp dir for the initramfs")?;
    let root = stage.path();
    for d in ["bin", "lib/vm-modules", "proc", "sys", "dev", "newroot"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copy /bin/busybox")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    let mut order = String::new();
    for m in MODULES {
        let src = module_path(kver, m)?;
        let file = src.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
        if !file.ends_with(".ko") {
            bail!("module {} is compressed ({file}); this harness expects plain .ko files", src.display());
        }
        std::fs::copy(&src, root.join("lib/vm-modules").join(&file))?;
        order.push_str(m);
        order.push('\n');
    }
    std::fs::write(root.join("modules.order"), order)?;
    std::fs::write(root.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let tmp = dir.join(format!(".initramfs-{kver}.{}.tmp", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'", root.display(), tmp.display()))
        .status()
        .context("run cpio")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("building the initramfs with cpio failed ({status})");
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Extracts the ELF vmlinux from the xz bzImage (PVH boot skips the in-guest decompression, ~6 s under
/// TCG). None when that is not possible: the caller boots the bzImage instead.
pub fn ensure_vmlinux(kver: &str) -> Option<PathBuf> {
    let dir = cache_dir();
    let out = dir.join(format!("vmlinux-{kver}"));
    if out.is_file() {
        return Some(out);
    }
    let image = std::fs::read(format!("/boot/vmlinuz-{kver}")).ok()?;
    let at = image.windows(6).position(|w| w == b"\xfd7zXZ\0")?;
    std::fs::create_dir_all(&dir).ok()?;
    let tmp = dir.join(format!(".vmlinux-{kver}.{}.tmp", std::process::id()));
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&tmp).ok()?)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take()?;
        let _ = stdin.write_all(&image[at..]);
    }
    let _ = child.wait();
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(&tmp).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF";
    if ok && std::fs::rename(&tmp, &out).is_ok() {
        Some(out)
    } else {
        let _ = std::fs::remove_file(&tmp);
        None
    }
}

/// A host path as the value of a qemu `key=value,...` option: a literal comma is written twice.
fn qemu_opt_value(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Kills and reaps qemu if the harness bails out early (timeout, panic).
struct QemuGuard(std::process::Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum Attempt {
    Done(VmRun),
    /// The guest's check found a host path missing (path, console).
    Unreachable(PathBuf, String),
    Infra(String, String),
}

fn boot_once(kernel: &Path, initrd: &Path, work: &Path, cfg: &VmConfig, accel: &'static str) -> Result<Attempt> {
    let _ = std::fs::remove_file(work.join("output"));
    let console_path = work.join("console.log");
    let console = std::fs::File::create(&console_path)?;
    let start = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", &format!("pc,accel={accel}"), "-cpu", if accel == "kvm" { "host" } else { "max" }])
        .args(["-smp", &cfg.cpus.to_string(), "-m", &format!("{}M", cfg.memory_mb)])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-fsdev", "local,id=r,path=/,security_model=none,readonly=on,multidevs=remap"])
        .args(["-device", "virtio-9p-pci,fsdev=r,mount_tag=hostroot"])
        .arg("-fsdev")
        .arg(format!("local,id=w,path={},security_model=none,multidevs=remap", qemu_opt_value(work)))
        .args(["-device", "virtio-9p-pci,fsdev=w,mount_tag=work"]);
    if let Some(mb) = cfg.disk_mb {
        let disk = work.join("disk.img");
        std::fs::File::create(&disk)?.set_len(u64::from(mb) << 20)?;
        cmd.arg("-drive")
            .arg(format!("file={},if=none,id=d0,format=raw,cache=unsafe", qemu_opt_value(&disk)))
            .args(["-device", "virtio-blk-pci,drive=d0"]);
    }
    cmd.args(["-append", "console=ttyS0 quiet panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::piped());
    let mut guard = QemuGuard(cmd.spawn().context("spawn qemu-system-x86_64")?);
    let deadline = start + cfg.timeout;
    let status = loop {
        if let Some(s) = guard.0.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = guard.0.stderr.take() {
        if status.is_some() {
            let _ = e.read_to_string(&mut stderr);
        }
    }
    drop(guard);
    let elapsed = start.elapsed();
    let console = String::from_utf8_lossy(&std::fs::read(&console_path).unwrap_or_default()).into_owned();
    let code = console
        .lines()
        .filter_map(|l| l.rsplit_once("VM-EXIT-CODE=").map(|(_, c)| c))
        .next_back()
        .and_then(|c| c.trim().parse::<i32>().ok());
    let unreachable =
        console.lines().find_map(|l| l.split_once("VM-UNREACHABLE=").map(|(_, p)| PathBuf::from(p.trim_end())));
    if let Some(path) = unreachable {
        return Ok(Attempt::Unreachable(path, console));
    }
    match (code, status) {
        (Some(exit_code), _) => {
            let output = String::from_utf8_lossy(&std::fs::read(work.join("output")).unwrap_or_default()).into_owned();
            Ok(Attempt::Done(VmRun { exit_code, output, console, elapsed, accel }))
        }
        (None, None) => Ok(Attempt::Infra(format!("timed out after {} s", cfg.timeout.as_secs()), console)),
        (None, Some(s)) => Ok(Attempt::Infra(
            format!("qemu exited ({s}) without a VM-EXIT-CODE line; qemu stderr: {}", stderr.trim()),
            console,
        )),
    }
}

/// Boots the VM and runs `argv` (absolute host paths; the host root is the guest root, read-only) with the
/// work share at [`GUEST_WORK`] as its cwd. Host paths in `argv`, `cfg.env` and `cfg.share` are checked
/// and made reachable first ([`guest_paths`]); one that cannot be is [`VmError::Unreachable`], before
/// boot. Retries once on an infrastructure failure.
pub fn run(argv: &[&str], cfg: &VmConfig) -> std::result::Result<VmRun, VmError> {
    let plan = guest_paths::Plan::for_command(argv, &cfg.env, &cfg.share, Path::new(GUEST_WORK))
        .map_err(VmError::Unreachable)?;
    let setup = || -> Result<(PathBuf, PathBuf, tempfile::TempDir)> {
        let kver = kernel_version()?;
        let initrd = ensure_initramfs(&kver)?;
        let kernel = ensure_vmlinux(&kver).unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{kver}")));
        let work = tempfile::Builder::new().prefix("lazy-vm-").tempdir().context("create the VM work dir")?;
        let mut script = String::from("#!/bin/sh\n# written by tests/src/vm.rs\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
        script.push_str("export HOME=/root\n");
        for (k, v) in &cfg.env {
            script.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        script.push_str(&format!("cd {GUEST_WORK}\n"));
        // A host path that exists but is missing here (its exposure failed: see VM-INIT on the console)
        // is reported naming it, not as the command's own failure.
        script.push_str("unreachable() { sync; printf '\\nVM-UNREACHABLE=%s\\n' \"$1\" > /dev/console; echo o > /proc/sysrq-trigger; sleep 30; }\n");
        for path in &plan.checked {
            let p = shell_quote(&path.display().to_string());
            script.push_str(&format!("[ -e {p} ] || [ -L {p} ] || unreachable {p}\n"));
        }
        let cmd: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!("{} > {GUEST_WORK}/output 2>&1 < /dev/null\n", cmd.join(" ")));
        script.push_str("rc=$?\nsync\nprintf '\\nVM-EXIT-CODE=%s\\n' \"$rc\" > /dev/console\necho o > /proc/sysrq-trigger\nsleep 30\n");
        std::fs::write(work.path().join("run.sh"), script)?;
        std::fs::write(work.path().join("expose"), plan.expose_list())?;
        Ok((kernel, initrd, work))
    };
    let (kernel, initrd, work) = setup().map_err(VmError::Setup)?;
    let accel = if kvm_usable() { "kvm" } else { "tcg" };
    let mut last = (String::new(), String::new());
    for attempt in 1..=2u32 {
        match boot_once(&kernel, &initrd, work.path(), cfg, accel).map_err(VmError::Setup)? {
            Attempt::Done(run) => return Ok(run),
            Attempt::Unreachable(path, console) => {
                let init: Vec<&str> = console.lines().filter(|l| l.contains("VM-INIT")).collect();
                return Err(VmError::Unreachable(guest_paths::Unreachable {
                    path,
                    reason: format!(
                        "it exists on the host but not in the guest, where exposing it failed; guest init said:\n{}",
                        init.join("\n")
                    ),
                }));
            }
            Attempt::Infra(reason, console) => {
                let tail: Vec<&str> = console.lines().rev().take(15).collect();
                let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                eprintln!("VM attempt {attempt} failed (infrastructure): {reason}\n--- console tail ---\n{tail}");
                last = (reason, console);
            }
        }
    }
    let tail: Vec<&str> = last.1.lines().rev().take(40).collect();
    Err(VmError::Infrastructure {
        attempts: 2,
        reason: last.0,
        console_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn qemu_option_values_escape_commas() {
        assert_eq!(qemu_opt_value(Path::new("/tmp/a,b/work")), "/tmp/a,,b/work");
    }
}
