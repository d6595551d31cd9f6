//! `lazyctl stats`: print the counters of a mounted lazy image as JSON.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where the lazy image is mounted (by `lazyctl mount` or the shim).
    mountpoint: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let snapshot = vfs::fs::read_stats(&args.mountpoint)?;
    println!("{}", serde_json::to_string_pretty(&snapshot)?);
    Ok(())
}
