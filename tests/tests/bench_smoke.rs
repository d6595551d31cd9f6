//! CI smoke of `bench-coldstart` (README "Benchmarks"), so the benchmark harness cannot rot: one
//! sample of `python3 -c 'print(42)'` on the quickstart python image, cold and warm, through the
//! link emulator, for a full pull, this shim with a converted image, this shim with a
//! `lazyctl optimize`d image, and SOCI (over its HTTPS path). Asserts that every
//! variant printed the workload's output, that SOCI really started lazily (no silent full pull),
//! and that the table, the raw samples and the PNG chart were written. No timing is asserted.

use std::process::Command;

use harness::{prerequisites_met, Prereq};

#[test]
fn bench_coldstart_smoke_every_variant_prints_and_the_report_is_written() {
    let prereqs = [
        Prereq::Root,
        Prereq::Fuse,
        Prereq::Filesystem("overlay"),
        Prereq::Tool("docker-registry"),
        Prereq::Tool("skopeo"),
        Prereq::Tool("mmdebstrap"),
        Prereq::Tool("openssl"),
        Prereq::Tool("curl"),
        Prereq::Tool("runc"),
        Prereq::Tool("apt-get"),
        Prereq::Tool("dpkg-deb"),
    ];
    if !prerequisites_met("bench_smoke", &prereqs) {
        return;
    }
    let variants = ["full", "lazy", "optimized", "soci"];
    let out_dir = harness::cleanup::temp_dir("bench-smoke");
    let png = out_dir.path().join("coldstart.png");
    let out = Command::new(harness::bins::bin("bench-coldstart"))
        .args(["--samples", "1", "--workloads", "py-print", "--variants", &variants.join(",")])
        .arg("--out")
        .arg(&png)
        .output()
        .expect("running bench-coldstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-coldstart failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    eprintln!("{stdout}");

    assert!(stdout.contains("link: configured 20.0 ms RTT, 200 Mbit/s; measured"), "no link shape check:\n{stdout}");
    for variant in &variants {
        for mode in ["cold", "warm"] {
            let printed = stdout.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() > 4
                    && words[0] == "round"
                    && words[2] == "py-print"
                    && words[3] == *variant
                    && words[4] == mode
                    && l.contains("\"42\"")
            });
            assert!(printed, "no {mode} {variant} sample that printed 42:\n{stdout}");
        }
    }
    assert!(
        !stdout.contains("note:"),
        "a variant did not run as intended (e.g. SOCI fell back to a full pull):\n{stdout}"
    );
    assert!(stdout.contains("workload   mode  variant"), "no table:\n{stdout}");
    assert!(stdout.contains("| py-print cold |"), "no summary table:\n{stdout}");

    let png_bytes = std::fs::read(&png).expect("the PNG chart");
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && png_bytes.len() > 10_000, "not a PNG chart");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(png.with_extension("json")).unwrap()).unwrap();
    assert_eq!(json["samples"].as_array().unwrap().len(), variants.len() * 2, "{json}");
    let csv = std::fs::read_to_string(png.with_extension("csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + variants.len() * 2, "{csv}");
}
