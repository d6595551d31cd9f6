//! `containerd-shim-lazy-v2`: `init` is the launcher's single-threaded helper and must be
//! dispatched before any thread or runtime exists; `cri-proxy` is the CRI image-service proxy
//! (imagePullSecrets); everything else is the shim.

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        shim::launcher::helper_main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "cri-proxy") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        std::process::exit(shim::criproxy::main(&args));
    }
    std::process::exit(shim::service::main());
}
