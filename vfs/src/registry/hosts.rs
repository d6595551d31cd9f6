//! containerd's `hosts.toml` convention: which endpoints serve a registry, in which order, and how
//! to talk to each (TLS material, headers, API path).
//!
//! `<hosts_dir>/<registry>/hosts.toml`, else `<hosts_dir>/_default/hosts.toml`, else the registry
//! itself. The `[host."..."]` tables are tried in file order (mirrors), then `server` (default:
//! the registry). Each host may limit what it serves with `capabilities` (`pull`, `resolve`,
//! `push`); `override_path = true` uses the host URL's path as the API root instead of appending
//! `/v2`. This module only reads files; [`super::client`] chooses hosts and fails over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::PlainHttp;
use super::error::RegistryError;
use super::reference::Reference;

/// What a host may be used for (containerd's `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs and manifests by digest.
    pub pull: bool,
    /// Tags to digests (manifests by tag).
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
}

/// TLS settings of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Extra trusted CA bundles (PEM).
    pub ca: Vec<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate. Content is still digest-verified, so this only exposes
    /// credentials and metadata, not file contents; logged as a warning.
    pub skip_verify: bool,
}

/// One host that serves a registry: a mirror or the registry's own server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub origin: String,
    /// API root path, without a trailing slash (`/v2`, or the host's path with `override_path`).
    pub path: String,
    pub capabilities: Capabilities,
    /// Extra request headers (`header` table).
    pub headers: Vec<(String, String)>,
    pub tls: TlsSettings,
    /// A `[host]` entry rather than the `server`: requests carry `?ns=<registry>` as containerd's
    /// do, so a shared cache knows the upstream.
    pub mirror: bool,
}

impl Endpoint {
    /// `host[:port]` of this endpoint: the key for its credentials, tokens and statistics.
    pub fn host(&self) -> &str {
        self.origin.split_once("://").map_or(self.origin.as_str(), |(_, h)| h)
    }

    /// URL of `tail` (e.g. `blobs/sha256:...`) in `repository` on this host.
    pub fn url(&self, registry: &str, repository: &str, tail: &str) -> Result<reqwest::Url, RegistryError> {
        let s = format!("{}{}/{repository}/{tail}", self.origin, self.path);
        let mut url =
            reqwest::Url::parse(&s).map_err(|e| RegistryError::Config(format!("bad registry URL {s:?}: {e}")))?;
        if self.mirror {
            url.query_pairs_mut().append_pair("ns", registry);
        }
        Ok(url)
    }

    /// The API root (`GET /v2/`), which answers without a repository: the health probe.
    pub fn ping_url(&self) -> Result<reqwest::Url, RegistryError> {
        let s = format!("{}{}/", self.origin, self.path);
        reqwest::Url::parse(&s).map_err(|e| RegistryError::Config(format!("bad registry URL {s:?}: {e}")))
    }
}

/// The endpoints of `registry` in the order to try them: the `[host]` entries of its hosts.toml
/// (or `_default`'s), then its server. Without a hosts.toml, the registry alone, spoken to over
/// HTTPS, or plain HTTP as `plain_http` says.
pub fn resolve(
    hosts_dir: Option<&Path>,
    registry: &Reference,
    plain_http: PlainHttp,
) -> Result<Vec<Endpoint>, RegistryError> {
    let default_scheme = match plain_http {
        PlainHttp::Always => "http",
        PlainHttp::Never => "https",
        PlainHttp::Auto if registry.is_loopback() => "http",
        PlainHttp::Auto => "https",
    };
    let server = Endpoint {
        origin: format!("{default_scheme}://{}", registry.api_host()),
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        headers: Vec::new(),
        tls: TlsSettings::default(),
        mirror: false,
    };
    let Some(dir) = hosts_dir else { return Ok(vec![server]) };
    let Some(path) = [dir.join(&registry.registry).join("hosts.toml"), dir.join("_default").join("hosts.toml")]
        .into_iter()
        .find(|p| p.is_file())
    else {
        return Ok(vec![server]);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| RegistryError::Io { path: path.clone(), source: e })?;
    parse(&text, &path, registry, default_scheme, server)
}

fn parse(
    text: &str,
    path: &Path,
    registry: &Reference,
    default_scheme: &str,
    server: Endpoint,
) -> Result<Vec<Endpoint>, RegistryError> {
    let bad = |reason: String| RegistryError::Config(format!("{}: {reason}; fix or remove it", path.display()));
    let doc: toml::Table = toml::from_str(text).map_err(|e| bad(format!("not valid hosts.toml: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts.as_table().ok_or_else(|| bad("`host` must be a table of [host.\"URL\"] entries".into()))?;
        // toml::Table keeps file order (preserve_order is not enabled): sort by position in the text.
        let mut ordered: Vec<(&String, &toml::Value)> = hosts.iter().collect();
        ordered.sort_by_key(|(k, _)| {
            text.find(&format!("host.\"{k}\"")).or_else(|| text.find(k.as_str())).unwrap_or(usize::MAX)
        });
        for (url, t) in ordered {
            let t = t.as_table().ok_or_else(|| bad(format!("[host.{url:?}] must be a table")))?;
            out.push(endpoint(url, t, default_scheme, true, base).map_err(|e| bad(format!("[host.{url:?}]: {e}")))?);
        }
    }
    let mut server = server;
    if let Some(s) = doc.get("server") {
        let s = s.as_str().ok_or_else(|| bad("`server` must be a URL string".into()))?;
        server = endpoint(s, &doc, default_scheme, false, base).map_err(|e| bad(format!("server {s:?}: {e}")))?;
    } else {
        // Top-level TLS keys apply to the default server too.
        let mut top = endpoint(&server.origin, &doc, default_scheme, false, base).map_err(bad)?;
        top.path = server.path.clone();
        server = top;
    }
    server.capabilities = Capabilities::ALL;
    out.push(server);
    log::debug!(
        "registry {}: hosts from {}: {}",
        registry.registry,
        path.display(),
        out.iter().map(|e| e.origin.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(out)
}

fn endpoint(url: &str, t: &toml::Table, default_scheme: &str, mirror: bool, base: &Path) -> Result<Endpoint, String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), r)) => (s, r),
        Some((s, _)) => return Err(format!("unsupported scheme {s:?} (use http or https)")),
        None => (default_scheme, url),
    };
    let (host, url_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("no host in the URL".into());
    }
    let override_path = t.get("override_path").and_then(|v| v.as_bool()).unwrap_or(false);
    // containerd appends /v2 unless override_path is set (or the URL already ends in it).
    let path = if override_path || url_path.ends_with("/v2") { url_path.to_string() } else { format!("{url_path}/v2") };
    let capabilities = match t.get("capabilities") {
        None => Capabilities::ALL,
        Some(v) => {
            let list = v.as_array().ok_or("`capabilities` must be a list of \"pull\", \"resolve\", \"push\"")?;
            let mut c = Capabilities { pull: false, resolve: false, push: false };
            for cap in list {
                match cap.as_str() {
                    Some("pull") => c.pull = true,
                    Some("resolve") => c.resolve = true,
                    Some("push") => c.push = true,
                    other => return Err(format!("unknown capability {other:?} (known: pull, resolve, push)")),
                }
            }
            c
        }
    };
    let mut headers = Vec::new();
    if let Some(h) = t.get("header") {
        let h = h.as_table().ok_or("`header` must be a table of name = value")?;
        for (name, v) in h {
            match v {
                toml::Value::String(s) => headers.push((name.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for s in a {
                        headers.push((
                            name.clone(),
                            s.as_str().ok_or(format!("header {name:?}: values must be strings"))?.to_string(),
                        ));
                    }
                }
                _ => return Err(format!("header {name:?}: value must be a string or a list of strings")),
            }
        }
    }
    let file = |s: &str| if Path::new(s).is_absolute() { PathBuf::from(s) } else { base.join(s) };
    let mut tls = TlsSettings::default();
    match t.get("ca") {
        None => {}
        Some(toml::Value::String(s)) => tls.ca.push(file(s)),
        Some(toml::Value::Array(a)) => {
            for v in a {
                tls.ca.push(file(v.as_str().ok_or("`ca` must be a path or a list of paths")?));
            }
        }
        Some(_) => return Err("`ca` must be a path or a list of paths".into()),
    }
    let pair = |a: &[toml::Value]| match a {
        [c, k] => match (c.as_str(), k.as_str()) {
            (Some(c), Some(k)) => Ok(Some((file(c), file(k)))),
            _ => Err("`client` pairs must be [\"cert.pem\", \"key.pem\"]".to_string()),
        },
        _ => Err("`client` pairs must be [\"cert.pem\", \"key.pem\"]".to_string()),
    };
    tls.client = match t.get("client") {
        None => None,
        // A single PEM holding both certificate and key.
        Some(toml::Value::String(s)) => Some((file(s), file(s))),
        Some(toml::Value::Array(a)) if a.first().is_some_and(|v| v.is_array()) => {
            if a.len() > 1 {
                log::warn!("{url}: only the first of {} client certificates is used", a.len());
            }
            pair(a[0].as_array().map(Vec::as_slice).unwrap_or_default())?
        }
        Some(toml::Value::Array(a)) => pair(a)?,
        Some(_) => return Err("`client` must be a path, [cert, key] or [[cert, key], ...]".into()),
    };
    tls.skip_verify = t.get("skip_verify").and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(Endpoint { origin: format!("{scheme}://{host}"), path, capabilities, headers, tls, mirror })
}

/// Endpoints per registry, resolved once per client (hosts.toml is read when a registry is first
/// used: a mount keeps the hosts it started with).
#[derive(Debug, Default)]
pub struct HostsCache {
    map: parking_lot::Mutex<BTreeMap<String, std::sync::Arc<Vec<Endpoint>>>>,
}

impl HostsCache {
    pub fn get(
        &self,
        hosts_dir: Option<&Path>,
        registry: &Reference,
        plain_http: PlainHttp,
    ) -> Result<std::sync::Arc<Vec<Endpoint>>, RegistryError> {
        if let Some(e) = self.map.lock().get(&registry.registry) {
            return Ok(e.clone());
        }
        let endpoints = std::sync::Arc::new(resolve(hosts_dir, registry, plain_http)?);
        for e in endpoints.iter().filter(|e| e.tls.skip_verify) {
            log::warn!(
                "registry {}: host {}: skip_verify = true: its TLS certificate is not checked (content is still digest-verified)",
                registry.registry,
                e.origin
            );
        }
        self.map.lock().insert(registry.registry.clone(), endpoints.clone());
        Ok(endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        format!("{s}/x").parse().unwrap()
    }

    #[test]
    fn no_hosts_file_means_the_registry_itself() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve(Some(d.path()), &r("reg.example.com"), PlainHttp::Auto).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].origin, "https://reg.example.com");
        assert_eq!(
            e[0].url("reg.example.com", "a/b", "blobs/x").unwrap().as_str(),
            "https://reg.example.com/v2/a/b/blobs/x"
        );
        let e = resolve(None, &r("127.0.0.1:5000"), PlainHttp::Auto).unwrap();
        assert_eq!(e[0].origin, "http://127.0.0.1:5000");
        let e = resolve(None, &r("docker.io"), PlainHttp::Auto).unwrap();
        assert_eq!(e[0].origin, "https://registry-1.docker.io");
    }

    #[test]
    fn mirrors_in_file_order_then_server_with_every_setting() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("reg:5000")).unwrap();
        std::fs::write(
            d.path().join("reg:5000/hosts.toml"),
            r#"server = "https://reg:5000"
ca = "/etc/top-ca.pem"

[host."http://zz-mirror:5000"]
  capabilities = ["pull", "resolve"]
  header = { X-Team = "a", X-Multi = ["1", "2"] }

[host."https://aa-cache.local/custom/api"]
  capabilities = ["pull"]
  override_path = true
  ca = ["ca1.pem", "/abs/ca2.pem"]
  client = [["/c.pem", "/k.pem"]]
  skip_verify = true
"#,
        )
        .unwrap();
        let e = resolve(Some(d.path()), &r("reg:5000"), PlainHttp::Auto).unwrap();
        assert_eq!(
            e.iter().map(|e| e.origin.as_str()).collect::<Vec<_>>(),
            ["http://zz-mirror:5000", "https://aa-cache.local", "https://reg:5000"]
        );
        assert_eq!(e[0].capabilities, Capabilities { pull: true, resolve: true, push: false });
        assert!(
            e[0].headers.contains(&("X-Multi".into(), "2".into()))
                && e[0].headers.contains(&("X-Team".into(), "a".into()))
        );
        assert_eq!(
            e[0].url("reg:5000", "lib/app", "blobs/d").unwrap().as_str(),
            "http://zz-mirror:5000/v2/lib/app/blobs/d?ns=reg%3A5000"
        );
        assert_eq!(e[1].path, "/custom/api");
        assert_eq!(e[1].capabilities, Capabilities { pull: true, resolve: false, push: false });
        assert_eq!(e[1].tls.ca, [d.path().join("reg:5000/ca1.pem"), PathBuf::from("/abs/ca2.pem")]);
        assert_eq!(e[1].tls.client, Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))));
        assert!(e[1].tls.skip_verify);
        assert!(!e[2].mirror && e[2].capabilities == Capabilities::ALL);
        assert_eq!(e[2].tls.ca, [PathBuf::from("/etc/top-ca.pem")]);
        assert_eq!(e[2].url("reg:5000", "lib/app", "blobs/d").unwrap().as_str(), "https://reg:5000/v2/lib/app/blobs/d");
    }

    #[test]
    fn default_dir_applies_to_registries_without_their_own() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "[host.\"http://cache:5000\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        let e = resolve(Some(d.path()), &r("any.example.com"), PlainHttp::Auto).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].origin, "http://cache:5000");
        assert_eq!(e[1].origin, "https://any.example.com");
    }

    #[test]
    fn broken_files_name_the_file_and_the_problem() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("reg.local")).unwrap();
        std::fs::write(d.path().join("reg.local/hosts.toml"), "server = [").unwrap();
        let e = resolve(Some(d.path()), &r("reg.local"), PlainHttp::Auto).unwrap_err().to_string();
        assert!(e.contains("hosts.toml") && e.contains("fix or remove it"), "{e}");
        std::fs::write(d.path().join("reg.local/hosts.toml"), "[host.\"http://m\"]\ncapabilities = [\"fetch\"]\n")
            .unwrap();
        let e = resolve(Some(d.path()), &r("reg.local"), PlainHttp::Auto).unwrap_err().to_string();
        assert!(e.contains("unknown capability") && e.contains("http://m"), "{e}");
    }
}
