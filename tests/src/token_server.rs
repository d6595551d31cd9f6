//! A tiny bearer-token server for docker-registry's `auth: token:` mode, as Docker Hub, GHCR, Harbor
//! and most private registries do it: the registry answers 401 with
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; the client fetches a JWT from the
//! realm with its username and password (HTTP basic); the registry checks the JWT's signature,
//! audience, expiry and `access` claims.
//!
//! Tokens are RS256 JWTs signed with a fresh test key (the openssl command line tool signs; its
//! certificate is the registry's `rootcertbundle`). The header's `kid` is the libtrust key ID of the
//! key, which is how docker-registry 2.8 finds the signing key among its trusted ones. The lifetime
//! is the test's choice (a few seconds makes a long read cross several expiries; `exp` is set back
//! by the registry's 60 s leeway so the registry really refuses the token then); users and
//! passwords can change while it runs (a rotated secret). It counts the tokens it issued and the
//! requests it refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use crate::cleanup::temp_dir;
use crate::registry::{openssl, self_signed, Auth};

/// The `service` the registry names in its challenges (the JWT audience).
pub const SERVICE: &str = "lazy-tests-registry";
const ISSUER: &str = "lazy-tests-token-server";
/// docker-registry 2.8 accepts a token up to 60 s past its `exp` (clock skew leeway): `exp` is set
/// that much earlier, so a token is refused `lifetime` after it was issued, as the test wants.
const REGISTRY_LEEWAY_SECS: u64 = 60;

pub struct TokenServer {
    dir: tempfile::TempDir,
    port: u16,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    key: PathBuf,
    kid: String,
    lifetime: Duration,
    users: Mutex<HashMap<String, String>>,
    issued: AtomicU64,
    refused: AtomicU64,
}

impl TokenServer {
    /// Starts on a free loopback port with one user; tokens live `lifetime`.
    pub fn start(user: &str, password: &str, lifetime: Duration) -> Result<TokenServer> {
        let dir = temp_dir("token-server");
        self_signed(dir.path(), "token", "lazy-tests token issuer")?;
        let public_pem = openssl(dir.path(), &["x509", "-in", "token.pem", "-pubkey", "-noout"], None)?;
        let der = openssl(dir.path(), &["pkey", "-pubin", "-outform", "DER"], Some(&public_pem))?;
        let kid = libtrust_key_id(&der);
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the token server")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            key: dir.path().join("token.key"),
            kid,
            lifetime,
            users: Mutex::new(HashMap::from([(user.to_string(), password.to_string())])),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            std::thread::Builder::new().name("token-server".into()).spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = serve(conn, &shared) {
                            log::debug!("token server: {e:#}");
                        }
                    });
                }
            })?
        };
        Ok(TokenServer { dir, port, shared, stopping, acceptor: Some(acceptor) })
    }

    /// The registry side: `auth: token:` settings trusting this server's key.
    pub fn registry_auth(&self) -> Auth {
        Auth::Token {
            realm: format!("http://127.0.0.1:{}/token", self.port),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            cert: self.dir.path().join("token.pem"),
        }
    }

    /// Replaces `user`'s password (a rotated secret): tokens are only issued for the new one.
    pub fn set_password(&self, user: &str, password: &str) {
        self.shared.users.lock().unwrap().insert(user.to_string(), password.to_string());
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Token requests refused (wrong or missing credentials) so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Answers one HTTP/1.x request: `GET /token?service=..&scope=..` with basic auth.
fn serve(mut conn: TcpStream, shared: &Shared) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    if path != "/token" {
        return respond(&mut conn, 404, "{\"error\":\"not found\"}");
    }
    let params: Vec<(String, String)> =
        query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect();
    let user = {
        let users = shared.users.lock().unwrap();
        users
            .iter()
            .find(|(u, p)| {
                authorization.as_deref()
                    == Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes(), false)).as_str())
            })
            .map(|(u, _)| u.clone())
    };
    let Some(user) = user else {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return respond(
            &mut conn,
            401,
            "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"wrong username or password\"}]}",
        );
    };
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
    let access: Vec<serde_json::Value> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, s)| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": shared.kid});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user, "aud": service, "iat": now, "nbf": now - 1,
        "exp": now + shared.lifetime.as_secs().max(1) - REGISTRY_LEEWAY_SECS,
        "jti": format!("{now}-{}", shared.issued.load(Ordering::SeqCst)), "access": access,
    });
    let signing_input =
        format!("{}.{}", base64(header.to_string().as_bytes(), true), base64(claims.to_string().as_bytes(), true));
    let dir = shared.key.parent().context("token key without a directory")?;
    let signature = openssl(dir, &["dgst", "-sha256", "-sign", "token.key"], Some(signing_input.as_bytes()))?;
    let token = format!("{signing_input}.{}", base64(&signature, true));
    shared.issued.fetch_add(1, Ordering::SeqCst);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": shared.lifetime.as_secs().max(1)});
    respond(&mut conn, 200, &body.to_string())
}

fn respond(conn: &mut TcpStream, status: u16, body: &str) -> Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// libtrust's key ID (what docker-registry 2.8 matches a JWT's `kid` against): SHA-256 of the
/// PKIX DER public key, first 240 bits, base32, in groups of four joined by ':'.
fn libtrust_key_id(der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(der);
    let bytes = &hash[..30];
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut s = String::new();
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            s.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    s.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect::<Vec<_>>().join(":")
}

/// Base64 (standard with padding, or URL-safe without: JWT).
pub fn base64(data: &[u8], url: bool) -> String {
    let alphabet: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b"user:pass", false), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab", false), "YWI=");
        assert_eq!(base64(b"ab", true), "YWI");
        assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
        assert_eq!(percent_decode("repository%3Alazy%2Fx%3Apull"), "repository:lazy/x:pull");
    }

    #[test]
    fn key_id_has_twelve_groups_of_four() {
        let kid = libtrust_key_id(b"anything");
        assert_eq!(kid.len(), 48 + 11, "{kid}");
        assert!(kid.split(':').all(|g| g.len() == 4));
    }
}
