//! Where registry credentials come from, in order: credentials given explicitly (the client's
//! configuration), credentials handed over for this image by its pull ([`super::image_creds`]:
//! Kubernetes imagePullSecrets through the shim's CRI proxy), kubelet credential provider plugins (a `CredentialProviderConfig` file, exec
//! protocol `credentialprovider.kubelet.k8s.io/v1`, cached as the plugin says), docker credential
//! helpers (`credHelpers` / `credsStore` in config.json: `docker-credential-NAME get`), then the
//! `auths` of config.json.
//!
//! Nothing here is cached except what a plugin allows with its `cacheDuration`: the client looks
//! credentials up again on every 401, so a rotated secret (a new helper answer, a rewritten
//! config.json) is used without restarting anything. Secrets never appear in logs or errors; the
//! source of a credential does, so "access denied" can say which source to fix.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::auth::DockerConfig;
use super::error::RegistryError;
use super::image_creds::ImageCredStore;

/// How long a helper or plugin may run before it is killed and its answer counted as an error.
const EXEC_TIMEOUT: Duration = Duration::from_secs(20);

/// A username and secret, and where they came from (for error messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: String,
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("source", &self.source).finish()
    }
}

/// The result of a lookup: the credential found (if any) and every source consulted.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub credential: Option<Credential>,
    pub tried: Vec<String>,
}

impl Lookup {
    /// For error messages: "credentials from X" or "no credentials (tried: A; B)".
    pub fn describe(&self) -> String {
        match &self.credential {
            Some(c) => format!("credentials from {}", c.source),
            None if self.tried.is_empty() => "no credentials configured".into(),
            None => format!("no credentials found (tried: {})", self.tried.join("; ")),
        }
    }
}

/// Kubelet credential provider plugins: the config file and the directory of plugin binaries
/// (kubelet's `--image-credential-provider-config` and `--image-credential-provider-bin-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    pub config: PathBuf,
    pub bin_dir: PathBuf,
}

/// A plugin answer kept for its cacheDuration: expiry and the (matchImage key, credential) pairs.
type CachedAnswer = (Instant, Vec<(String, Credential)>);

#[derive(Debug)]
pub struct Keychain {
    explicit: Option<(String, String)>,
    handed: Option<ImageCredStore>,
    /// The last handed-over credential found per (image, host): a long-lived mount keeps using it
    /// after its record expired (a newer record replaces it).
    handed_seen: Mutex<HashMap<(String, String), Credential>>,
    docker_config: Option<PathBuf>,
    providers: Option<ProviderSettings>,
    /// Plugin answers still within their cacheDuration: (plugin, cache key) -> (expiry, auth map).
    provider_cache: Mutex<HashMap<(String, String), CachedAnswer>>,
}

impl Keychain {
    pub fn new(
        explicit: Option<(String, String)>,
        docker_config: Option<PathBuf>,
        providers: Option<ProviderSettings>,
    ) -> Keychain {
        Keychain {
            explicit,
            handed: None,
            handed_seen: Mutex::new(HashMap::new()),
            docker_config,
            providers,
            provider_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Also (and first) consults credentials handed over per image in `store`.
    pub fn with_image_credentials(mut self, store: Option<ImageCredStore>) -> Keychain {
        self.handed = store;
        self
    }

    /// Credentials for `host` (the endpoint: a mirror or the registry) when pulling `image`
    /// (`registry/repository`). Blocking: may run helper programs.
    pub fn lookup(&self, host: &str, image: &str) -> Result<Lookup, RegistryError> {
        let mut out = Lookup::default();
        if let Some((u, p)) = &self.explicit {
            out.credential = Some(Credential {
                username: u.clone(),
                secret: p.clone(),
                source: "the configured credentials".into(),
            });
            return Ok(out);
        }
        if let Some(store) = &self.handed {
            out.tried.push(format!("credentials of the image's pull in {}", store.dir().display()));
            let key = (image.to_string(), host.to_string());
            let found = match store.get(image, host) {
                Ok(Some(c)) => {
                    self.handed_seen.lock().insert(key, c.clone());
                    Some(c)
                }
                Ok(None) => self.handed_seen.lock().get(&key).cloned(),
                Err(e) => {
                    log::warn!("{e}; ignoring handed-over credentials");
                    self.handed_seen.lock().get(&key).cloned()
                }
            };
            if let Some(c) = found {
                out.credential = Some(c);
                return Ok(out);
            }
        }
        if let Some(p) = &self.providers {
            out.tried.push(format!("kubelet credential provider config {}", p.config.display()));
            if let Some(c) = self.ask_providers(p, host, image)? {
                out.credential = Some(c);
                return Ok(out);
            }
        }
        let (path, docker) = match self.load_docker()? {
            Some(x) => x,
            None => {
                out.tried.push("docker config.json (none found)".into());
                return Ok(out);
            }
        };
        let helper = docker.helper_for(host);
        if let Some(name) = &helper {
            let what = format!("docker credential helper docker-credential-{name} (from {})", path.display());
            out.tried.push(what.clone());
            if let Some((u, s)) = run_docker_helper(name, host)? {
                out.credential = Some(Credential { username: u, secret: s, source: what });
                return Ok(out);
            }
        }
        out.tried.push(format!("auths in {}", path.display()));
        if let Some((u, p)) = docker.credentials(host) {
            out.credential =
                Some(Credential { username: u, secret: p, source: format!("auths in {}", path.display()) });
        }
        Ok(out)
    }

    /// Drops cached plugin answers (they were refused: the next lookup asks the plugin again).
    pub fn forget_cached(&self) {
        self.provider_cache.lock().clear();
    }

    fn load_docker(&self) -> Result<Option<(PathBuf, DockerConfig)>, RegistryError> {
        match DockerConfig::load_with_path(self.docker_config.as_deref()) {
            // A configured file that does not exist (yet) holds no credentials.
            Err(RegistryError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other,
        }
    }

    fn ask_providers(
        &self,
        p: &ProviderSettings,
        host: &str,
        image: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        let bad = |reason: String| {
            RegistryError::Config(format!("kubelet credential provider config {}: {reason}", p.config.display()))
        };
        let text =
            std::fs::read_to_string(&p.config).map_err(|e| RegistryError::Io { path: p.config.clone(), source: e })?;
        let config: ProviderConfig = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if config.kind.as_deref().is_some_and(|k| k != "CredentialProviderConfig") {
            return Err(bad(format!(
                "kind is {:?}, expected CredentialProviderConfig",
                config.kind.unwrap_or_default()
            )));
        }
        // What the plugin is asked about: the image as the pod names it, on the host we talk to.
        let repo = image.split_once('/').map_or("", |(_, r)| r);
        let target = format!("{host}/{repo}");
        for provider in &config.providers {
            if !provider.match_images.iter().any(|m| image_matches(m, &target)) {
                continue;
            }
            if provider.api_version != PROVIDER_API {
                return Err(bad(format!(
                    "provider {}: apiVersion {:?} is not supported (use {PROVIDER_API})",
                    provider.name, provider.api_version
                )));
            }
            let source = format!("kubelet credential provider {} (config {})", provider.name, p.config.display());
            let auths = self.provider_answer(p, provider, &target, host, &source)?;
            // The most specific key that matches wins (kubelet tries them all; one is enough here).
            let mut matching: Vec<&(String, Credential)> =
                auths.iter().filter(|(k, _)| image_matches(k, &target)).collect();
            matching.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
            if let Some((_, c)) = matching.first() {
                return Ok(Some(c.clone()));
            }
        }
        Ok(None)
    }

    fn provider_answer(
        &self,
        p: &ProviderSettings,
        provider: &Provider,
        target: &str,
        host: &str,
        source: &str,
    ) -> Result<Vec<(String, Credential)>, RegistryError> {
        for key in [target.to_string(), host.to_string(), String::new()] {
            if let Some((expires, auths)) = self.provider_cache.lock().get(&(provider.name.clone(), key)) {
                if Instant::now() < *expires {
                    return Ok(auths.clone());
                }
            }
        }
        let fail =
            |reason: String| RegistryError::Auth { registry: host.to_string(), reason: format!("{source}: {reason}") };
        if provider.name.contains('/') || provider.name.is_empty() {
            return Err(fail("the provider name must be a file name in the plugin directory".into()));
        }
        let bin = p.bin_dir.join(&provider.name);
        let request =
            serde_json::json!({"apiVersion": PROVIDER_API, "kind": "CredentialProviderRequest", "image": target});
        let mut cmd = Command::new(&bin);
        cmd.args(&provider.args);
        for e in &provider.env {
            cmd.env(&e.name, &e.value);
        }
        let (ok, stdout, stderr) = run(cmd, &bin, request.to_string().as_bytes()).map_err(&fail)?;
        if !ok {
            return Err(fail(format!("plugin {} failed: {}", bin.display(), super::auth::truncate(&stderr))));
        }
        let resp: ProviderResponse = serde_json::from_slice(&stdout)
            .map_err(|e| fail(format!("plugin {} answered no CredentialProviderResponse JSON: {e}", bin.display())))?;
        let auths: Vec<(String, Credential)> = resp
            .auth
            .into_iter()
            .map(|(k, a)| (k, Credential { username: a.username, secret: a.password, source: source.to_string() }))
            .collect();
        let duration = match resp.cache_duration.as_deref().or(provider.default_cache_duration.as_deref()) {
            Some(d) => parse_go_duration(d)
                .ok_or_else(|| fail(format!("cacheDuration {d:?} is not a duration like \"5m\"")))?,
            None => Duration::ZERO,
        };
        if !duration.is_zero() {
            let key = match resp.cache_key_type.as_deref() {
                Some("Image") => target.to_string(),
                Some("Global") => String::new(),
                _ => host.to_string(),
            };
            self.provider_cache.lock().insert((provider.name.clone(), key), (Instant::now() + duration, auths.clone()));
        }
        Ok(auths)
    }
}

pub const PROVIDER_API: &str = "credentialprovider.kubelet.k8s.io/v1";

#[derive(serde::Deserialize)]
struct ProviderConfig {
    kind: Option<String>,
    #[serde(default)]
    providers: Vec<Provider>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provider {
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
}

#[derive(serde::Deserialize)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderResponse {
    cache_key_type: Option<String>,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: HashMap<String, ProviderAuth>,
}

#[derive(serde::Deserialize)]
struct ProviderAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// kubelet's `matchImages` rule: the host is matched label by label (a label may hold `*`
/// globs, the label count must agree), a port in the pattern must be equal, and the pattern's
/// path must be a prefix of the image's path.
pub fn image_matches(pattern: &str, image: &str) -> bool {
    let strip = |s: &str| s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s).to_string();
    let (pattern, image) = (strip(pattern), strip(image));
    let split = |s: &str| -> (String, String) {
        match s.split_once('/') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (s.to_string(), String::new()),
        }
    };
    let ((phost, ppath), (ihost, ipath)) = (split(&pattern), split(&image));
    let port = |h: &str| -> (String, Option<String>) {
        match h.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_string(), Some(p.to_string())),
            _ => (h.to_string(), None),
        }
    };
    let ((ph, pport), (ih, iport)) = (port(&phost), port(&ihost));
    if pport.is_some() && pport != iport {
        return false;
    }
    let (pl, il): (Vec<&str>, Vec<&str>) = (ph.split('.').collect(), ih.split('.').collect());
    if pl.len() != il.len() || !pl.iter().zip(&il).all(|(p, i)| glob(p, i)) {
        return false;
    }
    ppath.is_empty() || ipath == ppath || ipath.starts_with(&format!("{}/", ppath.trim_end_matches('/')))
}

/// `*` matches any run of characters (within one host label).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(s),
        Some((head, tail)) => {
            if s.len() < head.len() || !s[..head.len()].eq_ignore_ascii_case(head) {
                return false;
            }
            let rest = &s[head.len()..];
            (0..=rest.len()).filter(|i| rest.is_char_boundary(*i)).any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// Go's `time.ParseDuration` for what plugins send: `1h30m`, `5m`, `10s`, `1.5h`, `0`, `250ms`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    Some(Duration::from_secs_f64(total))
}

/// `docker-credential-NAME get` with the server on stdin: Some((user, secret)), or None when the
/// helper has no credentials for it.
fn run_docker_helper(name: &str, host: &str) -> Result<Option<(String, String)>, RegistryError> {
    let bin = format!("docker-credential-{name}");
    let fail = |reason: String| RegistryError::Auth {
        registry: host.to_string(),
        reason: format!("docker credential helper {bin}: {reason}"),
    };
    if name.contains('/') {
        return Err(fail("the helper name must not contain '/'".into()));
    }
    // Docker Hub's credentials are stored under its v1 index URL.
    let server =
        if host == "registry-1.docker.io" || host == "docker.io" { "https://index.docker.io/v1/" } else { host };
    let mut cmd = Command::new(&bin);
    cmd.arg("get");
    let (ok, stdout, stderr) = run(cmd, Path::new(&bin), server.as_bytes()).map_err(fail)?;
    if !ok {
        let text = format!("{}{stderr}", String::from_utf8_lossy(&stdout));
        if text.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("`{bin} get` failed: {}", super::auth::truncate(&text))));
    }
    #[derive(serde::Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: HelperAnswer =
        serde_json::from_slice(&stdout).map_err(|e| fail(format!("answer is not credential JSON: {e}")))?;
    if a.username.is_empty() && a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((a.username, a.secret)))
}

/// Runs `cmd` with `input` on stdin; returns (success, stdout, stderr), or an error when it
/// cannot start or runs longer than [`EXEC_TIMEOUT`] (then it is killed).
fn run(mut cmd: Command, bin: &Path, input: &[u8]) -> Result<(bool, Vec<u8>, String), String> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| {
        format!(
            "cannot run {}: {e}{}",
            bin.display(),
            if e.kind() == std::io::ErrorKind::NotFound { " (is it installed and on PATH?)" } else { "" }
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > EXEC_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer within {EXEC_TIMEOUT:?}; killed it", bin.display()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", bin.display())),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).trim().to_string();
    Ok((status.success(), stdout, stderr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn match_images_as_kubelet_does() {
        assert!(image_matches("*.dkr.ecr.*.amazonaws.com", "123.dkr.ecr.eu-west-1.amazonaws.com/app"));
        assert!(!image_matches("*.dkr.ecr.*.amazonaws.com", "dkr.ecr.eu-west-1.amazonaws.com/app"));
        assert!(image_matches("127.0.0.1:5000", "127.0.0.1:5000/a/b"));
        assert!(!image_matches("127.0.0.1:5001", "127.0.0.1:5000/a/b"));
        assert!(image_matches("reg.io/team", "reg.io/team/app"));
        assert!(!image_matches("reg.io/team", "reg.io/teamx/app"));
        assert!(image_matches("*.reg.io", "a.reg.io:443/x"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5x"), None);
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn provider_plugin_answers_are_cached_for_their_duration() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("count");
        script(
            d.path(),
            "fake-provider",
            &format!(
                "cat > {0}.req; echo x >> {0}; echo '{{\"kind\":\"CredentialProviderResponse\",\"apiVersion\":\"{PROVIDER_API}\",\"cacheKeyType\":\"Registry\",\"cacheDuration\":\"1h\",\"auth\":{{\"reg.io:5000\":{{\"username\":\"u\",\"password\":\"'$MYPASS'\"}}}}}}'",
                count.display()
            ),
        );
        let config = d.path().join("providers.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: fake-provider\n    matchImages: [\"reg.io:5000\"]\n    defaultCacheDuration: 10m\n    apiVersion: {PROVIDER_API}\n    env:\n      - name: MYPASS\n        value: s3cret\n"
            ),
        )
        .unwrap();
        let k = Keychain::new(
            None,
            Some(d.path().join("none.json")),
            Some(ProviderSettings { config, bin_dir: d.path().into() }),
        );
        let l = k.lookup("reg.io:5000", "reg.io:5000/team/app").unwrap();
        let c = l.credential.unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "s3cret"));
        assert!(c.source.contains("fake-provider"), "{}", c.source);
        let req: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{}.req", count.display())).unwrap()).unwrap();
        assert_eq!(req["image"], "reg.io:5000/team/app");
        assert_eq!(req["kind"], "CredentialProviderRequest");
        k.lookup("reg.io:5000", "reg.io:5000/team/other").unwrap();
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1, "second lookup served from the cache");
        k.forget_cached();
        k.lookup("reg.io:5000", "reg.io:5000/team/app").unwrap();
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
        assert!(k.lookup("other.io", "other.io/x").unwrap().credential.is_none());
    }
}
