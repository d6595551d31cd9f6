//! The benchmark's outputs: the table on stdout, raw samples as JSON and CSV.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Mode, Report, Sample, Variant};

/// Median of `v` (sorted in place); None when empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Median, min and max of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
    pub median_mb: f64,
    pub median_requests: f64,
}

/// The cell of (`workload`, `variant`, `mode`), if any sample has it.
pub fn cell(samples: &[Sample], workload: &str, variant: Variant, mode: Mode) -> Option<Cell> {
    let s: Vec<&Sample> =
        samples.iter().filter(|s| s.workload == workload && s.variant == variant && s.mode == mode).collect();
    let mut secs: Vec<f64> = s.iter().map(|s| s.seconds).collect();
    let mut mb: Vec<f64> = s.iter().map(|s| s.link_down_bytes as f64 / 1e6).collect();
    let mut req: Vec<f64> = s.iter().map(|s| s.requests as f64).collect();
    let median_s = median(&mut secs)?;
    Some(Cell {
        median: median_s,
        min: secs[0],
        max: secs[secs.len() - 1],
        samples: secs.len(),
        median_mb: median(&mut mb).unwrap_or(0.0),
        median_requests: median(&mut req).unwrap_or(0.0),
    })
}

/// Workloads, variants and modes present in the samples, in first-seen / declaration order.
pub fn axes(samples: &[Sample]) -> (Vec<String>, Vec<Variant>, Vec<Mode>) {
    let mut workloads: Vec<String> = Vec::new();
    for s in samples {
        if !workloads.contains(&s.workload) {
            workloads.push(s.workload.clone());
        }
    }
    let mut variants: Vec<Variant> = samples.iter().map(|s| s.variant).collect();
    variants.sort();
    variants.dedup();
    let mut modes: Vec<Mode> = samples.iter().map(|s| s.mode).collect();
    modes.sort();
    modes.dedup();
    (workloads, variants, modes)
}

/// The table printed at the end of a run.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let (workloads, variants, modes) = axes(&report.samples);
    let _ = writeln!(out, "\ncold start = pull + run until the first output line (node-http: first HTTP 200)");
    let _ = writeln!(out, "link: configured {}; {}", report.shape, report.measured);
    for (k, v) in &report.versions {
        let _ = writeln!(out, "{k}: {v}");
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:<5} {:<24} {:>8} {:>8} {:>8} {:>4} {:>9} {:>9}",
        "workload", "mode", "variant", "median", "min", "max", "n", "MB down", "requests"
    );
    for w in &workloads {
        for &m in &modes {
            for &v in &variants {
                let Some(c) = cell(&report.samples, w, v, m) else { continue };
                let _ = writeln!(
                    out,
                    "{:<10} {:<5} {:<24} {:>7.2}s {:>7.2}s {:>7.2}s {:>4} {:>9.1} {:>9.0}",
                    w,
                    m.name(),
                    v.label(),
                    c.median,
                    c.min,
                    c.max,
                    c.samples,
                    c.median_mb,
                    c.median_requests
                );
            }
        }
    }
    // The view: one row per workload and mode, one column per variant (medians).
    let _ = write!(out, "\n| start |");
    for v in &variants {
        let _ = write!(out, " {} |", v.label());
    }
    let _ = write!(out, "\n|---|");
    for _ in &variants {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    for w in &workloads {
        for &m in &modes {
            let _ = write!(out, "| {w} {} |", m.name());
            for &v in &variants {
                match cell(&report.samples, w, v, m) {
                    Some(c) => {
                        let _ = write!(out, " {:.2} s |", c.median);
                    }
                    None => {
                        let _ = write!(out, " - |");
                    }
                }
            }
            let _ = writeln!(out);
        }
    }
    if report.floors.is_empty() {
        let _ = writeln!(out, "\nfloor: needs the optimized variant (its prefetch list is what the workload reads)");
    }
    for f in &report.floors {
        let _ = write!(
            out,
            "\nfloor {}: reads {} files, {:.1} MB compressed -> transfer floor {:.2} s",
            f.workload,
            f.files,
            f.compressed_bytes as f64 / 1e6,
            f.transfer_seconds
        );
        if let Some(p) = f.practical_seconds {
            let _ = write!(out, "; practical floor (+ warm full start) {p:.2} s");
        }
        if let Some(c) = cell(&report.samples, &f.workload, Variant::Optimized, Mode::Cold) {
            let base = f.practical_seconds.unwrap_or(f.transfer_seconds);
            let _ = write!(out, "; optimized cold = {:.2}x that floor", c.median / base);
        }
    }
    let _ = writeln!(out);
    for s in report.samples.iter().filter(|s| !s.note.is_empty()) {
        let _ = writeln!(
            out,
            "note: {} {} {} round {}: {}",
            s.workload,
            s.variant.name(),
            s.mode.name(),
            s.round + 1,
            s.note
        );
    }
    out
}

/// Writes the whole report as JSON.
pub fn write_json(report: &Report, path: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Writes one CSV row per sample.
pub fn write_csv(report: &Report, path: &Path) -> Result<()> {
    let mut out = String::from(
        "workload,variant,mode,round,seconds,pull_seconds,link_down_bytes,link_up_bytes,connections,requests,blob_requests,blob_bytes,output,note\n",
    );
    for s in &report.samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{:.4},{:.4},{},{},{},{},{},{},\"{}\",\"{}\"",
            s.workload,
            s.variant.name(),
            s.mode.name(),
            s.round,
            s.seconds,
            s.pull_seconds,
            s.link_down_bytes,
            s.link_up_bytes,
            s.connections,
            s.requests,
            s.blob_requests,
            s.blob_bytes,
            s.output.replace('"', "\"\""),
            s.note.replace('"', "\"\"")
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(variant: Variant, mode: Mode, seconds: f64) -> Sample {
        Sample {
            workload: "w".into(),
            variant,
            mode,
            round: 0,
            seconds,
            pull_seconds: 0.0,
            link_down_bytes: 2_000_000,
            link_up_bytes: 0,
            connections: 1,
            requests: 3,
            blob_requests: 1,
            blob_bytes: 10,
            output: "42".into(),
            note: String::new(),
        }
    }

    #[test]
    fn median_and_cells() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let s = vec![
            sample(Variant::Full, Mode::Cold, 3.0),
            sample(Variant::Full, Mode::Cold, 1.0),
            sample(Variant::Soci, Mode::Cold, 2.0),
        ];
        let c = cell(&s, "w", Variant::Full, Mode::Cold).unwrap();
        assert_eq!((c.median, c.min, c.max, c.samples, c.median_mb), (2.0, 1.0, 3.0, 2, 2.0));
        assert!(cell(&s, "w", Variant::Lazy, Mode::Cold).is_none());
        let (w, v, m) = axes(&s);
        assert_eq!((w, v, m), (vec!["w".to_string()], vec![Variant::Full, Variant::Soci], vec![Mode::Cold]));
    }
}
