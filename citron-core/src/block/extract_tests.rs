//! Hostile archives against [`Tree`]: nothing outside the root may change, whatever the entries.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;

/// One archive member, written with raw header fields as a hostile archive would.
#[derive(Debug, Clone)]
pub(super) enum E {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
    Fifo(String),
}

pub(super) fn raw_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        let (name, link, data): (&str, Option<&str>, &[u8]) = match e {
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                (n, None, d)
            }
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, None, &[])
            }
            E::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                (n, Some(t), &[])
            }
            E::Hardlink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                (n, Some(t), &[])
            }
            E::Fifo(n) => {
                h.set_entry_type(tar::EntryType::Fifo);
                (n, None, &[])
            }
        };
        // set_path refuses `..` and absolute names; a hostile archive does not.
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        if let Some(l) = link {
            let n = l.len().min(100);
            old.linkname[..n].copy_from_slice(&l.as_bytes()[..n]);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn big() -> UnpackLimits {
    UnpackLimits { max_bytes: 1 << 30, max_entries: 1 << 20, fs_size: 0 }
}

/// Everything under `dir` except `skip`, without following symlinks: type, mode, size, mtime,
/// content or link target.
pub(super) fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        // The root's parent changes when the root is made; its other entries are all listed.
        let mtime = if Some(d.as_path()) == skip.parent() { 0 } else { m.mtime_nsec() + m.mtime() * 1_000_000_000 };
        out.insert(d.clone(), format!("dir {:o} {mtime}", m.mode()));
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(p.clone(), format!("link {:?}", std::fs::read_link(&p).unwrap()));
            } else {
                out.insert(p.clone(), format!("file {:o} {} {} {:?}", m.mode(), m.nlink(), m.mtime(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// A tempdir with `sentinel/keep`, `outside.txt` and an empty tree at `box/root`.
fn playground() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("sentinel/d")).unwrap();
    std::fs::write(t.path().join("sentinel/keep"), b"keep").unwrap();
    std::fs::write(t.path().join("sentinel/d/deep"), b"deep").unwrap();
    std::fs::write(t.path().join("outside.txt"), b"outside").unwrap();
    std::fs::create_dir(t.path().join("box")).unwrap();
    let root = t.path().join("box/root");
    (t, root)
}

fn unpack(root: &Path, layers: &[Vec<u8>], layer: bool) -> Result<TreeStats, ExtractError> {
    let mut tree = Tree::create(root, big()).unwrap();
    for l in layers {
        tree.unpack(&l[..], layer)?;
    }
    tree.finish()
}

fn f(n: &str, d: &str) -> E {
    E::File(n.into(), d.as_bytes().to_vec())
}

#[test]
fn whiteouts_remove_lower_files() {
    let (_t, root) = playground();
    let l1 = raw_tar(&[E::Dir("etc".into()), f("etc/a", "a"), f("etc/b", "b"), E::Dir("var".into()), f("var/x", "x")]);
    let l2 = raw_tar(&[f("etc/.wh.a", ""), f("var/.wh..wh..opq", ""), f("var/y", "y"), f("gone/.wh.nothing", "")]);
    unpack(&root, &[l1, l2], true).unwrap();
    assert!(!root.join("etc/a").exists());
    assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"b");
    assert!(!root.join("var/x").exists());
    assert_eq!(std::fs::read(root.join("var/y")).unwrap(), b"y");
    assert!(!root.join("etc/.wh.a").exists());
}

#[test]
fn hostile_entries_are_refused_and_touch_nothing_outside() {
    let (t, root) = playground();
    let abs = t.path().join("sentinel/keep").display().to_string();
    let abs_dir = t.path().join("sentinel").display().to_string();
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![f(".wh...", "")], "whiteout of `..`"),
        (vec![E::Dir("a".into()), f("a/.wh...", "")], "whiteout of `..`"),
        (vec![f(".wh..", "")], "whiteout of `.`"),
        (vec![f(".wh.", "")], "whiteout of ``"),
        (vec![f("../escaped", "x")], "`..` component"),
        (vec![f("a/../../escaped", "x")], "`..` component"),
        (vec![f(&abs, "x")], "absolute path"),
        (vec![E::Symlink("l".into(), "../../sentinel".into()), f("l/keep", "overwritten")], "cannot be opened beneath"),
        (vec![E::Symlink("l".into(), abs_dir.clone()), f("l/new", "x")], "cannot be opened beneath"),
        (vec![E::Symlink("l".into(), "..".into()), E::Dir("l/sub".into())], "cannot be opened beneath"),
        (vec![E::Hardlink("h".into(), "../../sentinel/keep".into())], "hard link whose target has a `..`"),
        (vec![E::Hardlink("h".into(), abs.clone())], "hard link whose target is an absolute"),
        (vec![E::Symlink("l".into(), "../..".into()), f("l/.wh.sentinel", "")], "cannot be opened beneath"),
    ];
    let before = snapshot(t.path(), &root);
    for (entries, want) in cases {
        let _ = std::fs::remove_dir_all(&root);
        for layer in [true, false] {
            let _ = std::fs::remove_dir_all(&root);
            let r = unpack(&root, &[raw_tar(&entries)], layer);
            // Whiteouts are plain files in a tarball: `.wh...` is then just a strange name.
            if !layer && want.starts_with("whiteout") {
                assert!(r.is_ok(), "{entries:?}: {r:?}");
                continue;
            }
            let e = r.expect_err(&format!("{entries:?} accepted (layer: {layer})")).to_string();
            assert!(e.contains(want), "{entries:?}: {e}");
        }
        assert_eq!(snapshot(t.path(), &root), before, "{entries:?} changed something outside the root");
    }
}

#[test]
fn symlinks_are_data_and_never_written_through() {
    let (t, root) = playground();
    let abs = t.path().join("outside.txt").display().to_string();
    let before = snapshot(t.path(), &root);
    // A symlink pointing out, then a file and a hard link at the same name: both replace the
    // link instead of writing where it points.
    let l = raw_tar(&[
        E::Symlink("out".into(), abs.clone()),
        E::Symlink("rel".into(), "../../outside.txt".into()),
        f("rel", "replaced"),
        E::Symlink("out2".into(), abs.clone()),
        f("inner", "inner"),
        E::Hardlink("out2".into(), "inner".into()),
        E::Dir("lib".into()),
        E::Symlink("lib64".into(), "lib".into()),
        f("lib64/libc.so", "through an inner symlink is fine"),
        E::Fifo("fifo".into()),
    ]);
    unpack(&root, &[l], true).unwrap();
    assert_eq!(snapshot(t.path(), &root), before);
    assert_eq!(std::fs::read_link(root.join("out")).unwrap(), Path::new(&abs));
    assert_eq!(std::fs::read(root.join("rel")).unwrap(), b"replaced");
    assert_eq!(std::fs::read(root.join("out2")).unwrap(), b"inner");
    assert_eq!(std::fs::read(root.join("lib/libc.so")).unwrap(), b"through an inner symlink is fine");
    assert!(!root.join("fifo").exists());
}

#[test]
fn limits_stop_the_unpacking_with_their_key() {
    let (_t, root) = playground();
    let l = raw_tar(&[f("a", &"x".repeat(600)), f("b", &"y".repeat(600))]);
    let mut tree = Tree::create(&root, UnpackLimits { max_bytes: 1000, max_entries: 100, fs_size: 0 }).unwrap();
    let e = tree.unpack(&l[..], false).unwrap_err().to_string();
    assert!(e.contains("limits.unpack_max_bytes"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
    let mut tree = Tree::create(&root, UnpackLimits { max_bytes: 10_000, max_entries: 100, fs_size: 1000 }).unwrap();
    let e = tree.unpack(&l[..], false).unwrap_err().to_string();
    assert!(e.contains("the filesystem's `size: 1000`"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
    let many: Vec<E> = (0..20).map(|i| f(&format!("f{i}"), "")).collect();
    let mut tree = Tree::create(&root, UnpackLimits { max_bytes: 10_000, max_entries: 10, fs_size: 0 }).unwrap();
    let e = tree.unpack(&raw_tar(&many)[..], false).unwrap_err().to_string();
    assert!(e.contains("limits.unpack_max_entries"), "{e}");
}

#[test]
fn read_only_directories_get_their_mode_at_the_end() {
    let (_t, root) = playground();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o555);
    h.set_size(0);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "ro", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_size(2);
    b.append_data(&mut h, "ro/f", &b"hi"[..]).unwrap();
    let l = b.into_inner().unwrap();
    unpack(&root, &[l], false).unwrap();
    assert_eq!(std::fs::metadata(root.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(std::fs::metadata(root.join("ro/f")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o755);
}

fn name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh...".to_string()),
        Just(".wh..".to_string()),
        Just(".wh.".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just(".wh.sentinel".to_string()),
        Just(".wh.box".to_string()),
        Just("sentinel".to_string()),
        Just("l".to_string()),
    ];
    (any::<bool>(), proptest::collection::vec(part, 1..4)).prop_map(|(abs, parts)| {
        let p = parts.join("/");
        if abs {
            format!("/{p}")
        } else {
            p
        }
    })
}

fn target(base: String) -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        Just("..".to_string()),
        Just("../..".to_string()),
        Just("../../sentinel".to_string()),
        Just(format!("{base}/sentinel")),
        Just(format!("{base}/sentinel/keep")),
        Just("/".to_string()),
        Just(".".to_string()),
    ]
}

fn entry(base: String) -> impl Strategy<Value = E> {
    prop_oneof![
        (name(), "[a-z]{0,8}").prop_map(|(n, d)| E::File(n, d.into_bytes())),
        name().prop_map(E::Dir),
        (name(), target(base.clone())).prop_map(|(n, t)| E::Symlink(n, t)),
        (name(), target(base)).prop_map(|(n, t)| E::Hardlink(n, t)),
        name().prop_map(E::Fifo),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Whatever the entries (names with `..`, `/`, whiteouts; symlinks out then entries through
    /// them; hard links out), nothing beside the root changes.
    #[test]
    fn no_extraction_touches_anything_outside_its_root(seed in 0u8..1, layers in proptest::collection::vec(proptest::collection::vec(entry("@BASE@".into()), 1..12), 1..3)) {
        let _ = seed;
        let (t, root) = playground();
        let base = t.path().display().to_string();
        let fix = |s: &String| s.replace("@BASE@", &base);
        let layers: Vec<Vec<E>> = layers.iter().map(|l| l.iter().map(|e| match e {
            E::Symlink(n, x) => E::Symlink(n.clone(), fix(x)),
            E::Hardlink(n, x) => E::Hardlink(n.clone(), fix(x)),
            other => other.clone(),
        }).collect()).collect();
        let before = snapshot(t.path(), &root);
        for layer in [true, false] {
            let _ = std::fs::remove_dir_all(&root);
            let tars: Vec<Vec<u8>> = layers.iter().map(|l| raw_tar(l)).collect();
            let _ = unpack(&root, &tars, layer);
            prop_assert_eq!(&snapshot(t.path(), &root), &before);
        }
    }
}
