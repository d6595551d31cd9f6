//! Unit tests of the filesystem logic against the in-memory fake source (no mount).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use nix::errno::Errno;

use super::core::{FileKind, LazyFs, XattrReply};
use super::prefetch::{plan, PrefetchMode, Prefetcher};
use super::record::Recorder;
use super::testutil::{fixture, single_file, FakeSource, CAP_NET_BIND_SERVICE, DATA, MTIME, MTIME_NSEC, SH};
use crate::index::Index;
use crate::stats::{Snapshot, Stats, STATS_IOCTL, STATS_MAX};

fn new_fs() -> (LazyFs, Arc<FakeSource>) {
    let (index, src) = fixture();
    (LazyFs::new(index, src.clone(), Arc::new(Stats::default()), None), src)
}

fn ino(fs: &LazyFs, path: &str) -> u64 {
    Index::fuse_ino(fs.index().resolve(path.as_bytes()).unwrap_or_else(|| panic!("{path} in fixture")))
}

#[test]
fn hardlinks_share_inode_and_count_links() {
    let (fs, src) = new_fs();
    let a = fs.lookup(1, b"data").unwrap();
    let b = fs.lookup(1, b"hard").unwrap();
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.nlink, 2);
    // Root: ".", its entry in itself as "..", plus one per subdirectory (bin, dev).
    assert_eq!(fs.getattr(1).unwrap().nlink, 4);
    assert_eq!(fs.getattr(ino(&fs, "/bin")).unwrap().nlink, 2);
    assert_eq!(src.total_calls(), 0, "metadata must not touch the source");
}

#[test]
fn attributes_are_exact() {
    let (fs, _) = new_fs();
    let sh = fs.getattr(ino(&fs, "/bin/sh")).unwrap();
    assert_eq!((sh.kind, sh.perm, sh.size), (FileKind::RegularFile, 0o4755, SH.len() as u64));
    assert_eq!(sh.time, UNIX_EPOCH + Duration::new(MTIME as u64, MTIME_NSEC));
    let secret = fs.getattr(ino(&fs, "/secret")).unwrap();
    assert_eq!((secret.uid, secret.gid, secret.perm), (1000, 1000, 0o600));
    let null = fs.getattr(ino(&fs, "/dev/null")).unwrap();
    assert_eq!((null.kind, null.rdev), (FileKind::CharDevice, 0x103));
    let sda = fs.getattr(ino(&fs, "/dev/sda")).unwrap();
    assert_eq!((sda.kind, sda.rdev), (FileKind::BlockDevice, 0x800));
    assert_eq!(fs.getattr(ino(&fs, "/fifo")).unwrap().kind, FileKind::NamedPipe);
    assert_eq!(fs.getattr(ino(&fs, "/sock")).unwrap().kind, FileKind::Socket);
    assert_eq!(fs.getattr(ino(&fs, "/link")).unwrap().size, 4);
    assert_eq!(fs.getattr(999).unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.getattr(0).unwrap_err(), Errno::ENOENT);
}

#[test]
fn lookup_errors_and_dots() {
    let (fs, _) = new_fs();
    assert_eq!(fs.lookup(1, b"nope").unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.lookup(ino(&fs, "/data"), b"x").unwrap_err(), Errno::ENOTDIR);
    assert_eq!(fs.lookup(1, &[b'a'; 256]).unwrap_err(), Errno::ENAMETOOLONG);
    let bin = ino(&fs, "/bin");
    assert_eq!(fs.lookup(bin, b"..").unwrap().ino, 1);
    assert_eq!(fs.lookup(bin, b".").unwrap().ino, bin);
}

#[test]
fn readdir_lists_dots_then_entries_and_resumes_at_offsets() {
    let (fs, src) = new_fs();
    let all: Vec<(Vec<u8>, u64, u64)> =
        fs.readdir(1, 0).unwrap().map(|e| (e.name.to_vec(), e.ino, e.next_offset)).collect();
    let names: Vec<&[u8]> = all.iter().map(|e| e.0.as_slice()).collect();
    assert_eq!(
        names,
        [&b"."[..], b"..", b"abs", b"bin", b"data", b"dev", b"empty", b"fifo", b"hard", b"link", b"secret", b"sock"]
    );
    assert_eq!((all[0].1, all[1].1), (1, 1), "root is its own parent");
    // Resuming at every offset the kernel could pass back yields exactly the rest.
    for (i, entry) in all.iter().enumerate() {
        let rest: Vec<Vec<u8>> = fs.readdir(1, entry.2).unwrap().map(|e| e.name.to_vec()).collect();
        assert_eq!(rest, all[i + 1..].iter().map(|e| e.0.clone()).collect::<Vec<_>>());
    }
    assert_eq!(fs.readdir(1, 1000).unwrap().count(), 0);
    let dev: Vec<(Vec<u8>, FileKind)> =
        fs.readdir(ino(&fs, "/dev"), 2).unwrap().map(|e| (e.name.to_vec(), e.kind)).collect();
    assert_eq!(dev, [(b"null".to_vec(), FileKind::CharDevice), (b"sda".to_vec(), FileKind::BlockDevice)]);
    assert_eq!(fs.readdir(ino(&fs, "/data"), 0).err(), Some(Errno::ENOTDIR));
    assert_eq!(src.total_calls(), 0);
}

#[test]
fn readlink_returns_targets() {
    let (fs, _) = new_fs();
    assert_eq!(fs.readlink(ino(&fs, "/link")).unwrap(), b"data");
    assert_eq!(fs.readlink(ino(&fs, "/abs")).unwrap(), b"/bin/sh");
    assert_eq!(fs.readlink(ino(&fs, "/data")).unwrap_err(), Errno::EINVAL);
}

#[test]
fn paths_resolve_through_symlinks_and_dots_as_the_kernel_would() {
    let (index, _) = fixture();
    let at = |path: &str| index.resolve_following(path.as_bytes());
    let (data, sh) = (index.resolve(b"/data"), index.resolve(b"/bin/sh"));
    assert_eq!(at("/link"), data, "relative target");
    assert_eq!(at("/abs"), sh, "absolute target");
    assert_eq!(at("/bin/../link"), data);
    assert_eq!(at("//bin/./sh"), sh);
    assert_eq!(at("/"), Some(crate::index::ROOT));
    assert_eq!(at("/bin/sh/x"), None, "nothing is below a file");
    assert_eq!(at("/bin/sh/"), None, "a trailing slash asks for a directory");
    assert_eq!(at("/abs/.."), None, "nor above one");
    assert_eq!(at("/missing"), None);
    assert_eq!(at("bin/sh"), None, "relative paths have no starting point");
}

#[test]
fn read_spans_chunk_boundaries_with_one_source_call() {
    let (fs, src) = new_fs();
    let data = ino(&fs, "/data");
    // Every (offset, size) pair over the file, including past its end.
    for offset in 0..=DATA.len() as u64 + 2 {
        for size in [1u32, 5, 15, 16, 17, 33, 100] {
            src.calls.lock().clear();
            let got = fs.read(data, offset, size).unwrap();
            let start = (offset as usize).min(DATA.len());
            let end = (offset as usize + size as usize).min(DATA.len());
            assert_eq!(&got[..], &DATA[start..end], "offset {offset} size {size}");
            let calls = src.calls.lock();
            if start == end {
                assert!(calls.is_empty(), "an empty read fetches nothing");
            } else {
                assert_eq!(calls.len(), 1, "one read_chunks call per read");
                let want: Vec<usize> = (start / 16..=(end - 1) / 16).collect();
                assert_eq!(calls[0], ("/data".to_string(), want), "exactly the covering chunks");
            }
        }
    }
}

#[test]
fn read_counts_served_bytes_and_empty_files_need_no_fetch() {
    let (fs, src) = new_fs();
    assert_eq!(fs.read(ino(&fs, "/empty"), 0, 4096).unwrap().len(), 0);
    assert_eq!(src.total_calls(), 0);
    assert_eq!(&fs.read(ino(&fs, "/bin/sh"), 0, 4096).unwrap()[..], SH);
    assert_eq!(fs.stats().snapshot().bytes_served, SH.len() as u64);
    assert_eq!(fs.read(1, 0, 10).unwrap_err(), Errno::EISDIR);
    assert_eq!(fs.read(ino(&fs, "/link"), 0, 10).unwrap_err(), Errno::EINVAL);
}

#[test]
fn fetch_error_is_eio_and_other_chunks_still_read() {
    let (fs, src) = new_fs();
    let data = ino(&fs, "/data");
    let Some(crate::index::Kind::File { chunks, .. }) = fs.index().inode(3).map(|i| i.kind.clone()) else { panic!() };
    src.failing.lock().insert(chunks[1].digest);
    assert_eq!(fs.read(data, 0, 40).unwrap_err(), Errno::EIO);
    assert_eq!(fs.read(data, 10, 10).unwrap_err(), Errno::EIO);
    assert_eq!(&fs.read(data, 0, 16).unwrap()[..], &DATA[..16]);
    assert_eq!(&fs.read(data, 32, 8).unwrap()[..], &DATA[32..]);
    src.failing.lock().clear();
    assert_eq!(&fs.read(data, 0, 40).unwrap()[..], DATA, "recovers once the source does");
}

#[test]
fn open_refuses_writes() {
    let (fs, _) = new_fs();
    let data = ino(&fs, "/data");
    assert!(fs.open(data, libc::O_RDONLY).is_ok());
    assert_eq!(fs.open(data, libc::O_WRONLY).unwrap_err(), Errno::EROFS);
    assert_eq!(fs.open(data, libc::O_RDWR).unwrap_err(), Errno::EROFS);
    assert_eq!(fs.open(data, libc::O_RDONLY | libc::O_TRUNC).unwrap_err(), Errno::EROFS);
    assert_eq!(fs.open(1, libc::O_RDONLY).unwrap_err(), Errno::EISDIR);
    assert!(fs.opendir(1, libc::O_RDONLY).is_ok());
    assert_eq!(fs.opendir(data, libc::O_RDONLY).unwrap_err(), Errno::ENOTDIR);
}

#[test]
fn xattr_size_probing_follows_the_fuse_protocol() {
    let (fs, src) = new_fs();
    let data = ino(&fs, "/data");
    assert_eq!(fs.getxattr(data, b"user.color", 0).unwrap(), XattrReply::Size(4));
    assert_eq!(fs.getxattr(data, b"user.color", 3).unwrap_err(), Errno::ERANGE);
    assert_eq!(fs.getxattr(data, b"user.color", 4).unwrap(), XattrReply::Data(b"blue".to_vec()));
    assert_eq!(fs.getxattr(data, b"security.capability", 64).unwrap(), XattrReply::Data(CAP_NET_BIND_SERVICE.to_vec()));
    assert_eq!(fs.getxattr(data, b"user.nope", 64).unwrap_err(), Errno::ENODATA);
    let list = b"security.capability\0user.color\0".to_vec();
    assert_eq!(fs.listxattr(data, 0).unwrap(), XattrReply::Size(list.len() as u32));
    assert_eq!(fs.listxattr(data, 5).unwrap_err(), Errno::ERANGE);
    assert_eq!(fs.listxattr(data, 1024).unwrap(), XattrReply::Data(list));
    assert_eq!(fs.listxattr(1, 0).unwrap(), XattrReply::Size(0));
    assert_eq!(src.total_calls(), 0);
}

#[test]
fn stats_come_from_the_root_ioctl_and_are_no_xattr() {
    let (fs, _) = new_fs();
    fs.read(ino(&fs, "/bin/sh"), 0, 5).unwrap();
    let (len, json) = fs.ioctl(1, STATS_IOCTL, STATS_MAX as u32).unwrap();
    assert_eq!(len as usize, json.len());
    let snap: Snapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(snap.bytes_served, 5);
    assert_eq!(snap.image_bytes, (DATA.len() + SH.len() + b"top secret".len()) as u64);
    assert_eq!(fs.ioctl(ino(&fs, "/bin"), STATS_IOCTL, STATS_MAX as u32).unwrap_err(), Errno::ENOTTY);
    assert_eq!(fs.ioctl(1, STATS_IOCTL, 64).unwrap_err(), Errno::ENOTTY, "a buffer too small for the ioctl's size");
    const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
    assert_eq!(fs.ioctl(1, FS_IOC_GETFLAGS, 8).unwrap_err(), Errno::ENOTTY);
    assert_eq!(fs.getxattr(1, b"user.lazy.stats", 4096).unwrap_err(), Errno::ENODATA);
    assert_eq!(fs.listxattr(1, 4096).unwrap(), XattrReply::Data(Vec::new()));
}

#[test]
fn an_image_without_xattrs_answers_getxattr_with_enosys() {
    let (index, src) = single_file(b"plain", 4096);
    let fs = LazyFs::new(index, src, Arc::new(Stats::default()), None);
    let big = ino(&fs, "/big");
    // ENOSYS is how a FUSE server says "no xattrs on this filesystem": the kernel stops asking.
    assert_eq!(fs.getxattr(big, b"trusted.overlay.metacopy", 0).unwrap_err(), Errno::ENOSYS);
    assert_eq!(fs.getxattr(1, b"security.capability", 64).unwrap_err(), Errno::ENOSYS);
    assert_eq!(fs.listxattr(big, 1024).unwrap(), XattrReply::Data(Vec::new()));
    assert_eq!(fs.getxattr(999, b"user.x", 0).unwrap_err(), Errno::ENOENT);
}

#[test]
fn statfs_reports_image_size_and_inode_count() {
    let (fs, _) = new_fs();
    let s = fs.statfs();
    assert_eq!((s.blocks, s.files, s.bsize, s.namelen), (1, 13, 4096, 255));
}

#[test]
fn record_lists_first_reads_once_by_path() {
    let (index, src) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec");
    let rec = Recorder::create(&path, index.inodes.len()).unwrap();
    let fs = LazyFs::new(index, src, Arc::new(Stats::default()), Some(rec));
    fs.open(ino(&fs, "/secret"), libc::O_RDONLY).unwrap();
    fs.read(ino(&fs, "/hard"), 0, 4).unwrap();
    fs.read(ino(&fs, "/data"), 0, 4).unwrap();
    fs.read(ino(&fs, "/bin/sh"), 0, 4).unwrap();
    fs.getattr(ino(&fs, "/empty")).unwrap();
    // A hardlinked file is recorded once, under its first path.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "/secret\n/data\n/bin/sh\n");
}

#[test]
fn prefetch_plan_orders_prioritized_first() {
    let (fs, _) = new_fs();
    let paths = |mode| plan(&fs, mode).into_iter().map(|i| fs.path(i).to_string()).collect::<Vec<_>>();
    assert!(paths(PrefetchMode::None).is_empty());
    assert_eq!(paths(PrefetchMode::Prioritized), ["/secret", "/bin/sh"]);
    // Then every other non-empty regular file once (the hardlink is not fetched twice).
    assert_eq!(paths(PrefetchMode::All), ["/secret", "/bin/sh", "/data"]);
}

#[test]
fn prefetcher_fetches_everything_and_counts_chunks() {
    let (index, src) = fixture();
    let fs = Arc::new(LazyFs::new(index, src.clone(), Arc::new(Stats::default()), None));
    let p = Prefetcher::start(fs.clone(), PrefetchMode::All).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    p.stop(Duration::from_secs(1));
    let fetched: Vec<(String, usize)> = src.prefetch_calls.lock().iter().flatten().cloned().collect();
    let want = [("/secret", 0), ("/bin/sh", 0), ("/bin/sh", 1), ("/data", 0), ("/data", 1), ("/data", 2)];
    assert_eq!(fetched, want.map(|(p, n)| (p.to_string(), n)), "prioritized first, every chunk of every file once");
    assert!(src.calls.lock().is_empty(), "prefetch goes through ChunkSource::prefetch");
    assert!(Prefetcher::start(fs, PrefetchMode::None).is_none());
}

#[test]
fn prefetcher_gives_up_on_a_failing_source() {
    let (index, src) = fixture();
    for inode in &index.inodes {
        if let crate::index::Kind::File { chunks, .. } = &inode.kind {
            src.failing.lock().extend(chunks.iter().map(|c| c.digest));
        }
    }
    let fs = Arc::new(LazyFs::new(index, src.clone(), Arc::new(Stats::default()), None));
    let p = Prefetcher::start(fs.clone(), PrefetchMode::All).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(p.is_finished());
    // Three failures in a row end prefetch: the remaining files (/data) are never asked for.
    assert_eq!(src.prefetch_calls.lock().len(), 3);
}

#[test]
fn prefetch_mode_parses() {
    assert_eq!("all".parse::<PrefetchMode>().unwrap(), PrefetchMode::All);
    assert_eq!("none".parse::<PrefetchMode>().unwrap().to_string(), "none");
    assert!("some".parse::<PrefetchMode>().unwrap_err().contains("none, prioritized or all"));
}

#[test]
fn prefetcher_stops_promptly() {
    let data = vec![5u8; 64 * 4096];
    let (index, src) = super::testutil::single_file(&data, 4096);
    *src.delay.lock() = Duration::from_millis(20);
    let fs = Arc::new(LazyFs::new(index, src.clone(), Arc::new(Stats::default()), None));
    let p = Prefetcher::start(fs, PrefetchMode::All).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let started = std::time::Instant::now();
    p.stop(Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_millis(500), "stop took {:?}", started.elapsed());
    let calls = src.prefetch_calls.lock().len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.prefetch_calls.lock().len(), calls, "no prefetch after stop");
    assert!(calls < 8, "stopped before fetching all 8 batches ({calls})");
}

#[test]
fn loading_a_program_starts_the_fetch_of_its_interpreter_and_libraries_at_once() {
    // This test binary is the program: a real ELF file with a real interpreter and libraries.
    let program = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let deps = super::elf::deps(&mut |at, len| {
        let at = usize::try_from(at).ok()?;
        Some(program.get(at..)?.iter().take(len).copied().collect())
    })
    .expect("the test binary is an ELF file");
    let interp = deps.interp.clone().expect("the test binary has an interpreter");
    let libdir = super::elf::default_dirs(deps.machine)[1].clone();
    let (index, src, libs) = super::testutil::program_tree(&program, &interp, &libdir, &deps.needed);
    let fs = LazyFs::new(index, src.clone(), Arc::new(Stats::default()), None).with_linker();

    // The loader reads the program's header: every library is asked for before the loader names one.
    fs.read(ino(&fs, "/usr/bin/app"), 0, 4096).unwrap();
    let soon = || src.soon_calls.lock().iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while soon().len() < libs.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut asked = soon();
    asked.sort();
    let mut want = libs.clone();
    want.sort();
    assert_eq!(asked, want, "interpreter (through /lib64 and the /lib symlink) and every DT_NEEDED library");
    assert!(src.soon_calls.lock().iter().all(|(_, chunks)| chunks == &[0]), "the first chunk of each");

    // Each file is looked at once per mount; a file that is not ELF names nothing.
    fs.read(ino(&fs, "/usr/bin/app"), 0, 4096).unwrap();
    fs.read(ino(&fs, &libs[0]), 0, 4096).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.soon_calls.lock().len(), libs.len());
}
