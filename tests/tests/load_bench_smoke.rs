//! CI smoke of `bench-load` (README "Benchmarks"), so the load benchmark cannot rot: N = 1 and 3,
//! one round, a small file, also in one shim; it must finish, print a row per cell and count the
//! registry's bytes. The real figures (N = 1, 10, 30, 50, 5 rounds) come from a quiet machine.

use std::process::Command;

use harness::prereq::CONTAINERD_PREREQS;
use harness::{prerequisites_met, Prereq};

#[test]
fn bench_load_smoke_prints_a_row_per_cell() {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Fuse]].concat();
    if !prerequisites_met("bench_load_smoke_prints_a_row_per_cell", &prereqs) {
        return;
    }
    let out = Command::new(harness::bins::bin("bench-load"))
        .args(["--n", "1,3", "--rounds", "1", "--data-mib", "8", "--pod"])
        .output()
        .expect("running bench-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-load failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("N ")).collect();
    assert_eq!(table.len(), 4, "a header and rows for 1, 3 and 3 (one shim):\n{stdout}");
    for (row, want) in table[1..].iter().zip(["1 ", "3 ", "3 (one shim)"]) {
        assert!(row.starts_with(want), "row {row:?} (want {want:?}):\n{stdout}");
        let cols: Vec<&str> = row.split_whitespace().collect();
        let registry_mb: f64 = cols[cols.len() - 8].parse().unwrap_or_else(|_| panic!("registry MB in {row:?}"));
        assert!(registry_mb > 8.0, "the registry served {registry_mb} MB for an 8 MiB file: {row:?}");
    }
}
