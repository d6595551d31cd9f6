//! Fuzzes what configures the shim: its TOML config (a file, or containerd 1.7+'s config_body),
//! containerd's hosts.toml for a registry host, and the runtime options Any of CreateTaskRequest.
//! The first input byte picks the door; none may panic, and an accepted config must survive a
//! round trip through its own serializer.
#![no_main]

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use libfuzzer_sys::fuzz_target;
use shim::service::config::{runtime_options, Config};

fuzz_target!(|data: &[u8]| {
    let Some((&door, rest)) = data.split_first() else { return };
    match door % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            if let Ok(config) = Config::parse(text, "fuzz") {
                let _ = (config.fetch.deadline(), config.fetch.options());
                let again = toml::to_string(&config).expect("an accepted config serializes");
                assert_eq!(Config::parse(&again, "round trip").expect("re-parses"), config, "round trip changed it");
            }
        }
        1 => {
            // hosts.toml as containerd lays it out: <hosts_dir>/<host>/hosts.toml.
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::create_dir(dir.path().join("reg:5000")).expect("host dir");
            std::fs::write(dir.path().join("reg:5000/hosts.toml"), rest).expect("write hosts.toml");
            let registry: vfs::registry::Reference = "reg:5000/fuzz/image".parse().expect("a valid reference");
            let _ = vfs::registry::hosts::resolve(Some(dir.path()), &registry, vfs::registry::PlainHttp::Auto);
        }
        _ => {
            let any = Any { type_url: "type.googleapis.com/runtimeoptions.v1.Options".into(), value: rest.to_vec(), ..Default::default() };
            let _ = runtime_options(Some(&any));
        }
    }
});
