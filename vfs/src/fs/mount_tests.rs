//! Root-only: mounts the fixture through the kernel and checks what a user sees (stat, readdir,
//! read, readlink, xattrs, statfs, EROFS), then stacks overlayfs on it the way a container runtime
//! does. Skips (saying why) without root or /dev/fuse; with CI=true a missing prerequisite fails.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mount::{mount, read_stats, MountOptions};
use super::prefetch::PrefetchMode;
use super::testutil::{fixture, single_file, CAP_NET_BIND_SERVICE, DATA, MTIME, MTIME_NSEC, SH};
use crate::stats::Stats;

fn prerequisites_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".to_string());
    }
    None
}

/// True if the test must be skipped; panics instead under CI=true.
fn skip(test: &str) -> bool {
    prerequisites_missing().is_some_and(|why| skipping(test, &why))
}

/// Says why `test` skips (true), or panics under CI=true, where nothing may skip.
fn skipping(test: &str, why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisite missing under CI: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    true
}

fn mounted_at(path: &Path) -> bool {
    crate::mountinfo::is_mount_point(path)
}

fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings; `buf` is writable for `buf.len()` bytes.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

fn listxattr(path: &Path) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated string; `buf` is writable for `buf.len()` bytes.
    let len = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "listxattr {}: {}", path.display(), std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}

/// Unmounts an overlay even when the test fails half-way.
struct OverlayGuard(PathBuf);

impl OverlayGuard {
    /// An overlay of `lower` with its upper, work and merged dirs made under `dir`, as a
    /// container's rootfs is; returns it with the upper and merged dirs.
    fn mount(lower: &Path, dir: &Path) -> (OverlayGuard, PathBuf, PathBuf) {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        (OverlayGuard(merged.clone()), upper, merged)
    }
}

impl Drop for OverlayGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Turns on the fuse module's io_uring transport (a kernel without it: the test is skipped, or
/// fails under CI=true).
fn fuse_io_uring_on(test: &str) -> bool {
    use super::uring::KNOB;
    let why = match std::fs::read_to_string(KNOB) {
        Ok(v) if v.trim() == "Y" => return true,
        Ok(_) => match std::fs::write(KNOB, "Y") {
            Ok(()) => return true,
            Err(e) => format!("cannot turn on {KNOB}: {e}"),
        },
        Err(e) => format!("{KNOB}: {e} (a kernel without CONFIG_FUSE_IO_URING)"),
    };
    !skipping(test, &why)
}

#[test]
fn fuse_mount_serves_the_index_and_stacks_under_overlay() {
    if skip("fuse_mount_serves_the_index_and_stacks_under_overlay") {
        return;
    }
    serves_the_index_and_stacks_under_overlay(false);
}

#[test]
fn fuse_mount_over_io_uring_serves_the_index_and_stacks_under_overlay() {
    let test = "fuse_mount_over_io_uring_serves_the_index_and_stacks_under_overlay";
    if skip(test) || !fuse_io_uring_on(test) {
        return;
    }
    serves_the_index_and_stacks_under_overlay(true);
}

#[test]
fn a_refused_io_uring_registration_leaves_the_mount_on_dev_fuse() {
    let test = "a_refused_io_uring_registration_leaves_the_mount_on_dev_fuse";
    if skip(test) || !fuse_io_uring_on(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (index, src) = fixture();
    // Payload buffers smaller than the kernel's max_payload_sz: every REGISTER is refused (EINVAL)
    // after init granted io_uring, when the kernel already holds new requests for the rings.
    super::uring::PAYLOAD_SIZE.set(Some(4096));
    let opts = MountOptions { prefetch: PrefetchMode::None, ..MountOptions::default() };
    let mounted = mount(index, src, Arc::new(Stats::default()), tmp.path(), opts);
    super::uring::PAYLOAD_SIZE.set(None);
    let mounted = mounted.unwrap();
    assert!(!mounted.uses_io_uring());
    assert_eq!(std::fs::read(tmp.path().join("data")).unwrap(), DATA, "served through /dev/fuse");
    assert_eq!(read_stats(tmp.path()).unwrap().uring_requests, 0);
    mounted.unmount().unwrap();
    assert!(!mounted_at(tmp.path()));
}

/// What a user sees through the mount, served over io_uring or /dev/fuse.
fn serves_the_index_and_stacks_under_overlay(io_uring: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("lower");
    std::fs::create_dir(&mnt).unwrap();
    let (index, src) = fixture();
    let stats = Arc::new(Stats::default());
    let record = tmp.path().join("record.txt");
    let opts = MountOptions {
        prefetch: PrefetchMode::None,
        record: Some(record.clone()),
        io_uring,
        ..MountOptions::default()
    };
    let mounted = mount(index, src.clone(), stats, &mnt, opts).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    assert!(mounted_at(&mnt));
    assert_eq!(mounted.uses_io_uring(), io_uring);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == mnt.to_str()).unwrap();
    assert!(line.starts_with(&format!("lazy {} fuse.lazy ro,", mnt.display())), "{line}");
    assert!(line.contains("default_permissions") && line.contains("allow_other"), "{line}");

    // stat: types, modes, owners, times with nanoseconds, hardlinks, devices.
    let data = std::fs::symlink_metadata(mnt.join("data")).unwrap();
    let hard = std::fs::symlink_metadata(mnt.join("hard")).unwrap();
    assert_eq!(data.ino(), hard.ino());
    assert_eq!(data.nlink(), 2);
    assert_eq!((data.mode(), data.size()), (0o100644, DATA.len() as u64));
    assert_eq!((data.mtime(), data.mtime_nsec()), (MTIME, MTIME_NSEC as i64));
    assert_eq!((data.atime(), data.ctime()), (MTIME, MTIME));
    let sh = std::fs::symlink_metadata(mnt.join("bin/sh")).unwrap();
    assert_eq!(sh.mode(), 0o104755);
    let secret = std::fs::symlink_metadata(mnt.join("secret")).unwrap();
    assert_eq!((secret.uid(), secret.gid(), secret.mode() & 0o7777), (1000, 1000, 0o600));
    let null = std::fs::symlink_metadata(mnt.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let sda = std::fs::symlink_metadata(mnt.join("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), libc::makedev(8, 0));
    assert!(std::fs::symlink_metadata(mnt.join("fifo")).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(mnt.join("sock")).unwrap().file_type().is_socket());
    assert_eq!(std::fs::metadata(&mnt).unwrap().ino(), 1);

    // readdir, readlink.
    let mut names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["abs", "bin", "data", "dev", "empty", "fifo", "hard", "link", "secret", "sock"]);
    assert_eq!(std::fs::read_link(mnt.join("link")).unwrap(), Path::new("data"));
    assert_eq!(std::fs::read_link(mnt.join("abs")).unwrap(), Path::new("/bin/sh"));
    // Missing names are ENOENT, also the second time (answered from the kernel's negative entry).
    for _ in 0..2 {
        let err = std::fs::symlink_metadata(mnt.join("bin/missing")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
    assert!(src.total_calls() == 0, "metadata through the kernel touched the source");

    // Contents.
    assert_eq!(std::fs::read(mnt.join("data")).unwrap(), DATA);
    assert_eq!(std::fs::read(mnt.join("link")).unwrap(), DATA);
    assert_eq!(std::fs::read(mnt.join("bin/sh")).unwrap(), SH);
    assert_eq!(std::fs::read(mnt.join("empty")).unwrap(), b"");

    // xattrs: the index's are listed and readable; the counters come from the root's stats ioctl.
    assert_eq!(getxattr(&mnt.join("data"), "user.color").unwrap(), b"blue");
    assert_eq!(getxattr(&mnt.join("data"), "security.capability").unwrap(), CAP_NET_BIND_SERVICE);
    assert_eq!(listxattr(&mnt.join("data")), b"security.capability\0user.color\0");
    assert_eq!(getxattr(&mnt.join("data"), "user.nope").unwrap_err().raw_os_error(), Some(libc::ENODATA));
    assert!(listxattr(&mnt).is_empty());
    let snap = read_stats(&mnt).unwrap();
    assert_eq!(snap.bytes_served, (DATA.len() + SH.len()) as u64);
    // Every request so far (this ioctl included) came through the rings, or none did.
    assert_eq!(snap.uring_requests > 20, io_uring, "{} requests over io_uring", snap.uring_requests);
    assert_eq!(snap.image_bytes, (DATA.len() + SH.len() + 10) as u64);
    let not_lazy = read_stats(tmp.path()).unwrap_err().to_string();
    assert!(not_lazy.contains("not a lazy filesystem mount"), "{not_lazy}");

    // Read-only.
    let err = std::fs::File::create(mnt.join("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::OpenOptions::new().append(true).open(mnt.join("data")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // close() and fsync() succeed (the kernel turns our ENOSYS into no-ops).
    let f = std::fs::File::open(mnt.join("bin/sh")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();

    // statfs.
    let vfs = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert_eq!((vfs.block_size(), vfs.files(), vfs.name_max()), (4096, 13, 255));
    assert!(vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));

    // Overlay on top: reads come from below, writes and copy-up go to the upper layer.
    let (overlay, upper, merged) = OverlayGuard::mount(&mnt, tmp.path());
    assert_eq!(std::fs::read(merged.join("bin/sh")).unwrap(), SH);
    std::fs::write(merged.join("new"), b"new file").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(merged.join("data")).unwrap();
    std::io::Write::write_all(&mut f, b"+more").unwrap();
    drop(f);
    assert_eq!(std::fs::read(merged.join("data")).unwrap(), [DATA, b"+more"].concat());
    assert_eq!(std::fs::read(upper.join("data")).unwrap(), [DATA, b"+more"].concat(), "copied up");
    assert_eq!(std::fs::read(mnt.join("data")).unwrap(), DATA, "lower layer unchanged");
    std::fs::remove_file(merged.join("secret")).unwrap();
    assert!(!merged.join("secret").exists());
    assert!(mnt.join("secret").exists());
    drop(overlay);
    assert!(!mounted_at(&merged));

    // Record: each regular file once, in first-read order.
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "/data\n/bin/sh\n/empty\n");

    mounted.unmount().unwrap();
    assert!(!mounted_at(&mnt));
}

#[test]
fn an_image_without_xattrs_has_none_for_the_kernel_and_still_answers_stats() {
    if skip("an_image_without_xattrs_has_none_for_the_kernel_and_still_answers_stats") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (index, src) = single_file(b"no xattrs here", 4096);
    let mnt = tmp.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = mount(index, src, Arc::new(Stats::default()), &mnt, MountOptions::default()).unwrap();
    // What getfattr in a container shows for a file of such an image: no xattrs, nothing to get.
    for _ in 0..2 {
        let e = getxattr(&mnt.join("big"), "trusted.overlay.metacopy").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
    assert!(listxattr(&mnt.join("big")).is_empty());

    // An overlay above it (as a container's rootfs): lookups, reads, and a copy-up on write.
    let (overlay, upper, merged) = OverlayGuard::mount(&mnt, tmp.path());
    assert_eq!(std::fs::read(merged.join("big")).unwrap(), b"no xattrs here");
    let mut f = std::fs::OpenOptions::new().append(true).open(merged.join("big")).unwrap();
    std::io::Write::write_all(&mut f, b", written").unwrap();
    drop(f);
    assert_eq!(std::fs::read(upper.join("big")).unwrap(), b"no xattrs here, written", "copied up");
    drop(overlay);

    // Served once: the copy-up read the file from the page cache.
    assert_eq!(read_stats(&mnt).unwrap().bytes_served, b"no xattrs here".len() as u64);
    mounted.unmount().unwrap();
}

#[test]
fn busy_mount_is_detached_and_open_files_keep_working() {
    if skip("busy_mount_is_detached_and_open_files_keep_working") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (index, src) = fixture();
    let mounted = mount(index, src, Arc::new(Stats::default()), tmp.path(), MountOptions::default()).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    let mut open = std::fs::File::open(mnt.join("data")).unwrap();
    drop(mounted); // Drop unmounts: busy, so detached.
    assert!(!mounted_at(&mnt));
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut open, &mut buf).unwrap();
    assert_eq!(buf, DATA);
}

#[test]
fn sequential_reads_reach_the_source_in_large_requests() {
    if skip("sequential_reads_reach_the_source_in_large_requests") {
        return;
    }
    const MIB: usize = 1 << 20;
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    let (index, src) = single_file(&data, MIB as u32);
    let tmp = tempfile::tempdir().unwrap();
    let mounted = mount(index, src.clone(), Arc::new(Stats::default()), tmp.path(), MountOptions::default()).unwrap();
    let got = std::fs::read(mounted.mountpoint().join("big")).unwrap();
    assert!(got == data, "8 MiB file read back differs");
    let calls = src.calls.lock().len();
    // 128 KiB requests (the kernel's default readahead) would make 64 calls; we ask for 1 MiB+.
    assert!(calls <= 10, "{calls} source calls for 8 MiB: readahead/max_pages not in effect");
    mounted.unmount().unwrap();
}

#[test]
fn a_read_waiting_on_the_network_does_not_block_others() {
    if skip("a_read_waiting_on_the_network_does_not_block_others") {
        return;
    }
    let (index, src) = fixture();
    let Some(crate::index::Kind::File { chunks, .. }) = index.inode(3).map(|i| i.kind.clone()) else { panic!() };
    src.held.lock().insert(chunks[0].digest);
    let tmp = tempfile::tempdir().unwrap();
    let opts = MountOptions { prefetch: PrefetchMode::None, ..MountOptions::default() };
    let mounted = mount(index, src.clone(), Arc::new(Stats::default()), tmp.path(), opts).unwrap();
    let mnt = mounted.mountpoint().to_path_buf();
    // Releases the held chunk even if an assertion below fails, so the reader thread and unmount finish.
    struct Release<'a>(&'a super::testutil::FakeSource, crate::digest::Digest);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.release(&self.1);
        }
    }
    let release = Release(&src, chunks[0].digest);
    let slow = {
        let path = mnt.join("data");
        std::thread::spawn(move || std::fs::read(path).unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!slow.is_finished(), "the held read should be waiting");
    // Other requests are served meanwhile by the other request threads.
    let (tx, rx) = std::sync::mpsc::channel();
    let other = mnt.clone();
    std::thread::spawn(move || {
        let _ = tx.send((std::fs::read(other.join("bin/sh")).ok(), std::fs::read_dir(&other).map(|d| d.count()).ok()));
    });
    let (sh, entries) =
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("other reads blocked behind a slow one");
    assert_eq!(sh.as_deref(), Some(SH));
    assert_eq!(entries, Some(10));
    drop(release);
    assert_eq!(slow.join().unwrap(), DATA);
    mounted.unmount().unwrap();
}

#[test]
fn reopened_files_are_served_from_the_page_cache() {
    if skip("reopened_files_are_served_from_the_page_cache") {
        return;
    }
    let (index, src) = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let opts = MountOptions { prefetch: PrefetchMode::None, ..MountOptions::default() };
    let mounted = mount(index, src.clone(), Arc::new(Stats::default()), tmp.path(), opts).unwrap();
    let data = mounted.mountpoint().join("data");
    assert_eq!(std::fs::read(&data).unwrap(), DATA);
    let calls = src.calls.lock().len();
    assert!(calls > 0);
    for _ in 0..3 {
        assert_eq!(std::fs::read(&data).unwrap(), DATA);
    }
    assert_eq!(src.calls.lock().len(), calls, "a reopen dropped the page cache (FOPEN_KEEP_CACHE missing?)");
    mounted.unmount().unwrap();
}

/// What a start asks of the metadata: a file's attributes, a name that is not there (interpreters
/// probe), a symlink, a directory listing.
fn a_start(root: &Path) {
    assert_eq!(std::fs::metadata(root.join("bin/sh")).unwrap().len(), SH.len() as u64);
    let missing = std::fs::symlink_metadata(root.join("bin/python3")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), Path::new("data"));
    let mut names: Vec<_> = std::fs::read_dir(root.join("dev")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["null", "sda"]);
}

fn wait_for_replay(mounted: &super::Mounted) -> super::startlog::Replayed {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(r) = mounted.start_log_replayed() {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "the start log replay did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_next_mount_of_an_image_answers_its_start_from_the_kernel_caches() {
    if skip("the_next_mount_of_an_image_answers_its_start_from_the_kernel_caches") {
        return;
    }
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("starts").join("image");
    let opts =
        || MountOptions { prefetch: PrefetchMode::None, start_log: Some(log.clone()), ..MountOptions::default() };
    let mnt = tmp.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let (index, src) = fixture();

    let first = mount(index.clone(), src.clone(), Arc::new(Stats::default()), &mnt, opts()).unwrap();
    assert_eq!(wait_for_replay(&first), Default::default(), "no log yet: nothing to replay");
    a_start(&mnt);
    first.unmount().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in ["l /bin", "l /bin/sh", "l /bin/python3", "s /link", "d /dev"] {
        assert!(text.lines().any(|l| l == line), "{line:?} is not in the start log:\n{text}");
    }

    // The next mount replays the log right away; the same start through an overlay (a
    // container's rootfs) then gets every answer from the kernel: no lookup reaches the filesystem.
    let stats = Arc::new(Stats::default());
    let second = mount(index, src, stats.clone(), &mnt, opts()).unwrap();
    let replayed = wait_for_replay(&second);
    assert!(replayed.lookups >= 4 && replayed.links == 1 && replayed.dirs == 1, "{replayed:?}");
    assert_eq!(read_stats(second.mountpoint()).unwrap().start_log_replayed, replayed.lookups + 2);
    let lookups = stats.lookups.load(Relaxed);
    assert!(lookups >= 4, "the replay's own lookups: {lookups}");
    let ovl = tmp.path().join("ovl");
    std::fs::create_dir(&ovl).unwrap();
    let (overlay, _upper, merged) = OverlayGuard::mount(second.mountpoint(), &ovl);
    a_start(&merged);
    assert_eq!(stats.lookups.load(Relaxed), lookups, "a lookup reached the filesystem after the replay");
    drop(overlay);
    second.unmount().unwrap();
    assert!(!mounted_at(&mnt));
}

#[test]
fn a_start_log_line_that_could_leave_the_image_is_skipped() {
    if skip("a_start_log_line_that_could_leave_the_image_is_skipped") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    // `abs` is a symlink to /bin/sh: resolving through it would leave the mount.
    std::fs::write(&log, "l /abs/etc/passwd\nd /link\nnonsense\n\nl /../../etc/passwd\nl /bin/sh\n").unwrap();
    let mnt = tmp.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let (index, src) = fixture();
    let opts = MountOptions { prefetch: PrefetchMode::None, start_log: Some(log.clone()), ..MountOptions::default() };
    let mounted = mount(index, src, Arc::new(Stats::default()), &mnt, opts).unwrap();
    let r = wait_for_replay(&mounted);
    assert_eq!((r.lookups, r.links, r.dirs, r.skipped), (1, 0, 0, 4), "{r:?}");
    assert_eq!(std::fs::read(mnt.join("bin/sh")).unwrap(), SH);
    mounted.unmount().unwrap();
    // Rewritten with what this mount was asked.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l == "l /bin/sh"), "{text}");
    assert!(!text.contains("passwd"), "{text}");
}
