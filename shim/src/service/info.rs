//! `containerd-shim-lazy-v2 -info`: containerd 2.x's runtime introspection (the introspection service's
//! PluginInfo for `io.containerd.runtime.v2.task`, `ctr plugins inspect-runtime`, and CRI before it uses
//! optional OCI features) runs `<shim> -info` with the runtime options (a protobuf Any, possibly empty) on
//! stdin and decodes stdout as a protobuf `containerd.types.RuntimeInfo`. Nothing else may be printed.
//!
//! The OCI features are what the launcher really implements, in the shape of `runc features`: listing an
//! option we do not support (such as `rro`) would make CRI ask for it.

use std::io::{Read, Write};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};

/// The runtime name containerd knows us by.
pub const RUNTIME_NAME: &str = "io.containerd.lazy.v2";
/// How containerd types the features document (JSON, as typeurl registers runtime-spec types).
pub const FEATURES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Mount options the launcher applies itself (flags and propagation; see `launcher::mounts`). Anything
/// else is handed to the filesystem as data, which is not what a client asking for the option means.
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// The features document (opencontainers runtime-spec features.md).
pub fn features() -> serde_json::Value {
    let mut caps: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
    caps.sort();
    let mut archs: Vec<&str> = vec![
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_RISCV64",
    ];
    archs.sort();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": archs,
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}},
        },
    })
}

/// RuntimeInfo for the given runtime options (echoed back as containerd's runc shim does).
pub fn runtime_info(options: Option<Any>) -> RuntimeInfo {
    RuntimeInfo {
        name: RUNTIME_NAME.into(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            revision: option_env!("LAZY_SHIM_REVISION").unwrap_or("unknown").into(),
            ..Default::default()
        }),
        options: options.into(),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.into(),
            value: serde_json::to_vec(&features()).expect("features serialize"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `-info` action: options on stdin (may be empty), RuntimeInfo on stdout.
pub fn run() -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let options = if input.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(&input).map_err(|e| anyhow::anyhow!("-info: runtime options on stdin: {e}"))?)
    };
    let bytes = runtime_info(options).write_to_bytes()?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_mount_option_is_applied_by_the_launcher_not_passed_as_data() {
        for o in MOUNT_OPTIONS {
            let parsed = crate::mount_options::parse_options(&[o.to_string()]);
            assert_eq!(parsed.data, "", "{o} would reach the filesystem as data");
        }
        // And an option we do not implement is indeed data (so it must stay unlisted).
        assert_eq!(crate::mount_options::parse_options(&["rro".to_string()]).data, "rro");
    }

    #[test]
    fn info_round_trips_and_names_the_runtime() {
        let opts =
            Any { type_url: "runtimeoptions.v1.Options".into(), value: vec![0x12, 1, b'x'], ..Default::default() };
        let bytes = runtime_info(Some(opts.clone())).write_to_bytes().unwrap();
        let back = RuntimeInfo::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.name, RUNTIME_NAME);
        assert_eq!(back.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(back.options.as_ref(), Some(&opts));
        let f: serde_json::Value = serde_json::from_slice(&back.features.value).unwrap();
        assert_eq!(f["linux"]["cgroup"]["v2"], true);
        assert!(!f["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "user"));
        assert!(f["linux"]["capabilities"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
        // Every listed architecture is one the seccomp loader accepts.
        for a in f["linux"]["seccomp"]["archs"].as_array().unwrap() {
            let a = a.as_str().unwrap();
            assert!(<libseccomp::ScmpArch as std::str::FromStr>::from_str(a).is_ok(), "{a}");
        }
    }
}
