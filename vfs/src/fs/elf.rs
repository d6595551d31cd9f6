//! What an ELF binary or shared library will make the dynamic loader open next: its interpreter
//! (`PT_INTERP`), the libraries it names (`DT_NEEDED`) and where it asks for them to be looked up
//! (`DT_RUNPATH` / `DT_RPATH`). Read from the file's own bytes, which are untrusted: every offset
//! and length is bounds-checked, and anything unexpected means "no dependencies".
//!
//! Only 64-bit little-endian ELF (x86_64, aarch64, riscv64, ...); other files yield `None`.

/// Reads up to `len` bytes of the file at `offset` (fewer at its end); `None` if it cannot.
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> Option<Vec<u8>> + 'a;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deps {
    /// `e_machine`: picks the multiarch library directory.
    pub machine: u16,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or `DT_RPATH`) entries, `$ORIGIN` not yet substituted.
    pub search: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Bounds on what is read: real binaries stay far below them.
const MAX_PHDRS: usize = 128;
const MAX_DYNAMIC: usize = 64 << 10;
const MAX_STRTAB: usize = 1 << 20;
const MAX_NEEDED: usize = 256;

/// Whether `head` (the file's first bytes) starts a 64-bit little-endian ELF file.
pub fn is_elf64(head: &[u8]) -> bool {
    head.len() >= 64 && head[..4] == *b"\x7fELF" && head[4] == 2 && head[5] == 1
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// The dependencies of the ELF file `read` reads, or `None` if it is not one (or is malformed).
pub fn deps(read: &mut ReadAt<'_>) -> Option<Deps> {
    let head = read(0, 64)?;
    if !is_elf64(&head) {
        return None;
    }
    let machine = u16_at(&head, 18)?;
    let phoff = u64_at(&head, 32)?;
    let phentsize = u16_at(&head, 54)? as usize;
    let phnum = u16_at(&head, 56)? as usize;
    if phentsize < 56 || phnum == 0 || phnum > MAX_PHDRS {
        return None;
    }
    let table = read(phoff, phentsize * phnum)?;
    let phdrs: Vec<Phdr> = table
        .chunks_exact(phentsize)
        .filter_map(|p| {
            Some(Phdr { kind: u32_at(p, 0)?, offset: u64_at(p, 8)?, vaddr: u64_at(p, 16)?, filesz: u64_at(p, 32)? })
        })
        .collect();
    let mut deps = Deps { machine, ..Deps::default() };
    if let Some(p) = phdrs.iter().find(|p| p.kind == PT_INTERP) {
        let raw = read(p.offset, (p.filesz as usize).min(4096))?;
        deps.interp = c_string(&raw, 0);
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else { return Some(deps) };
    let dynamic = read(dynamic.offset, (dynamic.filesz as usize).min(MAX_DYNAMIC))?;
    let mut entries = Vec::new();
    for e in dynamic.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0)?, u64_at(e, 8)?);
        if tag == 0 {
            break;
        }
        entries.push((tag, val));
    }
    let value = |tag: u64| entries.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    let (Some(strtab), Some(strsz)) = (value(DT_STRTAB), value(DT_STRSZ)) else { return Some(deps) };
    // DT_STRTAB is an address: the PT_LOAD segment holding it says where it is in the file.
    let at = phdrs
        .iter()
        .filter(|p| p.kind == PT_LOAD)
        .find(|p| (p.vaddr..p.vaddr.saturating_add(p.filesz)).contains(&strtab))
        .map(|p| strtab - p.vaddr + p.offset)?;
    let strings = read(at, (strsz as usize).min(MAX_STRTAB))?;
    for &(tag, val) in &entries {
        let Some(s) = usize::try_from(val).ok().and_then(|v| c_string(&strings, v)) else { continue };
        match tag {
            DT_NEEDED if deps.needed.len() < MAX_NEEDED => deps.needed.push(s),
            DT_RUNPATH => deps.search = s.split(':').filter(|d| !d.is_empty()).map(String::from).collect(),
            DT_RPATH if value(DT_RUNPATH).is_none() => {
                deps.search = s.split(':').filter(|d| !d.is_empty()).map(String::from).collect()
            }
            _ => {}
        }
    }
    Some(deps)
}

/// The NUL-terminated string at `at` of `b`, if it is one (and valid UTF-8).
fn c_string(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok().filter(|s| !s.is_empty())
}

/// The directories the dynamic loader searches after `DT_RUNPATH` (its built-in and Debian's
/// multiarch ones: `ld.so.cache` lists nothing else on common distributions), for `machine`.
pub fn default_dirs(machine: u16) -> Vec<String> {
    let triplet = match machine {
        62 => Some("x86_64-linux-gnu"),
        183 => Some("aarch64-linux-gnu"),
        243 => Some("riscv64-linux-gnu"),
        22 => Some("s390x-linux-gnu"),
        21 => Some("powerpc64le-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib"].map(String::from));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary itself (a 64-bit little-endian ELF on every platform the tests run on).
    fn read_self() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    fn reader(bytes: &[u8]) -> impl FnMut(u64, usize) -> Option<Vec<u8>> + '_ {
        move |at, len| {
            let at = usize::try_from(at).ok()?;
            Some(bytes.get(at..)?.iter().take(len).copied().collect())
        }
    }

    #[test]
    fn a_real_binary_names_its_interpreter_and_libc() {
        let me = read_self();
        let deps = deps(&mut reader(&me)).expect("the test binary is an ELF file");
        assert!(deps.interp.as_deref().is_some_and(|i| i.contains("ld-linux")), "{deps:?}");
        assert!(deps.needed.iter().any(|n| n.starts_with("libc.so")), "{deps:?}");
    }

    #[test]
    fn non_elf_truncated_and_hostile_files_have_no_deps() {
        assert_eq!(deps(&mut reader(b"#!/bin/sh\necho hi\n")), None);
        let me = read_self();
        assert_eq!(deps(&mut reader(&me[..40])), None, "shorter than an ELF header");
        // Program headers pointing far past the end, an absurd count, a zero entry size.
        for (at, value) in [(32usize, u64::MAX - 8), (56, 60_000), (54, 0)] {
            let mut bad = me[..4096].to_vec();
            match at {
                32 => bad[at..at + 8].copy_from_slice(&value.to_le_bytes()),
                _ => bad[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes()),
            }
            let _ = deps(&mut reader(&bad)); // must not panic
        }
        // Every truncation of the real file parses or gives up, never panics.
        for len in (64..me.len().min(1 << 16)).step_by(997) {
            let _ = deps(&mut reader(&me[..len]));
        }
    }

    #[test]
    fn default_dirs_put_the_multiarch_ones_first() {
        assert_eq!(default_dirs(62)[..2], ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]);
        assert_eq!(default_dirs(0)[0], "/lib64");
    }
}
