//! `storage.nbd[]` entries: a disk's name, flags, reset point and content (an image by `url` or `file`, a
//! filesystem built from a tarball or a container, or a raw disk), checked as written. Split from
//! the rest of the job's shape because disks have the most rules of any entry.

use std::time::Duration;

use crate::units::parse_size;
use crate::yaml::{Node, Pos};

use super::super::model::ResetOn;
use super::{child, Sha, SrcDesc, Str, Walker};

/// `filesystem:` contents.
#[derive(Debug, Clone)]
pub(crate) enum FsDesc {
    Tarball(SrcDesc, Option<Sha>),
    Container(Str),
}

/// A disk size with where it was written (checked against the lab's `max_disk_size` at render
/// time). `bytes` is 0 for a container filesystem without `size:` (sized to fit its contents).
#[derive(Debug, Clone)]
pub(crate) struct SizeDesc {
    pub bytes: u64,
    pub pos: Pos,
    pub field: String,
}

/// What a disk is made from.
#[derive(Debug, Clone)]
pub(crate) enum DiskKindDesc {
    Image { source: SrcDesc, sha256: Option<Sha> },
    Filesystem { fstype: Option<Str>, size: SizeDesc, contents: Option<FsDesc> },
    Raw { size: SizeDesc },
}

/// A `storage.nbd[]` entry.
#[derive(Debug, Clone)]
pub(crate) struct DiskDesc {
    pub name: Str,
    pub readonly: bool,
    pub kind: DiskKindDesc,
    pub reset_on: ResetOn,
    pub shared: bool,
    pub expiration: Option<Duration>,
}

use super::super::file::{fields_of, DiskEntry, FilesystemFile, RawFile, TarballFile, DISK_SOURCES, TARBALL_KEYS};

impl Walker<'_> {
    pub(super) fn disk(&mut self, node: &Node, field: &str) -> Option<DiskDesc> {
        let f = self.mapping(node, field, fields_of::<DiskEntry>())?;
        let mut ok = true;
        let name = self.required(&f, "name", field, "rootfs").and_then(|n| self.string(n, &child(field, "name")));
        let get_bool = |w: &mut Self, key: &str| match f.get(key) {
            None => Some(false),
            Some(n) => w.bool(n, &child(field, key)),
        };
        let readonly = get_bool(self, "readonly");
        let shared = get_bool(self, "shared");
        let reset_on = match f.get("reset_on") {
            None => Some(ResetOn::default()),
            Some(n) => self.scalar(n, &child(field, "reset_on"), "boot, job_start or never").and_then(|s| match s.value.as_str() {
                "boot" => Some(ResetOn::Boot),
                "job_start" => Some(ResetOn::JobStart),
                "never" => Some(ResetOn::Never),
                v => {
                    self.err(
                        s.pos,
                        &child(field, "reset_on"),
                        format!("`{v}` is not a reset point; write one of boot, job_start or never"),
                    );
                    None
                }
            }),
        };
        let expiration = f.get("expiration").map(|n| self.duration(n, &child(field, "expiration")));
        let sha256 = f.get("sha256").map(|n| self.sha256(n, &child(field, "sha256")));
        let kind = self.one_of(&f, DISK_SOURCES, field, "disk content").and_then(|(k, v)| {
            let kf = child(field, &k.value);
            match k.value.as_str() {
                "url" => Some(DiskKindDesc::Image { source: SrcDesc::Url(self.string(v, &kf)?), sha256: None }),
                // A local image, confined to the allowed roots like every `file:` source.
                "file" => Some(DiskKindDesc::Image { source: SrcDesc::File(self.string(v, &kf)?), sha256: None }),
                "raw" => {
                    let r = self.mapping(v, &kf, fields_of::<RawFile>())?;
                    let size = self.required(&r, "size", &kf, "20G")?;
                    Some(DiskKindDesc::Raw { size: self.size(size, &child(&kf, "size"))? })
                }
                _ => self.filesystem(v, &kf),
            }
        });
        if let (Some(k), Some(kind)) = (f.key("sha256"), &kind) {
            if !matches!(kind, DiskKindDesc::Image { .. }) {
                self.err(k.pos, &child(field, "sha256"), "`sha256` checks a disk image given by `url` or `file`; remove it here");
                ok = false;
            }
        }
        let mut kind = kind?;
        if let DiskKindDesc::Image { sha256: slot, .. } = &mut kind {
            *slot = sha256.clone().flatten();
        }
        let sha_ok = sha256.map(|s| s.is_some()).unwrap_or(true);
        let exp_ok = expiration.as_ref().map(|e| e.is_some()).unwrap_or(true);
        if !(ok && sha_ok && exp_ok) {
            return None;
        }
        Some(DiskDesc { name: name?, readonly: readonly?, kind, reset_on: reset_on?, shared: shared?, expiration: expiration.flatten() })
    }

    fn filesystem(&mut self, node: &Node, field: &str) -> Option<DiskKindDesc> {
        let f = self.mapping(node, field, fields_of::<FilesystemFile>())?;
        let fstype = f.get("type").map(|n| self.string(n, &child(field, "type")));
        let contents = match (f.key("data"), f.key("container")) {
            (Some(_), Some(c)) => {
                self.err(c.pos, field, "`data` and `container` are both given; keep exactly one of `data`, `container`");
                return None;
            }
            (Some(_), None) => {
                let n = f.get("data").expect("present");
                let df = child(field, "data");
                let d = self.mapping(n, &df, fields_of::<TarballFile>())?;
                // Checked before the source and not `?`-ed, as a disk's own `sha256`: every
                // problem of the tarball is reported at once.
                let sha256 = d.get("sha256").map(|s| self.sha256(s, &child(&df, "sha256")));
                let (k, v) = self.one_of(&d, TARBALL_KEYS, &df, "tarball")?;
                let source = self.source(k, v, &df)?;
                let sha256 = match sha256 {
                    Some(s) => Some(s?),
                    None => None,
                };
                Some(Some(FsDesc::Tarball(source, sha256)))
            }
            (None, Some(_)) => {
                let n = f.get("container").expect("present");
                self.string(n, &child(field, "container")).map(|s| Some(FsDesc::Container(s)))
            }
            (None, None) => Some(None),
        };
        let size = match f.get("size") {
            Some(n) => self.size(n, &child(field, "size")),
            None if matches!(contents, Some(Some(FsDesc::Container(_)))) => {
                Some(SizeDesc { bytes: 0, pos: f.pos, field: child(field, "size") })
            }
            None => {
                self.err(f.pos, field, "`size` is missing; add it, like `size: 20G`");
                None
            }
        };
        Some(DiskKindDesc::Filesystem {
            fstype: match fstype {
                Some(t) => Some(t?),
                None => None,
            },
            size: size?,
            contents: contents?,
        })
    }

    fn size(&mut self, node: &Node, field: &str) -> Option<SizeDesc> {
        let s = self.scalar(node, field, "a size like 20G")?;
        match parse_size(&s.value) {
            Ok(0) => {
                self.err(s.pos, field, "a disk of size 0 is useless; give a size like 512M or 20G");
                None
            }
            Ok(n) => Some(SizeDesc { bytes: n, pos: s.pos, field: field.to_string() }),
            Err(m) => {
                self.err(s.pos, field, m);
                None
            }
        }
    }
}
