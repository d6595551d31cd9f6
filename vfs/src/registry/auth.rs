//! Registry authentication: parses `WWW-Authenticate` challenges, runs the bearer token flow (token
//! endpoint with a repository scope, with basic credentials when we have them), and finds
//! credentials in docker's config.json the way `docker login` stores them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::error::RegistryError;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic,
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`. Quoted values
    /// may contain commas (`scope="repository:a:pull,push"`). Unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `k="v", k2=v2` -> map with lowercase keys.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
    out
}

/// The credential parts of docker's config.json: `auths`, `credHelpers`, `credsStore`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(rename = "identitytoken")]
    identity_token: Option<String>,
}

impl DockerConfig {
    pub fn parse(json: &str) -> Result<DockerConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Reads the first config file that exists: `explicit`, `$DOCKER_CONFIG/config.json`,
    /// `$HOME/.docker/config.json`, `/root/.docker/config.json`. No file means no credentials.
    pub fn load(explicit: Option<&Path>) -> Result<DockerConfig, RegistryError> {
        Ok(DockerConfig::load_with_path(explicit)?.map(|(_, c)| c).unwrap_or_default())
    }

    /// [`DockerConfig::load`], also saying which file it read; None when no file exists.
    pub fn load_with_path(explicit: Option<&Path>) -> Result<Option<(PathBuf, DockerConfig)>, RegistryError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = explicit {
            candidates.push(p.to_path_buf());
        } else {
            if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
                candidates.push(Path::new(&d).join("config.json"));
            }
            if let Some(h) = std::env::var_os("HOME") {
                candidates.push(Path::new(&h).join(".docker/config.json"));
            }
            candidates.push(PathBuf::from("/root/.docker/config.json"));
        }
        for path in candidates {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return match DockerConfig::parse(&text) {
                        Ok(c) => Ok(Some((path, c))),
                        Err(e) => Err(RegistryError::Config(format!(
                            "{}: not a valid docker config.json: {e}",
                            path.display()
                        ))),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
                Err(e) => return Err(RegistryError::Io { path, source: e }),
            }
        }
        Ok(None)
    }

    /// The credential helper for a registry host: its `credHelpers` entry, else `credsStore`.
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let want = normalise_host(registry);
        self.cred_helpers
            .iter()
            .find(|(k, _)| normalise_host(k) == want)
            .map(|(_, v)| v.clone())
            .or_else(|| self.creds_store.clone())
            .filter(|h| !h.is_empty())
    }

    /// Username and password for a registry host. Keys may be written `host`, `https://host`,
    /// `https://host/v1/`; Docker Hub is stored as `https://index.docker.io/v1/`.
    pub fn credentials(&self, registry: &str) -> Option<(String, String)> {
        let want = normalise_host(registry);
        let entry = self.auths.iter().find(|(k, _)| normalise_host(k) == want)?.1;
        if let Some(encoded) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        if let Some(token) = &entry.identity_token {
            return Some(("<token>".to_string(), token.clone()));
        }
        Some((entry.username.clone()?, entry.password.clone().unwrap_or_default()))
    }
}

fn normalise_host(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        _ => host,
    }
}

pub fn basic_header(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// Asks the token endpoint of a bearer challenge for a token with `scope`, and returns the value for
/// the `Authorization` header.
pub async fn fetch_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&(String, String)>,
    timeout: std::time::Duration,
) -> Result<String, RegistryError> {
    let err = |reason: String| RegistryError::Auth { registry: registry.to_string(), reason };
    let mut url = reqwest::Url::parse(realm).map_err(|e| err(format!("token realm {realm:?} is not a URL: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        q.append_pair("scope", scope);
    }
    let mut req = http.get(url.clone()).timeout(timeout);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.map_err(|e| err(format!("token endpoint {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let hint = if creds.is_none() {
            "; no credentials configured: run `docker login` or pass credentials"
        } else {
            "; check the username and password"
        };
        return Err(err(format!("token endpoint {url} answered HTTP {status}: {}{hint}", truncate(&body))));
    }
    let bytes = resp.bytes().await.map_err(|e| err(format!("token endpoint {url}: {e}")))?;
    let body: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("token endpoint {url}: response is not token JSON: {e}")))?;
    let token = body.token.or(body.access_token).filter(|t| !t.is_empty());
    token.map(|t| format!("Bearer {t}")).ok_or_else(|| err(format!("token endpoint {url}: response carries no token")))
}

pub fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None, "a bearer challenge without realm is unusable");
    }

    #[test]
    fn docker_config_auth_and_username_password() {
        let cfg = DockerConfig::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                "127.0.0.1:5000": {"username": "alice", "password": "secret"},
                "https://reg.example.com": {"auth": "Ym9iOmh1bnRlcjI="}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        assert_eq!(cfg.credentials("docker.io"), Some(("user".into(), "pa:ss".into())));
        assert_eq!(cfg.credentials("127.0.0.1:5000"), Some(("alice".into(), "secret".into())));
        assert_eq!(cfg.credentials("reg.example.com"), Some(("bob".into(), "hunter2".into())));
        assert_eq!(cfg.credentials("other.example.com"), None);
        assert_eq!(cfg.helper_for("other.example.com"), Some("desktop".into()));
    }

    #[test]
    fn docker_config_missing_file_is_no_credentials_but_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = DockerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not a valid docker config.json"), "{e}");
        assert!(DockerConfig::load(Some(&dir.path().join("missing.json"))).is_err());
    }
}
