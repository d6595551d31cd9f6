//! `containerd-shim-lazy-v2`: `init` is the launcher's single-threaded helper and must be
//! dispatched before any thread or runtime exists; everything else is the shim.

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        shim::launcher::helper_main();
    }
    std::process::exit(shim::service::main());
}
