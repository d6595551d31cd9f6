//! Debian packages from a newer suite (trixie, sid) for tests and benchmarks that need a newer
//! containerd or a peer such as soci-snapshotter than Debian 12 ships, WITHOUT touching the
//! system's apt configuration: a private sources list naming this machine's own mirror, private
//! list and cache directories, `apt-get download` (no install, no dependency resolution) and
//! `dpkg-deb -x`. The extracted trees are run directly (`root.join("usr/bin/containerd")`); the
//! packages used here need only libc6 >= 2.34 (PLATFORM.md).
//!
//! Cached under `<LAZY_TEST_CACHE>/debs/<suite>/<package>/` (default /var/cache/lazy-tests); remove
//! that directory to fetch the suite's current version again. Concurrent callers (test binaries
//! run in parallel) serialize on a per-suite lock file, extract into a temp dir and publish it with
//! one rename, so nobody ever sees a half-extracted tree. This module never writes the system's
//! /etc/apt, /var/lib/apt or /var/cache/apt.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The extracted root of `package` from Debian `suite` (e.g. `extracted("trixie", "containerd")`),
/// downloaded and extracted on first use, then cached.
pub fn extracted(suite: &str, package: &str) -> Result<PathBuf> {
    check_name("suite", suite)?;
    check_name("package", package)?;
    let suite_dir = crate::containerd::test_cache_dir().join("debs").join(suite);
    let root = suite_dir.join(package);
    if root.is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&suite_dir).with_context(|| format!("creating {}", suite_dir.display()))?;
    let lock_path = suite_dir.join(".lock");
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    // Another caller may have finished while we waited for the lock.
    if root.is_dir() {
        return Ok(root);
    }
    log::info!("fetching Debian {suite}'s {package} into {}", root.display());
    let apt = PrivateApt::new(&suite_dir, suite)?;
    apt.update()?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{package}-"))
        .tempdir_in(&suite_dir)
        .with_context(|| format!("creating a temp dir in {}", suite_dir.display()))?;
    let deb = apt.download(package, work.path())?;
    let staged = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staged), "dpkg-deb -x (apt-get install dpkg)")?;
    let version = deb_version(&deb)?;
    std::fs::write(suite_dir.join(format!("{package}.version")), format!("{version}\n"))?;
    std::fs::rename(&staged, &root).with_context(|| format!("moving {} to {}", staged.display(), root.display()))?;
    log::info!("Debian {suite}'s {package} {version} extracted at {}", root.display());
    Ok(root)
}

/// The Debian version of the cached `package` of `suite` (as `dpkg-deb` read it), if cached.
pub fn cached_version(suite: &str, package: &str) -> Option<String> {
    let path = crate::containerd::test_cache_dir().join("debs").join(suite).join(format!("{package}.version"));
    std::fs::read_to_string(path).ok().map(|v| v.trim().to_string())
}

/// This machine's Debian mirror (the main archive, not debian-security), from apt's own index
/// targets, so the download goes wherever the system's apt goes.
pub fn mirror() -> Result<String> {
    let out = Command::new("apt-get")
        .args(["indextargets", "--format", "$(REPO_URI) $(RELEASE)"])
        .output()
        .context("running apt-get indextargets")?;
    if !out.status.success() {
        bail!("apt-get indextargets failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let uris: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    uris.iter()
        .find(|u| !u.contains("security") && !u.contains("backports"))
        .or_else(|| uris.first())
        .map(|u| u.to_string())
        .with_context(|| format!("apt-get indextargets names no repository (output: {text:?}); is apt configured?"))
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && !name.starts_with('.');
    if !ok {
        bail!("{what} name {name:?} is not a Debian {what} name");
    }
    Ok(())
}

/// apt-get with every path that matters pointed at private directories under `dir`.
struct PrivateApt {
    options: Vec<String>,
    suite: String,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<PrivateApt> {
        let mirror = mirror()?;
        let state = dir.join(".apt");
        let lists = state.join("lists");
        let cache = state.join("cache");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(cache.join("archives/partial"))?;
        let sources = state.join("sources.list");
        std::fs::write(&sources, format!("deb [arch=amd64] {mirror} {suite} main\n"))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/nonexistent".to_string(),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            // The private dirs need not be readable by _apt; download as root.
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(PrivateApt { options, suite: suite.to_string() })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.args(["-q", "-y"]).args(&self.options).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn update(&self) -> Result<()> {
        run(self.command().arg("update"), &format!("apt-get update of Debian {} (private sources list)", self.suite))
    }

    /// Downloads `package`'s .deb into `dir`; returns its path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        run(
            self.command().arg("download").arg(package).current_dir(dir),
            &format!("apt-get download {package} from Debian {}", self.suite),
        )?;
        let deb = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        });
        deb.with_context(|| {
            format!("apt-get download {package} succeeded but left no {package}_*.deb in {}", dir.display())
        })
    }
}

fn deb_version(deb: &Path) -> Result<String> {
    let out = Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Version").output().context("running dpkg-deb -f")?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} Version failed: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("package", "containerd").is_ok());
        assert!(check_name("package", "soci-snapshotter").is_ok());
        assert!(check_name("suite", "sid").is_ok());
        assert!(check_name("package", "../etc").is_err());
        assert!(check_name("package", "").is_err());
        assert!(check_name("package", "a b").is_err());
    }
}
