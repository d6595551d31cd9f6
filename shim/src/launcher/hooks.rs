//! OCI hooks: run each with the container's state JSON on stdin, its own args/env, and its
//! timeout; a failing hook fails the operation with the hook's exit status and stderr.
//!
//! prestart and createRuntime run from the helper (runtime namespaces), createContainer and
//! startContainer from the container's init, poststart and poststop from the service
//! ([`run_hooks`]). Single-threaded: output is drained with poll, not threads, because the
//! callers may be the freshly forked init.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::{Deserialize, Serialize};

use super::error::{StepError, StepResult};
use super::LaunchError;

/// The OCI runtime state handed to hooks on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub oci_version: String,
    pub id: String,
    /// creating, created, running or stopped.
    pub status: String,
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ContainerState {
    pub fn new(spec: &oci_spec::runtime::Spec, id: &str, bundle: &std::path::Path, status: &str, pid: i32) -> Self {
        ContainerState {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: status.to_string(),
            pid,
            bundle: bundle.to_path_buf(),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        }
    }
}

/// Runs poststart/poststop hooks for the service. The phase is taken from `state.status`
/// (running -> poststart, stopped -> poststop) for the error text.
pub fn run_hooks(hooks: &[Hook], state: &ContainerState) -> Result<(), LaunchError> {
    let phase = match state.status.as_str() {
        "running" => "poststart",
        "stopped" => "poststop",
        _ => "OCI",
    };
    for hook in hooks {
        run_one(hook, state).map_err(|detail| LaunchError::Hook { phase, path: hook.path().clone(), detail })?;
    }
    Ok(())
}

/// Runs the hooks of one phase inside the helper or the init, with the error as "step" text.
pub(crate) fn run_phase(phase: &str, hooks: Option<&Vec<Hook>>, state: &ContainerState) -> StepResult<()> {
    for hook in hooks.map(|h| h.as_slice()).unwrap_or_default() {
        run_one(hook, state).map_err(|detail| StepError::Setup {
            step: format!("{phase} hook {}", hook.path().display()),
            path: Some(hook.path().clone()),
            errno: None,
            detail,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state: &ContainerState) -> Result<(), String> {
    let json = serde_json::to_vec(state).map_err(|e| format!("encode state: {e}"))?;
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    // As runc (Go's exec.Cmd): no env in the hook means the runtime's environment.
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        // A hook that does not read its stdin must not block us: ignore EPIPE and friends.
        let _ = s.write_all(&json);
    }
    drop(stdin);
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    for fd in [out.as_ref().map(|o| o.as_raw_fd()), err.as_ref().map(|e| e.as_raw_fd())].into_iter().flatten() {
        // SAFETY: fcntl on a pipe fd we own; only flips O_NONBLOCK.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let deadline = hook.timeout().filter(|t| *t > 0).map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let status = loop {
        drain(&mut out, &mut stdout);
        drain(&mut err, &mut stderr);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {}s (hook timeout); it was killed",
                hook.timeout().unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drain(&mut out, &mut stdout);
    drain(&mut err, &mut stderr);
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".to_string(),
    };
    let text = String::from_utf8_lossy(if stderr.is_empty() { &stdout } else { &stderr });
    let text = text.trim();
    if text.is_empty() {
        Err(how)
    } else {
        Err(format!("{how}: {}", truncate(text, 2000)))
    }
}

fn drain<R: Read>(src: &mut Option<R>, into: &mut Vec<u8>) {
    let Some(r) = src.as_mut() else { return };
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => {
                *src = None;
                return;
            }
            Ok(n) => {
                // Keep the head and a bounded amount: a chatty hook must not grow us unbounded.
                if into.len() < 64 * 1024 {
                    into.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    fn state() -> ContainerState {
        ContainerState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: "running".into(),
            pid: 42,
            bundle: "/b".into(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failure_carries_stderr() {
        let h = hook(r#"{"path":"/bin/sh","args":["sh","-c","cat >/dev/null; echo bad state >&2; exit 7"]}"#);
        let err = run_hooks(&[h], &state()).unwrap_err().to_string();
        assert!(err.contains("poststart hook /bin/sh: exit status 7: bad state"), "{err}");
        let ok = hook(r#"{"path":"/bin/sh","args":["sh","-c","grep -q '\"pid\":42'"]}"#);
        run_hooks(&[ok], &state()).unwrap();
    }

    #[test]
    fn hook_timeout_kills_it() {
        let h = hook(r#"{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}"#);
        let t = Instant::now();
        let err = run_hooks(&[h], &state()).unwrap_err().to_string();
        assert!(err.contains("timed out after 1s"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn hook_env_replaces_the_environment() {
        let h = hook(
            r#"{"path":"/bin/sh","args":["sh","-c","test \"$FOO\" = bar && test -z \"$HOME\""],"env":["FOO=bar"]}"#,
        );
        run_hooks(&[h], &state()).unwrap();
    }
}
