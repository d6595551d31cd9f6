//! Paths inside the container's rootfs: resolving a destination without leaving the rootfs, and
//! creating directories as runc does. Used by the mounts and by /dev setup; mounts nothing itself.

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};

use super::error::{Step, StepResult};

/// Resolves `unsafe_path` inside `root` following symlinks as if `root` were "/", so a hostile
/// image cannot point a mount destination outside its rootfs (runc uses securejoin).
pub(crate) fn secure_join(root: &Path, unsafe_path: &Path) -> StepResult<PathBuf> {
    let mut queue: VecDeque<PathBuf> = unsafe_path.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut current = PathBuf::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        match part.components().next() {
            None | Some(Component::RootDir) | Some(Component::CurDir) | Some(Component::Prefix(_)) => {}
            Some(Component::ParentDir) => {
                current.pop();
            }
            Some(Component::Normal(name)) => {
                let next = current.join(name);
                let full = root.join(&next);
                match std::fs::symlink_metadata(&full) {
                    Ok(m) if m.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(format!(
                                "resolve {} in {}: too many levels of symbolic links",
                                unsafe_path.display(),
                                root.display()
                            )
                            .into());
                        }
                        let target = std::fs::read_link(&full).step(|| format!("readlink {}", full.display()))?;
                        if target.is_absolute() {
                            current = PathBuf::new();
                        }
                        for (i, c) in target.components().enumerate() {
                            queue.insert(i, PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => current = next,
                }
            }
        }
    }
    Ok(root.join(current))
}

/// mkdir -p with mode 0755 as runc (the init runs with umask 0 while it sets up the rootfs).
pub(crate) fn mkdir_all(p: &Path) -> StepResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(p).step_at(p, || format!("mkdir {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.path().join("escape")).unwrap();
        assert_eq!(secure_join(root.path(), Path::new("/abs/dir")).unwrap(), root.path().join("real/dir"));
        assert_eq!(secure_join(root.path(), Path::new("/escape/passwd")).unwrap(), root.path().join("etc/passwd"));
        assert_eq!(secure_join(root.path(), Path::new("/../x")).unwrap(), root.path().join("x"));
    }
}
