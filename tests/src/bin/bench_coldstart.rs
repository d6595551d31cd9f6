//! `cargo run --release -p lazy-tests --bin bench-coldstart -- [OPTIONS]`: cold and warm container
//! starts (pull + run until the first output line or HTTP 200) of a full pull, this shim with a
//! converted image, this shim with an `lazyctl optimize`d image and SOCI, behind an emulated link
//! (default 20 ms RTT, 200 Mbit/s), on one containerd 1.7 from Debian trixie. Prints a table;
//! writes a PNG chart and the raw samples (JSON, CSV) when asked. See README "Benchmarks".
//!
//! Needs root, FUSE, docker-registry, skopeo, mmdebstrap, openssl, curl, runc, the Debian mirror,
//! and the workspace binaries (`cargo build --release --workspace --bins`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use harness::coldstart::{self, report, Options, Variant};
use harness::link::Shape;

#[derive(Parser)]
#[command(
    name = "bench-coldstart",
    about = "Cold-start benchmark: full pull, lazy, optimized lazy and SOCI behind an emulated link"
)]
struct Args {
    /// Samples per cell (cold and warm each).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Comma-separated workloads: py-print, py-import, node-http.
    #[arg(long, default_value = "py-print,py-import,node-http", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Comma-separated variants: full, lazy, optimized, soci.
    #[arg(long, default_value = "full,lazy,optimized,soci", value_delimiter = ',')]
    variants: Vec<String>,
    /// Time only cold starts.
    #[arg(long)]
    no_warm: bool,
    /// Round-trip time of the link, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    rtt_ms: f64,
    /// Rate of the link, in Mbit/s each way.
    #[arg(long, default_value_t = 200.0)]
    mbit: f64,
    /// Write the PNG bar chart here; the raw samples go next to it (.json, .csv).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    harness::init_logging();
    let args = Args::parse();
    let opts = Options {
        samples: args.samples,
        workloads: args.workloads.iter().map(|w| coldstart::workload(w)).collect::<Result<_>>()?,
        variants: args.variants.iter().map(|v| Variant::parse(v)).collect::<Result<_>>()?,
        warm: !args.no_warm,
        shape: Shape::new(Duration::from_secs_f64(args.rtt_ms / 1e3), args.mbit),
    };
    let report = coldstart::run(opts).context("cold-start benchmark")?;
    print!("{}", report::table(&report));
    if let Some(png) = &args.out {
        let json = coldstart::sibling(png, "json");
        let csv = coldstart::sibling(png, "csv");
        report::write_json(&report, &json)?;
        report::write_csv(&report, &csv)?;
        coldstart::chart::write_png(&report, png)?;
        println!("wrote {}, {}, {}", png.display(), json.display(), csv.display());
    }
    Ok(())
}
