//! A node that reaches the registry only through a cluster cache (issue 11 acceptance), end to end
//! through containerd 1.6 and the shim: the registry's own address in hosts.toml is dead, a
//! pull-through docker-registry is the mirror; containerd pulls the lazy image's stub through it
//! (`ctr images pull --hosts-dir`), the shim's lazy reads go through it (shim config `hosts_dir`),
//! and the container reads the right bytes. Neither containerd nor the shim talks to the origin.

use harness::containerd::{busybox_image, Containerd, StartOptions, RUNTIME};
use harness::images::{Content, Entry};
use harness::prereq::CONTAINERD_PREREQS;
use harness::registry::{free_port, Registry, StartOptions as RegistryOptions};
use harness::{prerequisites_met, Prereq};

#[test]
fn a_lazy_container_runs_on_a_node_that_reaches_the_registry_only_through_the_mirror() {
    let prereqs = [CONTAINERD_PREREQS, &[Prereq::Fuse]].concat();
    if !prerequisites_met("shim_mirror", &prereqs) {
        return;
    }
    harness::init_logging();
    let origin = Registry::start().expect("starting the origin registry");
    let mut image = busybox_image().unwrap();
    image.layers[0].push(Entry::dir("data"));
    image.layers[0].push(Entry::random_file("data/payload.bin", 31, 4 << 20));
    let want = Content::Random { seed: 31, len: 4 << 20 }.sha256();
    let published =
        harness::scenario::publish_and_convert(&origin, &image, "viamirror", &[]).expect("publish + convert");
    let mirror = Registry::start_with(RegistryOptions {
        pull_through: Some(format!("http://{}", origin.host())),
        ..Default::default()
    })
    .expect("starting the pull-through mirror");

    let ctrd = Containerd::start_with(&StartOptions::default()).expect("starting containerd");
    let dir = ctrd.scratch("mirror");
    let hosts = dir.join("hosts");
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    std::fs::create_dir_all(hosts.join(origin.host())).unwrap();
    std::fs::write(
        hosts.join(origin.host()).join("hosts.toml"),
        format!(
            "server = \"http://{dead}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )
    .unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = \"{}\"\n[fetch]\nprefetch = \"none\"\n[registry]\nhosts_dir = \"{}\"\ncredentials_file = \"{}\"\n",
            dir.join("cache").display(),
            hosts.display(),
            dir.join("no-credentials.json").display()
        ),
    )
    .unwrap();
    let origin_start = origin.log_offset();
    let mirror_start = mirror.log_offset();
    ctrd.ctr_ok(&["images", "pull", "--hosts-dir", &hosts.display().to_string(), &published.lazy])
        .expect("pulling the stub through the mirror");
    let out = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg.display().to_string(),
        &published.lazy,
        "m0",
        "sha256sum",
        "/data/payload.bin",
    ]);
    assert_eq!(
        (out.code, out.stdout.split_whitespace().next().unwrap_or("")),
        (0, want.as_str()),
        "{}\ncontainerd log:\n{}",
        out.all(),
        ctrd.log()
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let direct: Vec<_> = origin
        .requests_since(origin_start)
        .unwrap()
        .into_iter()
        .filter(|l| l.user_agent.starts_with("containerd"))
        .collect();
    assert!(direct.is_empty(), "containerd or the shim talked to the origin directly: {direct:?}");
    let lazy_reads =
        mirror.requests_since(mirror_start).unwrap().into_iter().filter(|l| l.is_ours() && l.is_blob_get()).count();
    assert!(lazy_reads > 0, "the shim's lazy reads did not go to the mirror");
}
