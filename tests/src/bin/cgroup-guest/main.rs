//! Runs INSIDE the pure cgroup v2 VM (tests/tests/cgroup_vm.rs boots it): every issue-4 enforcement check
//! through the shim's cgroup module, with workers that are this same binary re-executed, placed into the
//! cgroup (`Cgroup::add_pid`) while they wait on a start gate, i.e. before they do anything.
//!
//! The `launcher_*` checks do the same through `shim::launcher::create` with a busybox bundle.
//!
//! Prints one `CHECK <name> PASS|FAIL <detail>` line per check and exits with the number of failures.
//! Worker modes (`cgroup-guest worker <mode> ...`) read one line from stdin before starting.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use containerd_shim_protos::protobuf::Message;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use shim::cgroup::{Cgroup, CgroupPolicy};

mod launcher_checks;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- workers (run inside the cgroup)

fn gate() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn say(s: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Touches `mib` MiB, keeping it resident; one line of progress per 8 MiB.
fn allocate(keep: &mut Vec<Vec<u8>>, mib: usize) {
    for i in 0..mib {
        let mut v = vec![0u8; MIB];
        for p in (0..MIB).step_by(4096) {
            v[p] = 1;
        }
        keep.push(v);
        if (i + 1) % 8 == 0 {
            say(&format!("allocated {}", keep.len()));
        }
    }
}

fn fork_sleeper() -> std::io::Result<i32> {
    // SAFETY: the worker is single-threaded; the child only calls async-signal-safe pause/_exit.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        },
        pid => Ok(pid),
    }
}

/// Writes `mib` MiB with O_DIRECT (so the io controller sees the writes at once, not at writeback).
fn write_direct(dev: &str, mib: usize) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dev)?;
    let layout = std::alloc::Layout::from_size_align(64 * 1024, 4096).unwrap();
    // SAFETY: layout has a non-zero size; the buffer is freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null(), "allocation failed");
    // SAFETY: ptr points to layout.size() initialised (zeroed) bytes that nothing else aliases.
    let buf = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
    let mut result = Ok(());
    for _ in 0..mib * 16 {
        if let Err(e) = f.write_all(buf) {
            result = Err(e);
            break;
        }
    }
    // SAFETY: ptr was allocated above with this layout and is no longer used (buf is dead).
    unsafe { std::alloc::dealloc(ptr, layout) };
    result
}

fn worker(mode: &str, args: &[String]) -> ! {
    gate();
    match mode {
        "alloc" => {
            let mut keep = Vec::new();
            allocate(&mut keep, args[0].parse().unwrap());
            say("alloc done");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "alloc-steps" => {
            let mut keep = Vec::new();
            allocate(&mut keep, args[0].parse().unwrap());
            say("phase1 done");
            gate();
            allocate(&mut keep, args[1].parse().unwrap());
            say("phase2 done");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "fork-until-fail" => {
            let mut n = 0;
            loop {
                match fork_sleeper() {
                    Ok(_) => n += 1,
                    Err(e) => {
                        say(&format!("forked {n} then errno {}", e.raw_os_error().unwrap_or(0)));
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_secs(3600));
        }
        "fork" => {
            let n: usize = args[0].parse().unwrap();
            for _ in 0..n {
                fork_sleeper().expect("fork");
            }
            say(&format!("forked {n}"));
            std::thread::sleep(Duration::from_secs(3600));
        }
        "write-direct" => {
            let mib: usize = args[1].parse().unwrap();
            let t = Instant::now();
            match write_direct(&args[0], mib) {
                Ok(()) => say(&format!("write done {:.2}", t.elapsed().as_secs_f64())),
                Err(e) => say(&format!("write failed {e}")),
            }
        }
        "spin" => {
            say("spinning");
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "open" => {
            for p in args {
                match std::fs::OpenOptions::new().read(true).write(true).open(p) {
                    Ok(_) => say(&format!("{p} OK")),
                    Err(e) => say(&format!("{p} ERR {}", e.raw_os_error().unwrap_or(0))),
                }
            }
        }
        m => panic!("unknown worker mode {m}"),
    }
    std::process::exit(0)
}

// ---------------------------------------------------------------- the checks (run in the root cgroup)

/// A worker placed in a cgroup; killed and reaped on drop.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Worker {
    fn spawn(cg: &Cgroup, mode: &str, args: &[&str]) -> Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("worker")
            .arg(mode)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn worker")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker { child, stdin, lines };
        cg.add_pid(w.child.id() as i32).context("add_pid")?;
        w.open_gate()?;
        Ok(w)
    }

    fn open_gate(&mut self) -> Result<()> {
        let s = self.stdin.as_mut().ok_or_else(|| anyhow!("worker stdin closed"))?;
        s.write_all(b"go\n")?;
        s.flush()?;
        Ok(())
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn expect_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("no line starting with {prefix:?} within {} s", timeout.as_secs()),
            }
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("worker did not exit within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owns a test cgroup: kills what is left and removes it on drop.
struct CgGuard(Option<Cgroup>);

impl CgGuard {
    fn create(name: &str, res: LinuxResources) -> Result<CgGuard> {
        let linux =
            LinuxBuilder::default().cgroups_path(PathBuf::from(format!("/lazy-vm/{name}"))).resources(res).build()?;
        let cg = Cgroup::create(Some(&linux), "vm", name, &CgroupPolicy::default())?;
        Ok(CgGuard(Some(cg)))
    }

    fn cg(&self) -> &Cgroup {
        self.0.as_ref().unwrap()
    }
}

impl Drop for CgGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.thaw();
            let _ = cg.kill_all(libc::SIGKILL);
            reap_orphans();
            if let Err(e) = cg.delete() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// We are a subreaper: collect exited grandchildren (forked sleepers) so nothing lingers.
fn reap_orphans() {
    loop {
        // SAFETY: waitpid with a null status pointer and WNOHANG has no memory-safety preconditions.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

fn read(cg: &Cgroup, file: &str) -> Result<String> {
    let p = cg.path().join(file);
    Ok(std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?.trim().to_string())
}

fn keyed(cg: &Cgroup, file: &str, key: &str) -> Result<u64> {
    let text = read(cg, file)?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| anyhow!("{file} has no {key}: {text:?}"))
}

fn memory(limit: i64) -> LinuxResources {
    // swap = limit: memory.swap.max 0, so the limit cannot be dodged by swapping.
    LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(limit).swap(limit).build().unwrap())
        .build()
        .unwrap()
}

fn check_memory_oom() -> Result<String> {
    let g = CgGuard::create("oom", memory(32 * MIB as i64))?;
    ensure!(read(g.cg(), "memory.max")? == "33554432", "memory.max is {}", read(g.cg(), "memory.max")?);
    ensure!(g.cg().oom_kills()? == 0, "oom_kill already non-zero");
    let mut w = Worker::spawn(g.cg(), "alloc", &["100"])?;
    let status = w.wait_exit(Duration::from_secs(60))?;
    use std::os::unix::process::ExitStatusExt;
    ensure!(status.signal() == Some(libc::SIGKILL), "worker allocating 100 MiB ended with {status}, not SIGKILL");
    let kills = g.cg().oom_kills()?;
    ensure!(kills == 1, "oom_kills() = {kills}, want 1");
    ensure!(g.cg().events_path().is_file(), "events_path {} missing", g.cg().events_path().display());
    let mut last = String::new();
    while let Ok(l) = w.lines.try_recv() {
        last = l;
    }
    Ok(format!("memory.max=32M: 100 MiB allocation SIGKILLed (last progress {last:?}), oom_kills()=1"))
}

fn check_pids() -> Result<String> {
    let res = LinuxResourcesBuilder::default().pids(LinuxPidsBuilder::default().limit(5i64).build()?).build()?;
    let g = CgGuard::create("pids", res)?;
    ensure!(read(g.cg(), "pids.max")? == "5");
    let w = Worker::spawn(g.cg(), "fork-until-fail", &[])?;
    let line = w.expect_line("forked", Duration::from_secs(30))?;
    let procs = g.cg().pids()?.len();
    ensure!(
        line == format!("forked 4 then errno {}", libc::EAGAIN),
        "{line:?}: want 4 successful forks (5 processes) then EAGAIN"
    );
    ensure!(procs == 5, "{procs} processes in the cgroup, want 5");
    Ok(format!("pids.max=5: 5 processes ran, the 6th fork failed with EAGAIN ({line})"))
}

fn cpu_usage(cg: &Cgroup) -> Result<u64> {
    keyed(cg, "cpu.stat", "usage_usec")
}

fn check_cpu_freeze() -> Result<String> {
    let res = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().quota(10_000i64).period(100_000u64).build()?)
        .build()?;
    let g = CgGuard::create("cpu", res)?;
    let cg = g.cg();
    ensure!(read(cg, "cpu.max")? == "10000 100000");
    let w = Worker::spawn(cg, "spin", &[])?;
    w.expect_line("spinning", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    let (u0, t0) = (cpu_usage(cg)?, Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (u1, t1) = (cpu_usage(cg)?, Instant::now());
    let frac = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    let throttled = keyed(cg, "cpu.stat", "nr_throttled")?;
    ensure!(throttled > 0, "nr_throttled = 0 with cpu.max 10%");
    ensure!(frac < 0.2 && frac > 0.01, "busy loop used {:.1}% of a CPU under cpu.max 10%", frac * 100.0);
    let cpu_detail = format!("cpu.max 10%: busy loop at {:.1}% of a CPU, nr_throttled={throttled}", frac * 100.0);

    // Pause / resume on the same spinning worker.
    cg.freeze()?;
    ensure!(keyed(cg, "cgroup.events", "frozen")? == 1, "cgroup.events frozen != 1 after freeze");
    // The kernel counts a task as frozen just before it schedules out, so the last stretch of its run is
    // accounted after `frozen 1` shows (milliseconds under TCG): measure from a moment later.
    std::thread::sleep(Duration::from_millis(200));
    let f0 = cpu_usage(cg)?;
    std::thread::sleep(Duration::from_secs(1));
    let f1 = cpu_usage(cg)?;
    ensure!(f1 - f0 < 1000, "frozen worker still used {} us of CPU in 1 s", f1 - f0);
    cg.thaw()?;
    ensure!(keyed(cg, "cgroup.events", "frozen")? == 0, "cgroup.events frozen != 0 after thaw");
    std::thread::sleep(Duration::from_secs(1));
    let f2 = cpu_usage(cg)?;
    ensure!(f2 > f1, "thawed worker did not run");
    drop(w);
    Ok(format!("{cpu_detail}; freeze: frozen 1, {} us used while frozen; thaw: frozen 0, ran again", f1 - f0))
}

fn check_update_and_stats() -> Result<String> {
    let g = CgGuard::create("update", memory(32 * MIB as i64))?;
    let cg = g.cg();
    let mut w = Worker::spawn(cg, "alloc-steps", &["24", "40"])?;
    w.expect_line("phase1 done", Duration::from_secs(60))?;
    cg.update(&memory(128 * MIB as i64))?;
    ensure!(read(cg, "memory.max")? == "134217728", "memory.max after update: {}", read(cg, "memory.max")?);
    w.open_gate()?;
    w.expect_line("phase2 done", Duration::from_secs(60))
        .context("the worker near the old 32M limit could not allocate 40 MiB more after update to 128M")?;
    ensure!(w.child.try_wait()?.is_none(), "worker died after the update");
    ensure!(cg.oom_kills()? == 0, "an OOM kill happened");
    let any = cg.stats()?;
    ensure!(any.type_url == "io.containerd.cgroups.v2.Metrics", "type_url {}", any.type_url);
    let m = Metrics::parse_from_bytes(&any.value)?;
    ensure!(m.memory.usage > 60 * MIB as u64, "stats memory.usage {} < 60 MiB", m.memory.usage);
    ensure!(m.memory.usage_limit == 128 * MIB as u64, "stats memory.usage_limit {}", m.memory.usage_limit);
    ensure!(m.memory.anon > 0, "stats memory.anon is 0");
    ensure!(m.cpu.usage_usec > 0, "stats cpu.usage_usec is 0");
    ensure!(m.pids.current >= 1, "stats pids.current is 0");
    Ok(format!(
        "update 32M->128M in place: worker at 24 MiB went on to 64 MiB, alive, no OOM; stats: memory.usage={} anon={} cpu.usage_usec={} pids.current={}",
        m.memory.usage, m.memory.anon, m.cpu.usage_usec, m.pids.current
    ))
}

fn check_kill_all_and_delete() -> Result<String> {
    let mut g = CgGuard::create("kill", LinuxResourcesBuilder::default().build()?)?;
    let mut w = Worker::spawn(g.cg(), "fork", &["3"])?;
    w.expect_line("forked 3", Duration::from_secs(30))?;
    let before = g.cg().pids()?.len();
    ensure!(before == 4, "{before} processes before kill, want 4");
    g.cg().kill_all(libc::SIGKILL)?;
    let after = g.cg().pids()?;
    ensure!(after.is_empty(), "processes left after kill_all: {after:?}");
    let st = w.wait_exit(Duration::from_secs(10))?;
    reap_orphans();
    let cg = g.0.take().unwrap();
    let path = cg.path().to_path_buf();
    cg.delete()?;
    ensure!(!path.exists(), "{} still exists after delete", path.display());
    Ok(format!("kill_all: 4 processes -> 0 (worker {st}); delete removed {}", path.display()))
}

fn device_rules(allow_null: bool) -> Vec<LinuxDeviceCgroup> {
    let r = |allow: bool, t: Option<LinuxDeviceType>, maj: Option<i64>, min: Option<i64>, acc: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(acc);
        if let Some(t) = t {
            b = b.typ(t);
        }
        if let Some(m) = maj {
            b = b.major(m);
        }
        if let Some(m) = min {
            b = b.minor(m);
        }
        b.build().unwrap()
    };
    let c = Some(LinuxDeviceType::C);
    let mut v = vec![
        r(false, None, None, None, "rwm"),
        r(true, c, Some(1), Some(5), "rwm"),
        r(true, c, Some(1), Some(3), "rwm"),
    ];
    if !allow_null {
        v.push(r(false, c, Some(1), Some(3), "rwm"));
    }
    v
}

fn open_results(cg: &Cgroup, paths: &[&str]) -> Result<Vec<String>> {
    let mut w = Worker::spawn(cg, "open", paths)?;
    let mut out = Vec::new();
    for p in paths {
        out.push(w.expect_line(p, Duration::from_secs(30))?);
    }
    w.wait_exit(Duration::from_secs(10))?;
    Ok(out)
}

fn check_devices() -> Result<String> {
    let null = "/tmp/lazy-null";
    let zero = "/tmp/lazy-zero";
    for (p, minor) in [(null, 3), (zero, 5)] {
        let _ = std::fs::remove_file(p);
        let c = std::ffi::CString::new(p)?;
        // SAFETY: c is a valid NUL-terminated path; mknod has no other preconditions.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) };
        ensure!(r == 0, "mknod {p}: {}", std::io::Error::last_os_error());
    }
    let res = LinuxResourcesBuilder::default().devices(device_rules(false)).build()?;
    let g = CgGuard::create("devices", res)?;
    let got = open_results(g.cg(), &[null, zero])?;
    let want = [format!("{null} ERR {}", libc::EPERM), format!("{zero} OK")];
    ensure!(got == want, "deny c 1:3: got {got:?}, want {want:?}");
    // Update replaces the program (no stacking): now c 1:3 is allowed.
    g.cg().update(&LinuxResourcesBuilder::default().devices(device_rules(true)).build()?)?;
    let dir = std::fs::File::open(g.cg().path())?;
    let progs = shim::cgroup::devices::bpf::query(&dir)?;
    ensure!(progs.len() == 1, "{} device programs attached after update, want 1", progs.len());
    let got2 = open_results(g.cg(), &[null, zero])?;
    ensure!(got2.iter().all(|l| l.ends_with(" OK")), "after allowing c 1:3: {got2:?}");
    for p in [null, zero] {
        let _ = std::fs::remove_file(p);
    }
    Ok(format!("{got:?}; after update allowing c 1:3: {got2:?}, 1 program attached"))
}

/// One enforcement check: Ok(what was observed) or the reason it failed.
type Check = fn() -> Result<String>;

fn check_io_max() -> Result<String> {
    let devno = std::fs::read_to_string("/sys/block/vda/dev")
        .context("no /dev/vda: the VM was started without its scratch disk (VmConfig::disk_mb)")?;
    let (major, minor) = devno.trim().split_once(':').ok_or_else(|| anyhow!("bad dev {devno:?}"))?;
    let (major, minor): (i64, i64) = (major.parse()?, minor.parse()?);
    let res = LinuxResourcesBuilder::default()
        .block_io(
            oci_spec::runtime::LinuxBlockIoBuilder::default()
                .throttle_write_bps_device(vec![oci_spec::runtime::LinuxThrottleDeviceBuilder::default()
                    .major(major)
                    .minor(minor)
                    .rate(1_048_576u64)
                    .build()?])
                .build()?,
        )
        .build()?;
    let g = CgGuard::create("io", res)?;
    let io_max = read(g.cg(), "io.max")?;
    ensure!(io_max.contains(&format!("{major}:{minor} rbps=max wbps=1048576")), "io.max is {io_max:?}");
    let w = Worker::spawn(g.cg(), "write-direct", &["/dev/vda", "3"])?;
    let line = w.expect_line("write", Duration::from_secs(60))?;
    let secs: f64 = line.strip_prefix("write done ").ok_or_else(|| anyhow!("worker: {line}"))?.parse()?;
    let rate = 3.0 / secs;
    ensure!(secs >= 2.0, "3 MiB written in {secs:.2} s ({rate:.2} MiB/s) under io.max wbps=1 MiB/s");
    let m = Metrics::parse_from_bytes(&g.cg().stats()?.value)?;
    let wbytes: u64 =
        m.io.usage.iter().filter(|e| e.major == major as u64 && e.minor == minor as u64).map(|e| e.wbytes).sum();
    ensure!(wbytes >= 3 << 20, "stats io wbytes for {major}:{minor} = {wbytes}, want >= 3 MiB");
    Ok(format!("io.max wbps=1MiB/s on /dev/vda ({major}:{minor}): 3 MiB O_DIRECT in {secs:.2} s = {rate:.2} MiB/s; stats io wbytes={wbytes}"))
}

fn run_checks() -> i32 {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) has no memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let root = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    println!("guest kernel cgroup2 controllers: {}", controllers.trim());
    let checks: [(&str, Check); 9] = [
        ("memory_oom", check_memory_oom),
        ("pids_limit", check_pids),
        ("cpu_quota_and_freeze", check_cpu_freeze),
        ("update_and_stats", check_update_and_stats),
        ("kill_all_and_delete", check_kill_all_and_delete),
        ("devices", check_devices),
        ("io_max", check_io_max),
        ("launcher_memory_oom", launcher_checks::check_launcher_oom),
        ("launcher_devices", launcher_checks::check_launcher_devices),
    ];
    let mut failures = 0;
    for (name, f) in checks {
        let t = Instant::now();
        match f() {
            Ok(detail) => println!("CHECK {name} PASS ({:.1} s) {detail}", t.elapsed().as_secs_f64()),
            Err(e) => {
                failures += 1;
                println!("CHECK {name} FAIL ({:.1} s) {e:#}", t.elapsed().as_secs_f64());
            }
        }
        reap_orphans();
    }
    let _ = std::fs::remove_dir(root.join("lazy-vm"));
    failures
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        worker(&args[2], &args[3..]);
    }
    std::process::exit(run_checks());
}
