//! The README's first command on every CI run, as far as it goes without building the ~330 MB
//! image: `QUICKSTART_STEPS=2 bash examples/quickstart.sh` checks and installs its packages (build
//! packages included), finds or builds the two binaries, then cleans up and exits 0, leaving no
//! temp dir. The full quickstart runs by hand (it needs a Debian mirror and ~10 minutes).

use std::path::Path;
use std::process::Command;

use harness::{prerequisites_met, Prereq};

#[test]
fn quickstart_first_two_steps_install_packages_find_the_binaries_and_clean_up() {
    let prereqs = [Prereq::Root, Prereq::Tool("apt-get"), Prereq::Tool("dpkg-query")];
    if !prerequisites_met("quickstart_steps", &prereqs) {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.sh");
    let temp_dirs = || -> Vec<String> {
        std::fs::read_dir("/tmp")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("lazy-quickstart."))
            .collect()
    };
    let before = temp_dirs();
    let out = Command::new("bash").arg(&script).env("QUICKSTART_STEPS", "2").output().expect("running the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart steps 1-2 failed ({}):\n{stdout}\n{stderr}", out.status);
    for want in ["==> [1/", "==> [2/", "stopping before step 3", "cleanup: done"] {
        assert!(stdout.contains(want), "quickstart output lacks {want:?}:\n{stdout}\n{stderr}");
    }
    assert!(
        stdout.contains("packages present: ") && stdout.contains("libseccomp-dev"),
        "the build packages are checked:\n{stdout}"
    );
    let left: Vec<String> = temp_dirs().into_iter().filter(|d| !before.contains(d)).collect();
    assert!(left.is_empty(), "the quickstart left temp dirs: {left:?}");
}
