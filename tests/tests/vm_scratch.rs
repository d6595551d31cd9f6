use harness::vm::{self, VmConfig};
#[test]
fn scratch() {
    for i in 0..4 {
        let r = vm::run(&["/bin/sh", "-c", "echo hello; exit 3"], &VmConfig::default()).unwrap();
        println!("{i}: exit {} output {:?} {:.1}s", r.exit_code, r.output, r.elapsed.as_secs_f64());
    }
}
