//! Credentials handed over for one image: a directory of small files, one per repository, written
//! by whoever saw the credentials the image was pulled with (the shim's CRI proxy records the
//! `AuthConfig` of each CRI `PullImage`, which is how Kubernetes `imagePullSecrets` arrive) and read
//! first by the [`super::credentials::Keychain`] of every mount of that image.
//!
//! Security: the directory is created 0700 and each file 0600 (root-only on a node); files are
//! written atomically (temp file + rename) and carry an expiry, after which readers ignore and
//! remove them. A credential is only used for the repository it was given for, and for the
//! registry host named in its `server_address` when it has one (as containerd's CRI does), so a
//! pod's secret never reaches another repository's requests.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::credentials::Credential;
use super::error::RegistryError;
use super::reference::Reference;

/// Where the shim and its CRI proxy keep handed-over credentials by default.
pub const DEFAULT_DIR: &str = "/run/containerd-shim-lazy/creds";

/// What a pull carried (CRI `AuthConfig`): username + password, or `auth` (base64 `user:password`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub server_address: String,
}

impl PullAuth {
    /// The username and secret, if this carries any usable ones.
    fn user_secret(&self) -> Option<(String, String)> {
        if !self.username.is_empty() || !self.password.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(self.auth.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// `registry/repository`, as [`key_of`] normalises it.
    image: String,
    /// The reference as pulled (for people reading the directory).
    reference: String,
    username: String,
    password: String,
    #[serde(default)]
    server_address: String,
    expires_unix: u64,
}

#[derive(Debug, Clone)]
pub struct ImageCredStore {
    dir: PathBuf,
}

/// `registry/repository` of an image reference (tag and digest dropped, docker.io normalised).
pub fn key_of(reference: &str) -> Result<String, RegistryError> {
    let r: Reference = reference.parse()?;
    Ok(format!("{}/{}", r.registry, r.repository))
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `host[:port]` of a server address as kubelet or a client writes it (`https://reg.io/v1/`, `reg.io`).
fn host_of(server: &str) -> &str {
    let s = server.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    s.split('/').next().unwrap_or(s)
}

impl ImageCredStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageCredStore {
        ImageCredStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, image: &str) -> PathBuf {
        self.dir.join(format!("{}.json", hex::encode(Sha256::digest(image.as_bytes()))))
    }

    /// Records `auth` for the repository of `reference`, valid for `ttl`. Returns the file written,
    /// or None when `auth` holds no username or password (nothing to record; an older record of the
    /// repository is left alone).
    pub fn put(&self, reference: &str, auth: &PullAuth, ttl: Duration) -> Result<Option<PathBuf>, RegistryError> {
        let Some((username, password)) = auth.user_secret() else { return Ok(None) };
        let image = key_of(reference)?;
        let io = |path: &Path, e| RegistryError::Io { path: path.to_path_buf(), source: e };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(|e| io(&self.dir, e))?;
        // An existing directory keeps its mode: make sure it is root-only.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io(&self.dir, e))?;
        let record = Record {
            image: image.clone(),
            reference: reference.to_string(),
            username,
            password,
            server_address: auth.server_address.clone(),
            expires_unix: now_unix() + ttl.as_secs(),
        };
        let path = self.path_for(&image);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        let body = serde_json::to_vec(&record)
            .map_err(|e| RegistryError::Config(format!("encoding a credential record: {e}")))?;
        file.write_all(&body).and_then(|()| file.sync_all()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        Ok(Some(path))
    }

    /// The credential recorded for `image` (`registry/repository`) when talking to `host`, if one
    /// is recorded, not expired, and given for that host (or for any host of the image).
    pub fn get(&self, image: &str, host: &str) -> Result<Option<Credential>, RegistryError> {
        let path = self.path_for(image);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RegistryError::Io { path, source: e }),
        };
        let record: Record = match serde_json::from_slice(&text) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("credential record {}: {e}; ignoring it", path.display());
                return Ok(None);
            }
        };
        if record.image != image {
            return Ok(None);
        }
        if record.expires_unix <= now_unix() {
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        if !record.server_address.is_empty() && host_of(&record.server_address) != host {
            return Ok(None);
        }
        Ok(Some(Credential {
            username: record.username,
            secret: record.password,
            source: format!("the credentials of the image's pull (CRI PullImage) recorded in {}", path.display()),
        }))
    }

    /// Removes expired records; returns how many.
    pub fn prune(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let now = now_unix();
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Record>(&t).ok())
                .is_some_and(|r| r.expires_unix <= now);
            if expired && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_private_per_repository_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let store = ImageCredStore::new(d.path().join("creds"));
        let auth = PullAuth { username: "u".into(), password: "p".into(), ..Default::default() };
        let path = store.put("reg.io:5000/team/app:v1", &auth, Duration::from_secs(60)).unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        let c = store.get("reg.io:5000/team/app", "reg.io:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "p"));
        assert!(store.get("reg.io:5000/team/other", "reg.io:5000").unwrap().is_none(), "another repository");
        // `auth` form, limited to its server address.
        let auth = PullAuth {
            auth: "YWxpY2U6czNjcmV0".into(),
            server_address: "https://reg.io/v1/".into(),
            ..Default::default()
        };
        store.put("reg.io/x", &auth, Duration::from_secs(60)).unwrap().unwrap();
        let c = store.get("reg.io/x", "reg.io").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("alice", "s3cret"));
        assert!(store.get("reg.io/x", "mirror.local:5000").unwrap().is_none(), "not for another host");
        // Nothing to record.
        assert!(store.put("reg.io/y", &PullAuth::default(), Duration::from_secs(60)).unwrap().is_none());
        // Expired records are ignored and removed.
        let auth = PullAuth { username: "u".into(), password: "p".into(), ..Default::default() };
        let old = store.put("reg.io/old", &auth, Duration::ZERO).unwrap().unwrap();
        assert!(store.get("reg.io/old", "reg.io").unwrap().is_none());
        assert!(!old.exists());
        store.put("reg.io/old2", &auth, Duration::ZERO).unwrap().unwrap();
        assert_eq!(store.prune(), 1);
        assert_eq!(key_of("busybox").unwrap(), "docker.io/library/busybox");
    }
}
