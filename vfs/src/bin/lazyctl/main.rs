//! `lazyctl`: convert images to lazy images, mount them, and look inside. Argument parsing only;
//! each subcommand lives in its own file and calls into the `vfs` library.

mod convert;
mod inspect;
mod mount;
mod optimize;
mod sandbox;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lazyctl", version, about = "Lazy container images: convert, optimize, mount, inspect, stats")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an image (registry reference or oci:DIR[:TAG]) into a lazy image pushed to DST.
    Convert(convert::Args),
    /// Mount a lazy image read-only at MOUNTPOINT (foreground; unmounts on SIGINT/SIGTERM).
    Mount(mount::Args),
    /// Print a mounted lazy image's counters as JSON.
    Stats(stats::Args),
    /// Summarise a lazy image's index.
    Inspect(inspect::Args),
    /// Convert SRC, record what CMD reads first in a sandbox over a lazy mount of it, and publish
    /// DST with those files first (prefetch list, contiguous hot blob).
    Optimize(optimize::Args),
    /// Internal: the sandbox helper `optimize` runs CMD through.
    #[command(hide = true, name = "sandbox-init")]
    SandboxInit(sandbox::InitArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Optimize(args) => optimize::run(args),
        // Never returns; nothing above started a thread, as the helper requires (see sandbox.rs).
        Command::SandboxInit(args) => sandbox::init(args),
    };
    if let Err(err) = result {
        eprintln!("lazyctl: {err:#}");
        std::process::exit(1);
    }
}
