//! Image references as users type them: `host[:port]/repo[:tag][@sha256:...]`, with docker's
//! normalisation of short names (`busybox` -> `docker.io/library/busybox`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Where an image (or a repository of blobs) lives. `registry` is the host as written by the user
/// (`docker.io` is kept as such and mapped to its API host only when a URL is built).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason} (expected host[:port]/repository[:tag][@sha256:<64 hex>])")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

pub const DOCKER_HUB: &str = "docker.io";

impl Reference {
    /// A reference to the repository alone (no tag, no digest): what blob reads need.
    pub fn repository_only(&self) -> Reference {
        Reference { registry: self.registry.clone(), repository: self.repository.clone(), tag: None, digest: None }
    }

    /// The tag or digest to put in a manifest URL: the digest wins, then the tag, then `latest`.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// Host (and port) that serves the distribution API for this registry.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB || self.registry == "index.docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// True for registries containerd talks plain HTTP to by default: localhost and loopback IPs.
    pub fn is_loopback(&self) -> bool {
        let host = host_without_port(&self.registry);
        if host == "localhost" {
            return true;
        }
        match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => false,
        }
    }
}

/// `host:port` -> `host`; `[::1]:5000` -> `[::1]`; a bare IPv6 literal stays whole.
fn host_without_port(registry: &str) -> &str {
    if let Some(end) = registry.strip_prefix('[').and_then(|r| r.find(']')) {
        return &registry[..end + 2];
    }
    if registry.matches(':').count() > 1 {
        return registry; // bare IPv6 literal
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.as_bytes()[0] != b'.'
        && tag.as_bytes()[0] != b'-'
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError { reference: s.to_string(), reason: reason.to_string() };
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        if rest.is_empty() {
            return Err(err("empty reference"));
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((name, d)) => (name, Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?)),
            None => (rest, None),
        };
        // A tag is after the last ':' only if that ':' is in the last path component (else it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !is_valid_tag(t) {
                return Err(err(&format!("invalid tag {t:?}")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[') =>
            {
                (first.to_string(), repo.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.is_empty() {
            return Err(err("empty registry host"));
        }
        if !is_valid_repository(&repository) {
            return Err(err(&format!(
                "invalid repository {repository:?}: path components of lowercase letters, digits, '.', '_', '-'"
            )));
        }
        Ok(Reference { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_hosts_ports_tags_and_digests() {
        let x = r("127.0.0.1:5000/library/python:3.12");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("127.0.0.1:5000", "library/python", Some("3.12"))
        );
        assert!(x.is_loopback());
        let d = Digest::of(b"x");
        let x = r(&format!("localhost:5000/a/b@{d}"));
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.clone(), x.digest),
            ("localhost:5000", "a/b", None, Some(d))
        );
        assert_eq!(x.manifest_ref(), d.to_string());
        let x = r("registry.example.com/team/app");
        assert_eq!((x.registry.as_str(), x.manifest_ref().as_str()), ("registry.example.com", "latest"));
        assert!(!x.is_loopback());
        assert!(r("[::1]:5000/x").is_loopback());
        assert_eq!(r("localhost:5000/x:v1").to_string(), "localhost:5000/x:v1");
    }

    #[test]
    fn normalises_docker_hub_short_names() {
        let x = r("busybox");
        assert_eq!(x.to_string(), "docker.io/library/busybox");
        assert_eq!(x.api_host(), "registry-1.docker.io");
        assert_eq!(r("user/app:1").to_string(), "docker.io/user/app:1");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "UPPER/case", "host:5000/", "a//b", "x:bad tag", "x@sha256:123"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} should be rejected");
        }
    }
}
