//! Steps the vfs acceptance tests share: publish a built image to the test registry (layout +
//! skopeo push), convert it with `lazyctl convert`, read files the way a user's process would.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cleanup::temp_dir;
use crate::images::{self, Image};
use crate::lazyctl;
use crate::prereq::Prereq;
use crate::registry::Registry;

/// What every vfs end-to-end test needs.
pub const VFS_PREREQS: &[Prereq] =
    &[Prereq::Root, Prereq::Fuse, Prereq::Tool("docker-registry"), Prereq::Tool("skopeo")];

/// An image pushed to the test registry and its lazy conversion.
pub struct Published {
    /// The OCI layout the image was built in (kept: umoci unpacks from it).
    pub layout: tempfile::TempDir,
    pub tag: String,
    /// `HOST/src/<name>:<tag>`: the ordinary image.
    pub source: String,
    /// `lazy/<name>`: repository of the lazy image.
    pub lazy_repo: String,
    /// `HOST/lazy/<name>:<tag>`: the converted lazy image.
    pub lazy: String,
    /// `lazyctl convert` stdout.
    pub convert_summary: String,
}

/// Writes `image` as a layout, pushes it as `src/<name>:v1`, converts it to `lazy/<name>:v1`.
pub fn publish_and_convert(registry: &Registry, image: &Image, name: &str, convert_args: &[&str]) -> Result<Published> {
    let layout = temp_dir(&format!("layout-{name}"));
    let tag = "v1".to_string();
    image.write_layout(layout.path(), &tag).context("writing the OCI layout")?;
    let source = registry.reference(&format!("src/{name}:{tag}"));
    let start = Instant::now();
    images::push(layout.path(), &tag, &source)?;
    log::info!("pushed {source} in {:.1?}", start.elapsed());
    let lazy_repo = format!("lazy/{name}");
    let lazy = registry.reference(&format!("{lazy_repo}:{tag}"));
    let start = Instant::now();
    let convert_summary = lazyctl::convert(&source, &lazy, convert_args)?;
    log::info!("converted {source} -> {lazy} in {:.1?}:\n{convert_summary}", start.elapsed());
    Ok(Published { layout, tag, source, lazy_repo, lazy, convert_summary })
}

/// Reads a whole file; on failure returns the errno (EIO is what the contract promises for
/// unavailable or corrupt content).
pub fn read_errno(path: &Path) -> std::result::Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Reads a file and reports how long it took.
pub fn timed_read(path: &Path) -> (std::result::Result<Vec<u8>, i32>, Duration) {
    let start = Instant::now();
    let result = read_errno(path);
    (result, start.elapsed())
}

pub use crate::wait_until;

/// Every file (recursively) under `dir` whose name contains `needle`.
pub fn find_files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy().contains(needle) {
                out.push(path);
            }
        }
    }
    out
}

/// Formats a byte count as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
