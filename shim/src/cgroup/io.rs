//! io: blockIO weight -> io.bfq.weight (raw, when BFQ is present) or io.weight (runc's conversion),
//! per-device weights likewise, throttle devices -> io.max lines (hard limits).

use std::path::Path;

use oci_spec::runtime::{LinuxResources, LinuxThrottleDevice};

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Io;

/// runc's ConvertBlkIOToIOWeightValue: blkio weight [10, 1000] onto io.weight [1, 10000].
pub(crate) fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

fn check_weight(field: &str, w: u16) -> Result<(), CgroupError> {
    if (10..=1000).contains(&w) {
        Ok(())
    } else {
        Err(CgroupError::invalid(field, format!("{w} is outside 10..=1000")))
    }
}

impl Controller for Io {
    fn plan(res: &LinuxResources, dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(b) = res.block_io() else {
            return Ok(vec![]);
        };
        let bfq = dir.join("io.bfq.weight").exists();
        let mut out = Vec::new();
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            check_weight("blockIO.weight", w)?;
            if bfq {
                out.push(Setting::priority("io.bfq.weight", w.to_string()));
            } else {
                out.push(Setting::priority("io.weight", blkio_to_io_weight(w).to_string()));
            }
        }
        for d in b.weight_device().iter().flatten() {
            let Some(w) = d.weight() else { continue };
            check_weight("blockIO.weightDevice.weight", w)?;
            let (file, v) = if bfq { ("io.bfq.weight", u64::from(w)) } else { ("io.weight", blkio_to_io_weight(w)) };
            out.push(Setting::priority(file, format!("{}:{} {v}", d.major(), d.minor())));
        }
        if b.leaf_weight().is_some() {
            log::debug!("blockIO.leafWeight does not exist in cgroup v2; ignored");
        }
        let groups: [(&str, &Option<Vec<LinuxThrottleDevice>>); 4] = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, devs) in groups {
            for d in devs.iter().flatten() {
                if d.major() < 0 || d.minor() < 0 {
                    return Err(CgroupError::invalid(
                        "blockIO.throttle",
                        format!("device {}:{} is not a valid major:minor", d.major(), d.minor()),
                    ));
                }
                let rate = if d.rate() == 0 { "max".to_string() } else { d.rate().to_string() };
                let line = format!("{}:{} {key}={rate}", d.major(), d.minor());
                let what = format!("io throttle {line}");
                if rate == "max" {
                    out.push(Setting::priority("io.max", line));
                } else {
                    out.push(Setting::limit("io.max", line, what));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder,
    };

    fn res(b: LinuxBlockIoBuilder) -> LinuxResources {
        LinuxResourcesBuilder::default().block_io(b.build().unwrap()).build().unwrap()
    }

    fn files(v: Vec<Setting>) -> Vec<(String, String)> {
        v.into_iter().map(|s| (s.file, s.value)).collect()
    }

    #[test]
    fn weight_uses_bfq_when_present_else_converted_io_weight() {
        let dir = tempfile::tempdir().unwrap();
        let wd = LinuxWeightDeviceBuilder::default().major(8i64).minor(0i64).weight(200u16).build().unwrap();
        let r = res(LinuxBlockIoBuilder::default().weight(500u16).weight_device(vec![wd]));
        assert_eq!(
            files(Io::plan(&r, dir.path()).unwrap()),
            vec![("io.weight".into(), "4950".into()), ("io.weight".into(), "8:0 1920".into())]
        );
        std::fs::write(dir.path().join("io.bfq.weight"), "default 100\n").unwrap();
        assert_eq!(
            files(Io::plan(&r, dir.path()).unwrap()),
            vec![("io.bfq.weight".into(), "500".into()), ("io.bfq.weight".into(), "8:0 200".into())]
        );
        assert!(Io::plan(&res(LinuxBlockIoBuilder::default().weight(5u16)), dir.path()).is_err());
    }

    #[test]
    fn throttles_become_io_max_lines() {
        let t = |rate| LinuxThrottleDeviceBuilder::default().major(254i64).minor(16i64).rate(rate).build().unwrap();
        let r = res(LinuxBlockIoBuilder::default()
            .throttle_read_bps_device(vec![t(1_048_576u64)])
            .throttle_write_iops_device(vec![t(100u64)]));
        assert_eq!(
            files(Io::plan(&r, Path::new("/x")).unwrap()),
            vec![("io.max".into(), "254:16 rbps=1048576".into()), ("io.max".into(), "254:16 wiops=100".into())]
        );
    }
}
