//! Stats as io.containerd.cgroups.v2.Metrics (the message containerd-shim-protos ships as cgroups_v2::metrics),
//! read from cpu.stat, memory.*, pids.*, io.stat and hugetlb.* of the container's cgroup. Files of
//! controllers that are not enabled are simply absent: their sections stay empty.

use std::path::Path;

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

use super::fs::{self, flat_keyed, keyed_value, parse_max};
use super::CgroupError;

/// The type URL containerd's typeurl registry uses for this message (what the runc shim sends).
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The memory.events `oom_kill` counter; 0 when the memory controller is not enabled.
pub(crate) fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    Ok(fs::read_opt(&dir.join("memory.events"))?.and_then(|t| keyed_value(&t, "oom_kill")).unwrap_or(0))
}

fn read_num(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    Ok(fs::read_opt(&dir.join(file))?.and_then(|t| parse_max(&t)))
}

/// Reads every stats file into a Metrics message.
pub fn metrics(dir: &Path) -> Result<Metrics, CgroupError> {
    let mut m = Metrics::new();
    if let Some(t) = fs::read_opt(&dir.join("cpu.stat"))? {
        let mut c = CPUStat::new();
        for (k, v) in flat_keyed(&t) {
            match k {
                "usage_usec" => c.usage_usec = v,
                "user_usec" => c.user_usec = v,
                "system_usec" => c.system_usec = v,
                "nr_periods" => c.nr_periods = v,
                "nr_throttled" => c.nr_throttled = v,
                "throttled_usec" => c.throttled_usec = v,
                "nr_bursts" => c.nr_bursts = v,
                "burst_usec" => c.burst_usec = v,
                _ => {}
            }
        }
        m.cpu = MessageField::some(c);
    }
    if let Some(current) = read_num(dir, "pids.current")? {
        let mut p = PidsStat::new();
        p.current = current;
        // "max" is reported as 0 (no limit), as containerd's cgroups library does.
        p.limit = read_num(dir, "pids.max")?.filter(|v| *v != u64::MAX).unwrap_or(0);
        m.pids = MessageField::some(p);
    }
    if let Some(usage) = read_num(dir, "memory.current")? {
        let mut s = MemoryStat::new();
        s.usage = usage;
        s.usage_limit = read_num(dir, "memory.max")?.unwrap_or(u64::MAX);
        s.max_usage = read_num(dir, "memory.peak")?.unwrap_or(0);
        s.swap_usage = read_num(dir, "memory.swap.current")?.unwrap_or(0);
        s.swap_limit = read_num(dir, "memory.swap.max")?.unwrap_or(0);
        s.swap_max_usage = read_num(dir, "memory.swap.peak")?.unwrap_or(0);
        if let Some(t) = fs::read_opt(&dir.join("memory.stat"))? {
            fill_memory_stat(&mut s, &t);
        }
        m.memory = MessageField::some(s);
        if let Some(t) = fs::read_opt(&dir.join("memory.events"))? {
            let mut e = MemoryEvents::new();
            for (k, v) in flat_keyed(&t) {
                match k {
                    "low" => e.low = v,
                    "high" => e.high = v,
                    "max" => e.max = v,
                    "oom" => e.oom = v,
                    "oom_kill" => e.oom_kill = v,
                    "oom_group_kill" => e.oom_group_kill = v,
                    _ => {}
                }
            }
            m.memory_events = MessageField::some(e);
        }
    }
    if let Some(t) = fs::read_opt(&dir.join("io.stat"))? {
        let mut io = IOStat::new();
        io.usage = parse_io_stat(&t);
        m.io = MessageField::some(io);
    }
    m.hugetlb = hugetlb_stats(dir)?;
    Ok(m)
}

fn fill_memory_stat(s: &mut MemoryStat, text: &str) {
    for (k, v) in flat_keyed(text) {
        let f = match k {
            "anon" => &mut s.anon,
            "file" => &mut s.file,
            "kernel_stack" => &mut s.kernel_stack,
            "slab" => &mut s.slab,
            "sock" => &mut s.sock,
            "shmem" => &mut s.shmem,
            "file_mapped" => &mut s.file_mapped,
            "file_dirty" => &mut s.file_dirty,
            "file_writeback" => &mut s.file_writeback,
            "anon_thp" => &mut s.anon_thp,
            "inactive_anon" => &mut s.inactive_anon,
            "active_anon" => &mut s.active_anon,
            "inactive_file" => &mut s.inactive_file,
            "active_file" => &mut s.active_file,
            "unevictable" => &mut s.unevictable,
            "slab_reclaimable" => &mut s.slab_reclaimable,
            "slab_unreclaimable" => &mut s.slab_unreclaimable,
            "pgfault" => &mut s.pgfault,
            "pgmajfault" => &mut s.pgmajfault,
            "workingset_refault" | "workingset_refault_anon" => &mut s.workingset_refault,
            "workingset_activate" | "workingset_activate_anon" => &mut s.workingset_activate,
            "workingset_nodereclaim" => &mut s.workingset_nodereclaim,
            "pgrefill" => &mut s.pgrefill,
            "pgscan" => &mut s.pgscan,
            "pgsteal" => &mut s.pgsteal,
            "pgactivate" => &mut s.pgactivate,
            "pgdeactivate" => &mut s.pgdeactivate,
            "pglazyfree" => &mut s.pglazyfree,
            "pglazyfreed" => &mut s.pglazyfreed,
            "thp_fault_alloc" => &mut s.thp_fault_alloc,
            "thp_collapse_alloc" => &mut s.thp_collapse_alloc,
            _ => continue,
        };
        *f = f.saturating_add(v);
    }
}

/// io.stat lines: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0".
fn parse_io_stat(text: &str) -> Vec<IOEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let mut e = IOEntry::new();
        e.major = major;
        e.minor = minor;
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => e.rbytes = v,
                "wbytes" => e.wbytes = v,
                "rios" => e.rios = v,
                "wios" => e.wios = v,
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

fn hugetlb_stats(dir: &Path) -> Result<Vec<HugeTlbStat>, CgroupError> {
    let mut sizes: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(size) = name.strip_prefix("hugetlb.").and_then(|r| r.strip_suffix(".current")) {
                if !size.contains('.') {
                    sizes.push(size.to_string());
                }
            }
        }
    }
    sizes.sort();
    let mut out = Vec::new();
    for size in sizes {
        let mut h = HugeTlbStat::new();
        h.current = read_num(dir, &format!("hugetlb.{size}.current"))?.unwrap_or(0);
        h.max = read_num(dir, &format!("hugetlb.{size}.max"))?.unwrap_or(0);
        h.failcnt = fs::read_opt(&dir.join(format!("hugetlb.{size}.events")))?
            .and_then(|t| keyed_value(&t, "max"))
            .unwrap_or(0);
        h.pagesize = size;
        out.push(h);
    }
    Ok(out)
}

/// The Metrics message packed as containerd's Stats response expects it.
pub(crate) fn metrics_any(dir: &Path) -> Result<Any, CgroupError> {
    let m = metrics(dir)?;
    let mut any = Any::new();
    any.type_url = METRICS_TYPE_URL.to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| CgroupError::io("encode io.containerd.cgroups.v2.Metrics for", dir, std::io::Error::other(e)))?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stats_files_into_metrics() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| std::fs::write(d.path().join(f), t).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 77\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 1024\nfile 2048\npgfault 9\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("pids.current", "2\n");
        w("pids.max", "5\n");
        w("io.stat", "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n");
        w("hugetlb.2MB.current", "0\n");
        w("hugetlb.2MB.max", "4194304\n");
        let m = metrics(d.path()).unwrap();
        assert_eq!((m.cpu.usage_usec, m.cpu.nr_throttled, m.cpu.throttled_usec), (1500, 4, 77));
        assert_eq!((m.memory.usage, m.memory.usage_limit, m.memory.anon, m.memory.file), (4096, u64::MAX, 1024, 2048));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (2, 5));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes, m.io.usage[0].wios), (254, 100, 2));
        assert_eq!((m.hugetlb[0].pagesize.as_str(), m.hugetlb[0].max), ("2MB", 4194304));
        assert_eq!(oom_kills(d.path()).unwrap(), 1);
        let any = metrics_any(d.path()).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.memory.usage, 4096);
    }

    #[test]
    fn no_memory_controller_means_zero_oom_kills() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(d.path()).unwrap(), 0);
        let m = metrics(d.path()).unwrap();
        assert!(m.memory.is_none() && m.pids.is_none());
    }
}
