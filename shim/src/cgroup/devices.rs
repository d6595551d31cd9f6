//! devices: the OCI allow/deny list compiled into a BPF_PROG_TYPE_CGROUP_DEVICE program (as runc and crun
//! do; cgroup v2 has no devices.allow file) and attached to the container's cgroup, replacing the previous
//! program on update.
//!
//! Semantics follow the cgroup v1 devices controller the OCI list was designed for: a rule matching every
//! device ("a *:* rwm") resets the default to its allow flag and drops earlier rules; otherwise the LAST rule
//! that matches a device access decides; no match falls back to the default (allow until a deny-all appears).

pub mod bpf;

use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use self::bpf::Insn;
use super::CgroupError;

const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One rule after validation: `kind` None matches both block and char devices; None major/minor is `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: i32,
}

impl Rule {
    fn matches_everything(&self) -> bool {
        self.kind.is_none() && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }
}

fn num(field: &str, v: Option<i64>) -> Result<Option<u32>, CgroupError> {
    match v {
        None => Ok(None),
        Some(v) if v < 0 => Ok(None),
        Some(v) => u32::try_from(v).map(Some).map_err(|_| CgroupError::invalid(field, format!("{v} is out of range"))),
    }
}

/// Validates the OCI list. Fifo ("p") rules are dropped: the device controller never sees fifos.
pub fn parse_rules(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    let mut out = Vec::new();
    for r in rules {
        let kind = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::P => {
                log::debug!("device rule {r} is for fifos, which the device controller does not govern");
                continue;
            }
        };
        let access_text = r.access().as_deref().unwrap_or("");
        let mut access = 0;
        for c in access_text.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(CgroupError::invalid(
                        "devices.access",
                        format!("{access_text:?} in rule \"{r}\": only the letters r, w, m are allowed"),
                    ))
                }
            };
        }
        if access == 0 {
            access = ACC_ALL;
        }
        out.push(Rule {
            allow: r.allow(),
            kind,
            major: num("devices.major", r.major())?,
            minor: num("devices.minor", r.minor())?,
            access,
        });
    }
    Ok(out)
}

/// runc's built-in allow-list (runc 1.1 `specconv.AllowedDevices`): mknod of any device, /dev/null zero
/// full random urandom tty console, ptmx, every /dev/pts/N, and /dev/net/tun. containerd's Go client sends
/// only a deny-all rule and relies on these; without them /dev/null, terminals and `exec -t` fail with EPERM.
pub fn runc_default_allow() -> Vec<Rule> {
    let c = |major: Option<u32>, minor: Option<u32>, access: i32| Rule {
        allow: true,
        kind: Some(DEV_CHAR),
        major,
        minor,
        access,
    };
    vec![
        c(None, None, ACC_MKNOD),
        Rule { allow: true, kind: Some(DEV_BLOCK), major: None, minor: None, access: ACC_MKNOD },
        c(Some(1), Some(3), ACC_ALL),    // null
        c(Some(1), Some(8), ACC_ALL),    // random
        c(Some(1), Some(7), ACC_ALL),    // full
        c(Some(5), Some(0), ACC_ALL),    // tty
        c(Some(1), Some(5), ACC_ALL),    // zero
        c(Some(1), Some(9), ACC_ALL),    // urandom
        c(Some(5), Some(1), ACC_ALL),    // console
        c(Some(136), None, ACC_ALL),     // pts/*
        c(Some(5), Some(2), ACC_ALL),    // ptmx
        c(Some(10), Some(200), ACC_ALL), // net/tun
    ]
}

/// The spec's rules with [`runc_default_allow`] inserted right after the spec's last match-everything rule
/// (its deny-all): a deny-all-only list gets runc's standard devices, while rules the spec lists after its
/// deny-all still decide (runc appends the defaults at the very end, so there a spec cannot deny /dev/null;
/// here it can, which is stricter, never looser).
pub fn with_runc_defaults(rules: Vec<Rule>) -> Vec<Rule> {
    let at = rules.iter().rposition(Rule::matches_everything).map_or(0, |i| i + 1);
    let mut out = rules;
    out.splice(at..at, runc_default_allow());
    out
}

/// The effective default and the rules after the last match-everything rule.
pub fn effective(rules: &[Rule]) -> (bool, Vec<Rule>) {
    let mut default_allow = true;
    let mut list: Vec<Rule> = Vec::new();
    for r in rules {
        if r.matches_everything() {
            default_allow = r.allow;
            list.clear();
        } else {
            list.push(r.clone());
        }
    }
    (default_allow, list)
}

/// Compiles the rules into a device program. Registers: r2 device type, r3 requested access, r4 major,
/// r5 minor (from struct bpf_cgroup_dev_ctx {access_type = access << 16 | type, major, minor}).
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    let (default_allow, list) = effective(rules);
    let mut p = vec![
        Insn::ldx_w(2, 1, 0),
        Insn::and_k(2, 0xffff),
        Insn::ldx_w(3, 1, 0),
        Insn::rsh_k(3, 16),
        Insn::ldx_w(4, 1, 4),
        Insn::ldx_w(5, 1, 8),
    ];
    // Last matching rule wins: test them from the end.
    for r in list.iter().rev() {
        // Conditions as (instructions before the jump, jump builder).
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps: Vec<usize> = Vec::new();
        if let Some(k) = r.kind {
            jumps.push(block.len());
            block.push(Insn::jne_k(2, k, 0));
        }
        if r.access != ACC_ALL {
            block.push(Insn::mov_x(1, 3));
            block.push(Insn::and_k(1, r.access));
            jumps.push(block.len());
            block.push(Insn::jne_x(1, 3, 0));
        }
        if let Some(m) = r.major {
            jumps.push(block.len());
            block.push(Insn::jne_k(4, m as i32, 0));
        }
        if let Some(m) = r.minor {
            jumps.push(block.len());
            block.push(Insn::jne_k(5, m as i32, 0));
        }
        block.push(Insn::mov_k(0, i32::from(r.allow)));
        block.push(Insn::exit());
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(Insn::mov_k(0, i32::from(default_allow)));
    p.push(Insn::exit());
    p
}

/// Evaluates the rules the way the compiled program does (for tests and for explaining decisions).
pub fn decide(rules: &[Rule], char_dev: bool, major: u32, minor: u32, access: &str) -> bool {
    let (default_allow, list) = effective(rules);
    let kind = if char_dev { DEV_CHAR } else { DEV_BLOCK };
    let mut acc = 0;
    for c in access.chars() {
        acc |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => ACC_MKNOD,
        };
    }
    for r in list.iter().rev() {
        let ok = r.kind.is_none_or(|k| k == kind)
            && (acc & r.access) == acc
            && r.major.is_none_or(|m| m == major)
            && r.minor.is_none_or(|m| m == minor);
        if ok {
            return r.allow;
        }
    }
    default_allow
}

/// Loads the program for `rules` and attaches it to the cgroup at `dir`, then detaches the programs that
/// were attached before (ours from an earlier create/update). An empty list detaches everything.
pub fn apply(dir: &Path, rules: &[Rule]) -> Result<(), CgroupError> {
    let err = |op: &'static str, source: std::io::Error| CgroupError::Bpf {
        op,
        path: dir.to_path_buf(),
        hint: match source.raw_os_error() {
            Some(libc::EPERM) => " (needs CAP_SYS_ADMIN or CAP_BPF)".into(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                " (kernel without CONFIG_CGROUP_BPF or not a cgroup2 directory)".into()
            }
            _ => String::new(),
        },
        source,
    };
    let cg = std::fs::File::open(dir).map_err(|e| err("open cgroup directory", e))?;
    let old = bpf::query(&cg.as_fd()).map_err(|e| err("BPF_PROG_QUERY", e))?;
    if !rules.is_empty() {
        let prog = bpf::load_device_program(&compile(rules)).map_err(|e| err("BPF_PROG_LOAD", e))?;
        bpf::attach(&cg.as_fd(), &prog.as_fd()).map_err(|e| err("BPF_PROG_ATTACH", e))?;
    }
    for id in old {
        match bpf::prog_fd_by_id(id) {
            Ok(fd) => bpf::detach(&cg.as_fd(), &fd.as_fd()).map_err(|e| err("BPF_PROG_DETACH", e))?,
            // Already gone (detached concurrently): nothing to replace.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err("BPF_PROG_GET_FD_BY_ID", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(allow: bool, t: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, acc: &str) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(t).access(acc);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// containerd's default list: deny all, then allow the usual nodes.
    fn containerd_default() -> Vec<LinuxDeviceCgroup> {
        vec![
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(5), "rwm"),
            rule(true, LinuxDeviceType::C, Some(136), None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(5), Some(0), "rw"),
        ]
    }

    #[test]
    fn last_match_wins_after_deny_all() {
        let r = parse_rules(&containerd_default()).unwrap();
        assert!(decide(&r, true, 1, 3, "rw"));
        assert!(decide(&r, true, 136, 7, "r"));
        assert!(!decide(&r, true, 1, 8, "r"));
        assert!(!decide(&r, false, 8, 0, "r"));
        assert!(decide(&r, true, 5, 0, "rw"));
        assert!(!decide(&r, true, 5, 0, "m"));
        let mut l = containerd_default();
        l.push(rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm"));
        let r = parse_rules(&l).unwrap();
        assert!(!decide(&r, true, 1, 3, "r"));
        assert!(decide(&r, true, 1, 5, "r"));
    }

    #[test]
    fn deny_all_plus_runc_defaults_allows_the_standard_devices_only() {
        let r = with_runc_defaults(parse_rules(&[rule(false, LinuxDeviceType::A, None, None, "rwm")]).unwrap());
        for (major, minor) in
            [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, 0), (136, 9), (10, 200)]
        {
            assert!(decide(&r, true, major, minor, "rw"), "c {major}:{minor} rw");
        }
        assert!(decide(&r, true, 4, 0, "m"), "mknod of any char device");
        assert!(decide(&r, false, 8, 0, "m"), "mknod of any block device");
        assert!(!decide(&r, false, 8, 0, "r"), "block device read");
        assert!(!decide(&r, true, 4, 0, "rw"), "tty0");
        // A spec rule that allows everything is not narrowed by the defaults.
        let all = with_runc_defaults(parse_rules(&[rule(true, LinuxDeviceType::A, None, None, "rwm")]).unwrap());
        assert!(decide(&all, false, 8, 0, "rw"));
        // Rules after the deny-all still win over the defaults: an explicit deny of /dev/null holds.
        let spec = [
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(5), "rwm"),
            rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        ];
        let r = with_runc_defaults(parse_rules(&spec).unwrap());
        assert!(!decide(&r, true, 1, 3, "r"), "the spec's deny of c 1:3");
        assert!(decide(&r, true, 1, 9, "r"), "urandom from the defaults");
        // Without any match-everything rule the defaults go first and change nothing.
        let r = with_runc_defaults(parse_rules(&[rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm")]).unwrap());
        assert!(!decide(&r, true, 1, 3, "r"));
        assert!(decide(&r, false, 8, 0, "r"));
    }

    #[test]
    fn without_deny_all_the_default_allows() {
        let r = parse_rules(&[rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm")]).unwrap();
        assert!(!decide(&r, true, 1, 3, "r"));
        assert!(decide(&r, true, 1, 5, "r"));
    }

    #[test]
    fn program_shape_and_jump_offsets() {
        let r = parse_rules(&[
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rw"),
        ])
        .unwrap();
        let p = compile(&r);
        // prologue 6 + block (type 1, access 3, major 1, minor 1, mov+exit 2 = 8) + default 2
        assert_eq!(p.len(), 16);
        assert_eq!(p[6], Insn::jne_k(2, DEV_CHAR, 7));
        assert_eq!(p[9], Insn::jne_x(1, 3, 4));
        assert_eq!(p[12], Insn::mov_k(0, 1));
        assert_eq!(p[14], Insn::mov_k(0, 0));
        assert_eq!(p[15], Insn::exit());
    }

    #[test]
    fn bad_access_letters_are_rejected() {
        let e = parse_rules(&[rule(true, LinuxDeviceType::C, Some(1), Some(3), "rx")]).unwrap_err();
        assert!(e.to_string().contains("devices.access"), "{e}");
    }
}
