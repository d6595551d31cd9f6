//! End-to-end: the repository's RuntimeClass profiles (runtimeclass/shim/lazy.toml and
//! lazy-sandbox.toml) passed with `ctr --runtime-config-path`: the same commands in a plain busybox
//! container succeed under `lazy` and are denied under `lazy-sandbox` (read-only rootfs, reduced
//! capabilities, no_new_privileges, containerd's default seccomp profile).

use std::path::{Path, PathBuf};

use harness::containerd::{push_busybox, Containerd, RUNTIME};
use harness::registry::Registry;
use harness::{prerequisites_met, Prereq};

struct Env {
    ctrd: Containerd,
    image: String,
    _registry: Registry,
}

fn setup(test: &str) -> Option<Env> {
    let prereqs = [
        Prereq::Root,
        Prereq::Tool("containerd"),
        Prereq::Tool("ctr"),
        Prereq::Tool("docker-registry"),
        Prereq::Tool("skopeo"),
    ];
    if !prerequisites_met(test, &prereqs) {
        return None;
    }
    harness::init_logging();
    let registry = Registry::start().expect("starting docker-registry");
    let image = push_busybox(&registry).expect("pushing the busybox image");
    let ctrd = Containerd::start().expect("starting containerd");
    ctrd.pull(&image).expect("pulling the busybox image");
    Some(Env { ctrd, image, _registry: registry })
}

/// Not a test of ours: regenerates shim/src/service/default_seccomp.json from containerd itself
/// (`ctr container create --seccomp` puts containerd's default profile into the spec).
/// Run: `CAPTURE_SECCOMP=1 cargo test -p lazy-tests --test shim_profiles capture -- --ignored`.
#[test]
#[ignore]
fn capture_containerd_default_seccomp() {
    let Some(env) = setup("capture_containerd_default_seccomp") else { return };
    env.ctrd.ctr_ok(&["container", "create", "--seccomp", &env.image, "cap1", "true"]).unwrap();
    let info = env.ctrd.ctr_ok(&["container", "info", "cap1"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let seccomp = &v["Spec"]["linux"]["seccomp"];
    assert!(seccomp.is_object(), "no linux.seccomp in {info}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/src/service/default_seccomp.json");
    if std::env::var_os("CAPTURE_SECCOMP").is_some() {
        std::fs::write(&out, serde_json::to_string_pretty(seccomp).unwrap() + "\n").unwrap();
        println!("wrote {}", out.display());
    }
    env.ctrd.ctr_ok(&["container", "rm", "cap1"]).unwrap();
}
