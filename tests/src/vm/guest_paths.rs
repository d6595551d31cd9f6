//! Which host paths a guest command names, and how the guest reaches them.
//!
//! The guest's root is the host root, read-only over 9p, but the guest mounts its own tmpfs over
//! [`GUEST_TMPFS`] (/tmp, /run, /var/tmp; see `INIT` in vm.rs), which hides the host's files below them:
//! a test binary in a checkout or `CARGO_TARGET_DIR` under /tmp would otherwise be "not found" (exit
//! 127) inside the guest. Every absolute path in the command line, in the environment (`:`-separated
//! lists too) and in [`VmConfig::share`](super::VmConfig::share) is checked here, ON THE HOST, before
//! boot. Below a tmpfs directory, the host's entry directly under it (e.g. `/tmp/checkout` for
//! `/tmp/checkout/target/debug/x`) is exposed to the guest read-only AT THE SAME PATH, bind-mounted from
//! the host root over a mount point in the guest's tmpfs: nothing is rewritten, and a binary's
//! `current_exe()` still finds the files next to it. A path the guest cannot be given is an
//! [`Unreachable`] error naming it.
//!
//! Paths under /proc, /sys and /dev name the guest's own kernel objects and are left alone; files under
//! /dev/shm are not shared. This module only plans: it never mounts or boots anything.

use std::path::{Component, Path, PathBuf};

/// Directories the guest mounts its own tmpfs over; the host's entries directly below them can be exposed.
pub const GUEST_TMPFS: &[&str] = &["/tmp", "/run", "/var/tmp"];

/// Host directories whose files the guest does not see and the harness does not expose (the guest mounts
/// its own tmpfs there, after moving its own /dev over the host's).
pub const NOT_SHARED: &[&str] = &["/dev/shm"];

/// Where a path names the guest's own kernel objects (its procfs, sysfs, devtmpfs), not a host file.
const GUEST_KERNEL: &[&str] = &["/proc", "/sys", "/dev"];

/// One host entry directly below a [`GUEST_TMPFS`] directory, recreated at the same path in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// A directory, bind-mounted read-only from the host root.
    Dir(PathBuf),
    /// Anything else that is not a symlink (file, socket, fifo), bind-mounted read-only.
    File(PathBuf),
    /// A symlink, recreated with the same target (which is planned separately when the host path
    /// resolves through it).
    Symlink { path: PathBuf, target: PathBuf },
}

impl Exposure {
    pub fn path(&self) -> &Path {
        match self {
            Exposure::Dir(p) | Exposure::File(p) => p,
            Exposure::Symlink { path, .. } => path,
        }
    }

    /// The line of the guest's `expose` list that `INIT` reads: `kind<TAB>path[<TAB>target]`.
    pub fn line(&self) -> String {
        match self {
            Exposure::Dir(p) => format!("d\t{}", p.display()),
            Exposure::File(p) => format!("f\t{}", p.display()),
            Exposure::Symlink { path, target } => format!("l\t{}\t{}", path.display(), target.display()),
        }
    }
}

/// A host path the guest command needs but cannot be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host path {} cannot be used by the VM guest: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for Unreachable {}

/// What the guest needs before its command runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Host entries to recreate in the guest's tmpfs directories, in first-named order, no duplicates.
    pub exposures: Vec<Exposure>,
    /// Host paths that exist and that the command names: the guest checks each before running the
    /// command, so a failed exposure is reported naming the path instead of as the command's failure.
    pub checked: Vec<PathBuf>,
}

impl Plan {
    /// Plans `argv` (an absolute `argv[0]` must exist on the host), the values of `env` and `share`
    /// (each must exist on the host). Other absolute arguments and environment values that do not exist
    /// on the host are taken to be the guest's own paths and left alone. `guest_work` is where the
    /// guest mounts its work share: a host path that would be exposed over it is an error.
    pub fn for_command(
        argv: &[&str],
        env: &[(String, String)],
        share: &[PathBuf],
        guest_work: &Path,
    ) -> Result<Plan, Unreachable> {
        let mut plan = Plan::default();
        for (i, arg) in argv.iter().enumerate() {
            if arg.starts_with('/') {
                plan.add(Path::new(arg), i == 0, guest_work)?;
            }
        }
        for (_, value) in env {
            for part in value.split(':').filter(|p| p.starts_with('/')) {
                plan.add(Path::new(part), false, guest_work)?;
            }
        }
        for path in share {
            if !path.is_absolute() {
                return Err(unreachable(path, "is relative; name host paths for the guest absolutely"));
            }
            plan.add(path, true, guest_work)?;
        }
        Ok(plan)
    }

    fn add(&mut self, path: &Path, required: bool, guest_work: &Path) -> Result<(), Unreachable> {
        check_text(path)?;
        if under_any(path, GUEST_KERNEL) && !under_any(path, NOT_SHARED) {
            return Ok(());
        }
        if let Err(e) = std::fs::symlink_metadata(path) {
            if required {
                return Err(unreachable(path, format!("does not exist on the host ({e})")));
            }
            return Ok(());
        }
        self.reach(path, path, guest_work)?;
        // The guest resolves symlinks in its own tree: what the path resolves to must be reachable too.
        if let Ok(real) = std::fs::canonicalize(path) {
            if real != path {
                self.reach(&real, path, guest_work)?;
            }
        }
        if !self.checked.iter().any(|c| c == path) {
            self.checked.push(path.to_path_buf());
        }
        Ok(())
    }

    /// Plans one spelling (`path`, or what `named` resolves to) of a host path the command names.
    fn reach(&mut self, path: &Path, named: &Path, guest_work: &Path) -> Result<(), Unreachable> {
        let via = if path == named { String::new() } else { format!(" (it resolves to {})", path.display()) };
        for dir in NOT_SHARED {
            if strictly_below(path, Path::new(dir)) {
                return Err(unreachable(
                    named,
                    format!(
                        "is below {dir}{via}, which the guest mounts its own tmpfs over and does not share \
                         with the host; put the file elsewhere (e.g. under the target directory)"
                    ),
                ));
            }
        }
        for dir in GUEST_TMPFS {
            let Some(top) = top_below(path, Path::new(dir)) else { continue };
            if top.starts_with(guest_work) || guest_work.starts_with(&top) {
                return Err(unreachable(
                    named,
                    format!(
                        "is below {}{via}, where the guest mounts its work share; use another directory",
                        top.display()
                    ),
                ));
            }
            let meta = std::fs::symlink_metadata(&top)
                .map_err(|e| unreachable(named, format!("its entry {} cannot be read ({e})", top.display())))?;
            let exposure = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&top)
                    .map_err(|e| unreachable(named, format!("symlink {} cannot be read ({e})", top.display())))?;
                check_text(&target)
                    .map_err(|u| unreachable(named, format!("symlink {}: {}", top.display(), u.reason)))?;
                Exposure::Symlink { path: top, target }
            } else if meta.is_dir() {
                Exposure::Dir(top)
            } else {
                Exposure::File(top)
            };
            if !self.exposures.contains(&exposure) {
                self.exposures.push(exposure);
            }
        }
        Ok(())
    }

    /// The `expose` list `INIT` reads from the work share.
    pub fn expose_list(&self) -> String {
        self.exposures.iter().map(|e| e.line() + "\n").collect()
    }
}

fn unreachable(path: &Path, reason: impl Into<String>) -> Unreachable {
    Unreachable { path: path.to_path_buf(), reason: reason.into() }
}

/// The guest's mount list and run script carry paths as tab-separated UTF-8 lines.
fn check_text(path: &Path) -> Result<(), Unreachable> {
    match path.to_str() {
        None => Err(unreachable(path, "is not valid UTF-8, which the guest's run script cannot carry")),
        Some(s) if s.contains(['\n', '\t']) => {
            Err(unreachable(path, "contains a tab or a newline, which the guest's mount list cannot carry"))
        }
        Some(_) => Ok(()),
    }
}

fn under_any(path: &Path, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| path.starts_with(d))
}

fn strictly_below(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) && path != dir
}

/// `dir/<first component>` when `path` is strictly below `dir` without `..` right after it (a path like
/// `/tmp/../x` is judged by what it resolves to).
fn top_below(path: &Path, dir: &Path) -> Option<PathBuf> {
    match path.strip_prefix(dir).ok()?.components().next()? {
        Component::Normal(name) => Some(dir.join(name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch dir directly under `parent` (a guest tmpfs directory), removed on drop.
    fn scratch(parent: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix("lazy-guest-paths-").tempdir_in(parent).unwrap()
    }

    fn work() -> PathBuf {
        PathBuf::from("/tmp/vmwork-not-here")
    }

    #[test]
    fn a_binary_under_tmp_exposes_its_top_directory() {
        let top = scratch("/tmp");
        let bin = top.path().join("target/debug/deps/x");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, b"").unwrap();
        let plan = Plan::for_command(&[bin.to_str().unwrap(), "--flag", "/tmp/guest-made"], &[], &[], &work()).unwrap();
        assert_eq!(plan.exposures, vec![Exposure::Dir(top.path().to_path_buf())]);
        assert_eq!(plan.checked, vec![bin.clone()]);
        assert_eq!(plan.expose_list(), format!("d\t{}\n", top.path().display()));
    }

    #[test]
    fn paths_outside_the_tmpfs_directories_need_nothing() {
        let plan =
            Plan::for_command(&["/bin/sh", "-c", "true"], &[("P".into(), "/usr/bin:/proc/self".into())], &[], &work())
                .unwrap();
        assert!(plan.exposures.is_empty());
        assert_eq!(plan.checked, vec![PathBuf::from("/bin/sh"), PathBuf::from("/usr/bin")]);
    }

    #[test]
    fn env_lists_files_and_var_tmp_are_planned() {
        let a = scratch("/tmp");
        let b = scratch("/var/tmp");
        let file = b.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let value = format!("/usr/bin:{}:/tmp/not-on-the-host-{}", a.path().display(), std::process::id());
        let plan =
            Plan::for_command(&["/bin/true"], &[("PATH".into(), value)], std::slice::from_ref(&file), &work()).unwrap();
        assert_eq!(plan.exposures, vec![Exposure::Dir(a.path().to_path_buf()), Exposure::Dir(b.path().to_path_buf())]);
        assert!(plan.checked.contains(&file) && plan.checked.contains(&a.path().to_path_buf()));
    }

    #[test]
    fn a_plain_file_directly_under_tmp_is_exposed_as_a_file() {
        let file = tempfile::Builder::new().prefix("lazy-guest-paths-").tempfile_in("/tmp").unwrap();
        let plan = Plan::for_command(&["/bin/cat", file.path().to_str().unwrap()], &[], &[], &work()).unwrap();
        assert_eq!(plan.exposures, vec![Exposure::File(file.path().to_path_buf())]);
    }

    #[test]
    fn a_symlink_is_recreated_and_its_target_exposed() {
        let real = scratch("/tmp");
        std::fs::write(real.path().join("f"), b"x").unwrap();
        let link = PathBuf::from(format!("{}-link", real.path().display()));
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let named = link.join("f");
        let plan = Plan::for_command(&["/bin/cat", named.to_str().unwrap()], &[], &[], &work());
        std::fs::remove_file(&link).unwrap();
        assert_eq!(
            plan.unwrap().exposures,
            vec![
                Exposure::Symlink { path: link.clone(), target: real.path().to_path_buf() },
                Exposure::Dir(real.path().to_path_buf())
            ]
        );
    }

    #[test]
    fn a_missing_program_fails_on_the_host_naming_it() {
        let missing = format!("/tmp/lazy-no-such-dir-{}/bin/guest", std::process::id());
        let err = Plan::for_command(&[&missing], &[], &[], &work()).unwrap_err();
        assert_eq!(err.path, PathBuf::from(&missing));
        assert!(err.to_string().contains(&missing) && err.reason.contains("does not exist on the host"), "{err}");
        let err = Plan::for_command(&["/bin/true"], &[], &[PathBuf::from(&missing)], &work()).unwrap_err();
        assert!(err.to_string().contains(&missing), "{err}");
        let err = Plan::for_command(&["/bin/true"], &[], &[PathBuf::from("rel/x")], &work()).unwrap_err();
        assert!(err.to_string().contains("rel/x") && err.reason.contains("relative"), "{err}");
    }

    #[test]
    fn a_host_path_over_the_work_share_is_refused_naming_it() {
        let top = scratch("/tmp");
        let file = top.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = Plan::for_command(&["/bin/cat", file.to_str().unwrap()], &[], &[], top.path()).unwrap_err();
        assert_eq!(err.path, file);
        assert!(err.reason.contains("work share"), "{err}");
    }

    #[test]
    fn dev_shm_is_refused_naming_the_path() {
        let file = tempfile::Builder::new().prefix("lazy-guest-paths-").tempfile_in("/dev/shm").unwrap();
        let err = Plan::for_command(&["/bin/cat", file.path().to_str().unwrap()], &[], &[], &work()).unwrap_err();
        assert_eq!(err.path, file.path());
        assert!(err.to_string().contains(file.path().to_str().unwrap()) && err.reason.contains("/dev/shm"), "{err}");
        // The guest's own /dev/null is fine.
        let plan = Plan::for_command(&["/bin/cat", "/dev/null"], &[], &[], &work()).unwrap();
        assert_eq!(plan, Plan { exposures: vec![], checked: vec![PathBuf::from("/bin/cat")] });
    }

    #[test]
    fn a_newline_in_a_path_is_refused_naming_it() {
        let top = scratch("/tmp");
        let odd = top.path().join("a\nb");
        std::fs::write(&odd, b"").unwrap();
        let err = Plan::for_command(&["/bin/cat", odd.to_str().unwrap()], &[], &[], &work()).unwrap_err();
        assert_eq!(err.path, odd);
        assert!(err.reason.contains("newline"), "{err}");
    }
}
