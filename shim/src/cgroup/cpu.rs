//! cpu: shares -> cpu.weight (runc's conversion), quota/period -> cpu.max, idle -> cpu.idle, burst -> cpu.max.burst.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::controller::{Controller, Setting};
use super::CgroupError;

pub(crate) struct Cpu;

/// runc's ConvertCPUSharesToCgroupV2Value: maps cgroup v1 shares [2, 262144] onto cgroup v2 weight [1, 10000].
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Controller for Cpu {
    fn plan(res: &LinuxResources, _dir: &Path) -> Result<Vec<Setting>, CgroupError> {
        let Some(c) = res.cpu() else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            out.push(Setting::priority("cpu.weight", shares_to_weight(shares).to_string()));
        }
        let quota = c.quota().unwrap_or(0);
        let period = c.period().unwrap_or(0);
        if quota != 0 || period != 0 {
            let mut v = if quota > 0 { quota.to_string() } else { "max".to_string() };
            if period != 0 {
                if !(1000..=1_000_000).contains(&period) {
                    return Err(CgroupError::invalid(
                        "cpu.period",
                        format!("{period} us is outside the kernel's range 1000..=1000000"),
                    ));
                }
                v.push_str(&format!(" {period}"));
            }
            if quota > 0 {
                let what = format!("cpu quota ({quota} us per {} us)", if period != 0 { period } else { 100_000 });
                out.push(Setting::limit("cpu.max", v, what));
            } else {
                out.push(Setting::priority("cpu.max", v));
            }
        }
        if let Some(burst) = c.burst() {
            out.push(Setting::if_present("cpu.max.burst", burst.to_string()));
        }
        if let Some(idle) = c.idle() {
            if idle != 0 && idle != 1 {
                return Err(CgroupError::invalid("cpu.idle", format!("{idle} must be 0 or 1")));
            }
            out.push(Setting::if_present("cpu.idle", idle.to_string()));
        }
        if c.realtime_runtime().unwrap_or(0) != 0 || c.realtime_period().unwrap_or(0) != 0 {
            return Err(CgroupError::invalid(
                "cpu.realtimeRuntime",
                "realtime scheduling limits do not exist in cgroup v2; remove realtimeRuntime/realtimePeriod",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};

    fn plan(b: LinuxCpuBuilder) -> Result<Vec<(String, String)>, CgroupError> {
        let r = LinuxResourcesBuilder::default().cpu(b.build().unwrap()).build().unwrap();
        Ok(Cpu::plan(&r, Path::new("/nonexistent"))?.into_iter().map(|s| (s.file, s.value)).collect())
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(plan(LinuxCpuBuilder::default().shares(1024u64)).unwrap(), vec![("cpu.weight".into(), "39".into())]);
    }

    #[test]
    fn quota_and_period_go_to_cpu_max() {
        let p = plan(LinuxCpuBuilder::default().quota(10_000i64).period(100_000u64)).unwrap();
        assert_eq!(p, vec![("cpu.max".into(), "10000 100000".into())]);
        let p = plan(LinuxCpuBuilder::default().quota(-1i64).period(50_000u64)).unwrap();
        assert_eq!(p, vec![("cpu.max".into(), "max 50000".into())]);
        let p = plan(LinuxCpuBuilder::default().quota(20_000i64)).unwrap();
        assert_eq!(p, vec![("cpu.max".into(), "20000".into())]);
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(plan(LinuxCpuBuilder::default().quota(1000i64).period(10u64)).is_err());
        let e = plan(LinuxCpuBuilder::default().realtime_runtime(5i64)).unwrap_err();
        assert!(e.to_string().contains("realtime"), "{e}");
    }
}
