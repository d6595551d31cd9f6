//! `linux.seccomp` -> a libseccomp filter, loaded by the container's init as late as runc does
//! (right before execve with noNewPrivileges; before dropping capabilities without it, because
//! loading a filter then needs CAP_SYS_ADMIN). Follows runc's rules: syscalls libseccomp does not
//! know are skipped, rules whose action equals the default are skipped, and conditions on the same
//! argument become separate rules (libseccomp cannot AND them).

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};
use std::str::FromStr;

use super::error::{StepError, StepResult};

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> StepResult<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(StepError::InvalidSpec(
                "linux.seccomp: SCMP_ACT_NOTIFY (seccomp user notification) \
                        is not supported by containerd-shim-lazy"
                    .into(),
            ))
        }
    })
}

fn op(o: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // OCI: value is the mask, valueTwo the datum (as runc passes them to libseccomp).
        LinuxSeccompOperator::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0)),
    }
}

/// Builds the filter. Separate from [`load`] so it can be tested without loading it.
pub fn build(seccomp: &LinuxSeccomp) -> StepResult<ScmpFilterContext> {
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("seccomp: {what}: {e}");
    if seccomp.listener_path().is_some() {
        return Err(StepError::InvalidSpec(
            "linux.seccomp.listenerPath (seccomp notify) is not supported by \
                    containerd-shim-lazy"
                .into(),
        ));
    }
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("create filter", e))?;
    // The process sets no_new_privs itself when the spec asks; libseccomp must not force it.
    ctx.set_ctl_nnp(false).map_err(|e| err("disable NNP", e))?;
    for arch in seccomp.architectures().as_deref().unwrap_or_default() {
        let name = serde_json::to_value(arch).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let a = ScmpArch::from_str(&name).map_err(|e| err(&format!("architecture {name}"), e))?;
        if !ctx.is_arch_present(a).unwrap_or(false) {
            ctx.add_arch(a).map_err(|e| err(&format!("add architecture {name}"), e))?;
        }
    }
    for flag in seccomp.flags().as_deref().unwrap_or_default() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ctx.set_ctl_log(true).map_err(|e| err("flag SECCOMP_FILTER_FLAG_LOG", e))?;
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true).map_err(|e| err("flag SECCOMP_FILTER_FLAG_SPEC_ALLOW", e))?;
            }
            other => log::warn!("seccomp flag {other:?} is not supported; ignoring it"),
        }
    }
    for rule in seccomp.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().as_deref().unwrap_or_default();
        let conds: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                let (o, datum) = op(a.op(), a.value(), a.value_two());
                ScmpArgCompare::new(a.index() as u32, o, datum)
            })
            .collect();
        let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let same_arg_twice = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                log::debug!("seccomp: syscall {name} unknown to libseccomp; skipped (as runc)");
                continue;
            };
            let res = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else if same_arg_twice {
                conds.iter().try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]).map(|_| ())).map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            res.map_err(|e| err(&format!("rule for {name}"), e))?;
        }
    }
    Ok(ctx)
}

/// Builds and loads the filter into the calling thread (the whole single-threaded process).
pub fn load(seccomp: Option<&LinuxSeccomp>) -> StepResult<()> {
    let Some(seccomp) = seccomp else { return Ok(()) };
    let ctx = build(seccomp)?;
    ctx.load().map_err(|e| StepError::Failed(format!("seccomp: load the filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_and_unknown_syscalls_build() {
        let s: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[
                  {"names":["read","write","no_such_syscall_xyz"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                  {"names":["socket"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
                  {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}
                ]}"#,
        )
        .unwrap();
        let ctx = build(&s).unwrap();
        let out = tempfile::tempfile().unwrap();
        ctx.export_bpf(&out).unwrap();
        assert!(out.metadata().unwrap().len() > 0, "the filter compiles to BPF");
    }

    #[test]
    fn notify_is_a_clear_error() {
        let s: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let err = build(&s).err().unwrap();
        assert!(matches!(err, StepError::InvalidSpec(_)), "{err:?}");
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }
}
