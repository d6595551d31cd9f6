//! Where the workspace's binaries are. Tests run the real binaries a user runs, so they must be
//! built first (`cargo build --workspace --bins`; `tests/run` does it). `cargo test` alone does not
//! build other packages' binaries, hence the explicit panic text.

use std::path::{Path, PathBuf};

/// The directory holding the workspace's binaries for the profile the tests were built with
/// (e.g. `target/debug`).
///
/// Found from the running executable first (`target/debug/deps/<test>` or `target/debug/<bin>`),
/// which follows `CARGO_TARGET_DIR` and profiles automatically; then `CARGO_TARGET_DIR/debug`;
/// then `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent() } else { Some(dir) };
            if let Some(dir) = dir {
                if dir.join("lazyctl").exists() || dir.join("containerd-shim-lazy-v2").exists() {
                    return dir.to_path_buf();
                }
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let dir = if dir.is_absolute() { dir } else { workspace.join(dir) };
            dir.join("debug")
        }
        None => workspace.join("target").join("debug"),
    }
}

/// Path of the workspace binary `name`. Panics with what to run when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: build the binaries first with `cargo build --workspace --bins` \
             (or run `bash tests/run`, which does)",
            path.display()
        );
    }
    path
}

/// `lazyctl`, the vfs command line tool.
pub fn lazyctl() -> PathBuf {
    bin("lazyctl")
}

/// `containerd-shim-lazy-v2`, the shim binary containerd starts.
pub fn shim() -> PathBuf {
    bin("containerd-shim-lazy-v2")
}
