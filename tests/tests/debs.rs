//! The Debian packages of newer suites that the version tests and the cold-start benchmark run:
//! downloaded with a private apt sources list, extracted, cached, and runnable on this Debian 12.
//! Needs the Debian mirror (apt-get) and root (the cache lives under /var/cache/lazy-tests).

use std::process::Command;

use harness::{prerequisites_met, Prereq};

fn version_line(bin: &std::path::Path, arg: &str) -> String {
    let out = Command::new(bin).arg(arg).output().unwrap_or_else(|e| panic!("running {} {arg}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {arg} exited {}: {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The version word of `containerd --version` ("containerd github.com/containerd/containerd v1.7.24 ...").
fn containerd_version(root: &std::path::Path) -> String {
    let line = version_line(&root.join("usr/bin/containerd"), "--version");
    line.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("unexpected containerd --version: {line}"))
        .trim_start_matches('v')
        .to_string()
}

#[test]
fn debs_containerd_and_soci_from_newer_suites_run_here() {
    if !prerequisites_met("debs", &[Prereq::Root, Prereq::Tool("apt-get"), Prereq::Tool("dpkg-deb")]) {
        return;
    }
    harness::init_logging();

    let trixie = harness::debs::extracted("trixie", "containerd").expect("containerd from trixie");
    let v = containerd_version(&trixie);
    assert!(v.starts_with("1.7."), "trixie's containerd is 1.7.x, got {v}");
    assert!(trixie.join("usr/bin/ctr").is_file() && trixie.join("usr/bin/containerd-shim-runc-v2").is_file());
    // A second call is served from the cache: same path, no download.
    assert_eq!(harness::debs::extracted("trixie", "containerd").unwrap(), trixie);

    let sid = harness::debs::extracted("sid", "containerd").expect("containerd from sid");
    let v = containerd_version(&sid);
    assert!(v.starts_with("2."), "sid's containerd is 2.x, got {v}");

    let soci = harness::debs::extracted("sid", "soci-snapshotter").expect("soci-snapshotter from sid");
    let line = version_line(&soci.join("usr/bin/soci"), "--version");
    assert!(line.contains("0.4.") || line.contains("v0."), "soci --version: {line}");
    assert!(
        soci.join("usr/bin/soci-snapshotter-grpc").is_file(),
        "sid's soci-snapshotter ships the snapshotter daemon"
    );
    log::info!(
        "containerd {} (trixie), {} (sid), soci-snapshotter {} (sid)",
        harness::debs::cached_version("trixie", "containerd").unwrap_or_default(),
        harness::debs::cached_version("sid", "containerd").unwrap_or_default(),
        harness::debs::cached_version("sid", "soci-snapshotter").unwrap_or_default()
    );
}
