//! Private registries with real components (issue 11 acceptance): lazy reads authenticate with
//! credentials from a docker credential helper, a kubelet credential provider plugin and docker's
//! `auths`; bearer tokens from the harness's token server expire every 2 s while a long read goes
//! on; a password rotated in the helper (and on the registry) is picked up by the running mount;
//! wrong credentials fail fast with an error naming the registry and the credential source tried.
//!
//! Each test publishes and converts its image on an open registry, then restarts that registry
//! (same port, same storage) requiring credentials, as a private registry serves it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::images::{Content, Entry, Image, Layer};
use harness::lazyctl::{LazyMount, MountOptions};
use harness::prerequisites_met;
use harness::registry::{Auth, Registry};
use harness::scenario::{publish_and_convert, read_errno, Published, VFS_PREREQS};
use harness::token_server::{self, TokenServer};

const MIB: u64 = 1024 * 1024;
const FILES: u64 = 6;
const PROVIDER_API: &str = "credentialprovider.kubelet.k8s.io/v1";

fn image() -> Image {
    let mut layer = Layer::new().add(Entry::dir("data"));
    for i in 0..FILES {
        layer = layer.add(Entry::random_file(&format!("data/f{i}.bin"), 300 + i, MIB));
    }
    Image::new(vec![layer])
}

fn check_file(mount: &LazyMount, i: u64) {
    let bytes = read_errno(&mount.join(&format!("data/f{i}.bin")))
        .unwrap_or_else(|e| panic!("reading f{i}: errno {e}; lazyctl log:\n{}", mount.log_text()));
    assert!(bytes == Content::Random { seed: 300 + i, len: MIB }.to_vec(), "f{i}: wrong bytes");
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn calls(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Mount options with only the credential sources a test names: `--docker-config` always points
/// at the test's file (which may not exist), so the machine's own docker login never helps.
fn opts(docker_config: &Path, extra: &[String], path_dir: Option<&Path>) -> MountOptions {
    let mut args = vec!["--docker-config".to_string(), docker_config.display().to_string()];
    args.extend(extra.iter().cloned());
    let env = match path_dir {
        Some(d) => vec![("PATH".to_string(), format!("{}:{}", d.display(), std::env::var("PATH").unwrap_or_default()))],
        None => Vec::new(),
    };
    MountOptions { deadline: Some(5), extra: args, env, ..Default::default() }
}

fn private(name: &str, auth: Auth) -> (Registry, Published) {
    let mut registry = Registry::start().expect("starting docker-registry");
    let published = publish_and_convert(&registry, &image(), name, &[]).expect("publish and convert");
    registry.set_auth(Some(auth)).expect("restarting the registry with auth");
    (registry, published)
}

fn htpasswd(user: &str, password: &str) -> Auth {
    Auth::Htpasswd { users: vec![(user.to_string(), password.to_string())] }
}

/// Fails the test if mounting succeeds; else the error text, checked to come within `limit`.
fn mount_fails(published: &Published, opts: MountOptions, limit: Duration) -> String {
    let start = Instant::now();
    let err = match LazyMount::start(&published.lazy, opts) {
        Ok(m) => panic!("mounting with wrong credentials succeeded; log:\n{}", m.log_text()),
        Err(e) => format!("{e:#}"),
    };
    let took = start.elapsed();
    eprintln!("mount with wrong credentials failed after {took:.1?}:\n{err}");
    assert!(took < limit, "failing on wrong credentials took {took:?} (limit {limit:?}): a hang");
    err
}

#[test]
fn docker_credential_helper_and_a_password_rotated_under_a_running_mount() {
    harness::init_logging();
    if !prerequisites_met("registry_auth", VFS_PREREQS) {
        return;
    }
    let (mut registry, published) = private("helper", htpasswd("alice", "first-secret"));
    let dir = tempfile::tempdir().unwrap();
    let (secret, log) = (dir.path().join("secret"), dir.path().join("helper.calls"));
    std::fs::write(&secret, "first-secret").unwrap();
    // The docker credential helper protocol: `get` with the server on stdin, JSON on stdout.
    script(
        &dir.path().join("docker-credential-lazytest"),
        &format!(
            "[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {log}\n\
             if [ \"$server\" != \"{host}\" ]; then echo 'credentials not found in native keychain'; exit 1; fi\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"%s\"}}\\n' \"$server\" \"$(cat {secret})\"",
            log = log.display(),
            host = registry.host(),
            secret = secret.display()
        ),
    );
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::json!({"credHelpers": {registry.host(): "lazytest"}}).to_string()).unwrap();

    let mount =
        LazyMount::start(&published.lazy, opts(&config, &[], Some(dir.path()))).expect("mounting with the helper");
    check_file(&mount, 0);
    let before = calls(&log);
    assert!(before >= 1, "the credential helper was never asked");

    // Rotate: the helper answers the new secret, the registry accepts only the new one.
    std::fs::write(&secret, "second-secret").unwrap();
    registry.rotate_htpasswd(&[("alice", "second-secret")]).expect("rotating the registry's password");
    check_file(&mount, 1);
    assert!(calls(&log) > before, "the rotated password was read without asking the helper again?");

    // The registry rotates again, the helper still has the old secret: reads fail fast (EIO), no hang.
    registry.rotate_htpasswd(&[("alice", "third-secret")]).expect("rotating the registry's password");
    let start = Instant::now();
    let failed = read_errno(&mount.join("data/f2.bin"));
    let took = start.elapsed();
    assert_eq!(failed.err(), Some(libc::EIO), "a read with refused credentials must fail with EIO");
    assert!(took < Duration::from_secs(8), "a read with refused credentials took {took:?}");
    let log_text = mount.log_text();
    assert!(
        log_text.contains(&registry.host()) && log_text.contains("docker-credential-lazytest"),
        "the mount's log must name the registry and the helper:\n{log_text}"
    );
    // Fixed in the helper: the same mount reads again.
    std::fs::write(&secret, "third-secret").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    check_file(&mount, 2);
    mount.unmount().expect("clean unmount");

    // A fresh mount with wrong credentials fails at once, naming the registry and the source.
    std::fs::write(&secret, "wrong").unwrap();
    let err = mount_fails(&published, opts(&config, &[], Some(dir.path())), Duration::from_secs(10));
    assert!(err.contains(&registry.host()), "error must name the registry: {err}");
    assert!(err.contains("docker-credential-lazytest"), "error must name the credential source: {err}");
}

#[test]
fn kubelet_credential_provider_plugin() {
    harness::init_logging();
    if !prerequisites_met("registry_auth", VFS_PREREQS) {
        return;
    }
    let (registry, published) = private("provider", htpasswd("bob", "plugin-secret"));
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let (request, log) = (dir.path().join("provider.request"), dir.path().join("provider.calls"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "plugin-secret").unwrap();
    script(
        &bin.join("lazytest-provider"),
        &format!(
            "cat > {request}\necho x >> {log}\n\
             printf '{{\"kind\":\"CredentialProviderResponse\",\"apiVersion\":\"{PROVIDER_API}\",\"cacheKeyType\":\"Registry\",\
             \"cacheDuration\":\"0s\",\"auth\":{{\"{host}\":{{\"username\":\"bob\",\"password\":\"%s\"}}}}}}\\n' \"$(cat {secret})\"",
            request = request.display(),
            log = log.display(),
            host = registry.host(),
            secret = secret.display()
        ),
    );
    let config = dir.path().join("credential-providers.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: lazytest-provider\n    \
             matchImages: [\"{}\"]\n    defaultCacheDuration: \"0s\"\n    apiVersion: {PROVIDER_API}\n",
            registry.host()
        ),
    )
    .unwrap();
    let no_docker = dir.path().join("no-docker-config.json");
    let extra = [
        "--credential-provider-config".to_string(),
        config.display().to_string(),
        "--credential-provider-bin-dir".to_string(),
        bin.display().to_string(),
    ];
    let mount = LazyMount::start(&published.lazy, opts(&no_docker, &extra, None)).expect("mounting with the plugin");
    for i in 0..FILES {
        check_file(&mount, i);
    }
    let req: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    assert_eq!(req["kind"], "CredentialProviderRequest");
    assert_eq!(req["apiVersion"], PROVIDER_API);
    assert_eq!(req["image"], registry.reference(&published.lazy_repo), "the plugin is asked about the image");
    assert!(calls(&log) >= 1);
    mount.unmount().expect("clean unmount");

    // The plugin answers a wrong password: the error names the registry and the plugin.
    std::fs::write(&secret, "wrong").unwrap();
    let err = mount_fails(&published, opts(&no_docker, &extra, None), Duration::from_secs(10));
    assert!(err.contains(&registry.host()), "error must name the registry: {err}");
    assert!(err.contains("lazytest-provider"), "error must name the credential provider: {err}");
}

/// curl's answer status for `url` with extra arguments.
fn curl_status(args: &[&str], url: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn bearer_tokens_that_expire_every_two_seconds_during_a_long_read() {
    harness::init_logging();
    if !prerequisites_met(
        "registry_auth",
        &[VFS_PREREQS, &[harness::Prereq::Tool("openssl"), harness::Prereq::Tool("curl")]].concat(),
    ) {
        return;
    }
    let lifetime = Duration::from_secs(2);
    let tokens = TokenServer::start("carol", "token-secret", lifetime).expect("starting the token server");
    let (registry, published) = private("tokens", tokens.registry_auth());

    // The registry really refuses an expired token (no leeway that would make this test moot).
    let auth = match tokens.registry_auth() {
        Auth::Token { realm, .. } => realm,
        Auth::Htpasswd { .. } => unreachable!(),
    };
    let scope = format!("repository:{}:pull", published.lazy_repo);
    let out = Command::new("curl")
        .args(["-sf", "-u", "carol:token-secret"])
        .arg(format!("{auth}?service={}&scope={scope}", token_server::SERVICE))
        .output()
        .unwrap();
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token server JSON");
    let bearer = format!("Authorization: Bearer {}", token["token"].as_str().unwrap());
    let tags = format!("http://{}/v2/{}/tags/list", registry.host(), published.lazy_repo);
    assert_eq!(curl_status(&["-H", &bearer], &tags), 200, "a fresh token must be accepted");
    std::thread::sleep(lifetime + Duration::from_millis(1200));
    assert_eq!(curl_status(&["-H", &bearer], &tags), 401, "an expired token must be refused");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let write_auths = |password: &str| {
        let auth = token_server::base64(format!("carol:{password}").as_bytes(), false);
        std::fs::write(&config, serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string()).unwrap();
    };
    write_auths("token-secret");
    let mount = LazyMount::start(&published.lazy, opts(&config, &[], None)).expect("mounting with bearer tokens");
    let issued_before = tokens.issued();
    let start = Instant::now();
    // Reads spread over several token lifetimes: every fetch after a pause finds its token expired
    // (the filesystem's readahead may serve some files from one fetch, so count fetches, not files).
    for i in 0..FILES {
        check_file(&mount, i);
        std::thread::sleep(lifetime + Duration::from_millis(500));
    }
    let issued = tokens.issued() - issued_before;
    let stats = mount.stats().unwrap();
    eprintln!("reads of {FILES} files over {:.1?}: {issued} new tokens; hosts {:?}", start.elapsed(), stats.hosts);
    assert!(issued >= 3, "reads spanning several token lifetimes got only {issued} new tokens");
    mount.unmount().expect("clean unmount");

    // Wrong password in `auths`: the token server refuses, the error names both.
    write_auths("wrong");
    let err = mount_fails(&published, opts(&config, &[], None), Duration::from_secs(10));
    assert!(err.contains(&registry.host()), "error must name the registry: {err}");
    assert!(err.contains(&format!("auths in {}", config.display())), "error must name the credential source: {err}");
    assert!(tokens.refused() >= 1);
}
