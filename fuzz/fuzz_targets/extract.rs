//! Tarball extraction and layer flattening (`citron_core::block::extract`): whatever the entries
//! (names, link targets, kinds, whiteouts, in one or two layers), nothing beside the tree's root
//! changes and nothing panics.
//!
//! The input is either a raw archive (first byte even) or, more usefully, a recipe of entries
//! built into well-formed tar headers with hostile names: names and targets are assembled from a
//! small alphabet of path pieces (`..`, `/`, `.wh.` prefixes, `sentinel`, ...), so the fuzzer
//! spends its time on sequences (a symlink, then a file through it) rather than on checksums.
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use citron_core::block::extract::{Tree, UnpackLimits};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const PIECES: &[&str] = &["a", "b", "..", ".", "", "/", ".wh.a", ".wh...", ".wh..", ".wh.", ".wh..wh..opq", ".wh.sentinel", "sentinel", "keep", "l", "@ABS@"];

fn path(u: &mut Unstructured, abs: &str) -> Result<String> {
    let n = u.int_in_range(1..=4)?;
    let mut parts = Vec::new();
    for _ in 0..n {
        parts.push(u.choose(PIECES)?.replace("@ABS@", abs));
    }
    Ok(parts.join("/"))
}

fn recipe(u: &mut Unstructured, abs: &str) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let n = u.int_in_range(1..=16)?;
    for _ in 0..n {
        let mut h = tar::Header::new_gnu();
        let kind = *u.choose(&[b'0', b'0', b'5', b'2', b'2', b'1', b'6', b'3', b'L', b'x', b'S'])?;
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(u.arbitrary::<u16>()? as u32 & 0o7777);
        let name = path(u, abs)?;
        let target = path(u, abs)?;
        let data: Vec<u8> = if matches!(kind, b'0' | b'L' | b'x') { u.arbitrary::<&[u8]>()?.iter().take(512).copied().collect() } else { Vec::new() };
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        let k = name.len().min(100);
        old.name[..k].copy_from_slice(&name.as_bytes()[..k]);
        let k = target.len().min(100);
        old.linkname[..k].copy_from_slice(&target.as_bytes()[..k]);
        h.set_cksum();
        b.append(&h, &data[..]).map_err(|_| libfuzzer_sys::arbitrary::Error::IncorrectFormat)?;
    }
    b.into_inner().map_err(|_| libfuzzer_sys::arbitrary::Error::IncorrectFormat)
}

fn snapshot(dir: &Path, skip: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push(format!("{} {:o} {} {}", p.display(), m.mode(), m.size(), m.mtime_nsec()));
        if m.is_dir() {
            snapshot(&p, skip, out);
        }
    }
}

/// Gives every directory under `p` (not following symlinks) its owner's rwx back.
fn unlock(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            unlock(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("sentinel/d")).unwrap();
    std::fs::write(t.path().join("sentinel/keep"), b"keep").unwrap();
    std::fs::create_dir(t.path().join("box")).unwrap();
    let root = t.path().join("box/root");
    let abs = t.path().join("sentinel").display().to_string();
    let layers: Vec<Vec<u8>> = match data.first() {
        Some(b) if b % 2 == 0 => data[1..].split(|c| *c == 0xff).take(2).map(|l| l.to_vec()).collect(),
        _ => {
            let mut u = Unstructured::new(data.get(1..).unwrap_or_default());
            let mut v = Vec::new();
            while v.len() < 2 {
                match recipe(&mut u, &abs) {
                    Ok(l) => v.push(l),
                    Err(_) => break,
                }
            }
            v
        }
    };
    let mut before = Vec::new();
    snapshot(t.path(), &root, &mut before);
    let limits = UnpackLimits { max_bytes: 1 << 20, max_entries: 1000, fs_size: 0 };
    for layer in [true, false] {
        let _ = std::fs::remove_dir_all(&root);
        let mut tree = Tree::create(&root, limits).unwrap();
        for l in &layers {
            if tree.unpack(&l[..], layer).is_err() {
                break;
            }
        }
        let _ = tree.finish();
        let mut after = Vec::new();
        snapshot(t.path(), &root, &mut after);
        // `box`'s own mtime changes when the root is made: compare everything but it.
        let strip = |v: &Vec<String>| v.iter().filter(|l| !l.starts_with(&t.path().join("box ").display().to_string())).cloned().collect::<Vec<_>>();
        assert_eq!(strip(&before), strip(&after), "something outside the root changed");
        // A finished tree may hold 0555 directories: make them removable.
        unlock(&root);
    }
});
