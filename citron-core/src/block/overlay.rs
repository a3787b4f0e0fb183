//! The copy-on-write view of one disk for one DUT.
//!
//! Every DUT attached to a disk gets a [`CowDisk`]: reads of blocks it never wrote come from the
//! shared, immutable base image (or zeroes for a raw disk); written blocks live in a sparse
//! overlay file of the disk's size, and a bitmap says which. A reset truncates the overlay and the
//! bitmap, whatever the disk's size, instead of copying anything.
//!
//! # Durability
//! Data is written to the overlay before its bit is set, and `flush` first snapshots the bitmap,
//! then `fsync`s the data and only then writes and `fsync`s that snapshot. A bit on disk therefore
//! always names data that is on disk: after a crash, a block reads either what was acknowledged by a
//! flush (or written with FUA) or the base, never garbage.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use super::BlockDevice;

/// Bytes per bitmap bit: a partial write of one block copies that block from the base first.
pub const BLOCK: u64 = 4096;

/// How [`CowDisk::fill`] reads a file range: all of it (`Ok(true)`), or `Ok(false)` when it
/// would have to wait for the disk.
type ReadFn<'a> = &'a dyn Fn(&File, &mut [u8], u64) -> io::Result<bool>;

/// A blocking read of the whole range.
fn read_exact(f: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    f.read_exact_at(buf, offset).map(|()| true)
}
/// Bitmap words per chunk: a chunk is one 4 KiB page of the bitmap file, 128 MiB of disk.
const CHUNK_WORDS: usize = 512;
const CHUNK_BYTES: u64 = (CHUNK_WORDS * 8) as u64;
const BLOCKS_PER_CHUNK: u64 = (CHUNK_WORDS * 64) as u64;

/// Which blocks the overlay holds. Chunks are allocated on first write and kept in a map, so a
/// fresh disk costs nothing whatever its declared size (a job's size is untrusted input), and a
/// reset frees everything at once.
#[derive(Debug, Default)]
struct Bitmap {
    /// Chunk index → its words; absent chunks hold no written block.
    chunks: BTreeMap<u64, Box<[u64; CHUNK_WORDS]>>,
    /// Chunks changed since the last successful sync.
    dirty: BTreeSet<u64>,
}

impl Bitmap {
    fn get(&self, block: u64) -> bool {
        let within = block % BLOCKS_PER_CHUNK;
        match self.chunks.get(&(block / BLOCKS_PER_CHUNK)) {
            Some(words) => words[(within / 64) as usize] & (1 << (within % 64)) != 0,
            None => false,
        }
    }

    /// Whether `block` is written, and the first block in `(block, limit]` that differs from it
    /// (or `limit`), looked up within `block`'s chunk only: one map lookup per chunk.
    fn run(&self, block: u64, limit: u64) -> (bool, u64) {
        let c = block / BLOCKS_PER_CHUNK;
        let chunk_end = ((c + 1) * BLOCKS_PER_CHUNK).min(limit);
        let Some(words) = self.chunks.get(&c) else { return (false, chunk_end) };
        let bit = |b: u64| {
            let within = b % BLOCKS_PER_CHUNK;
            words[(within / 64) as usize] & (1 << (within % 64)) != 0
        };
        let value = bit(block);
        let full = if value { u64::MAX } else { 0 };
        let mut b = block + 1;
        while b < chunk_end {
            let within = b % BLOCKS_PER_CHUNK;
            if within.is_multiple_of(64) && chunk_end - b >= 64 && words[(within / 64) as usize] == full {
                b += 64;
            } else if bit(b) == value {
                b += 1;
            } else {
                break;
            }
        }
        (value, b)
    }

    fn set_range(&mut self, first: u64, end: u64) {
        let mut b = first;
        while b < end {
            let c = b / BLOCKS_PER_CHUNK;
            let chunk = self.chunks.entry(c).or_insert_with(|| Box::new([0u64; CHUNK_WORDS]));
            self.dirty.insert(c);
            let chunk_end = ((c + 1) * BLOCKS_PER_CHUNK).min(end);
            while b < chunk_end {
                let within = b % BLOCKS_PER_CHUNK;
                let w = (within / 64) as usize;
                let bit = within % 64;
                if bit == 0 && chunk_end - b >= 64 {
                    chunk[w] = u64::MAX;
                    b += 64;
                } else {
                    chunk[w] |= 1 << bit;
                    b += 1;
                }
            }
        }
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.dirty.clear();
    }
}

/// The writable state of a [`CowDisk`]: its overlay and bitmap files.
#[derive(Debug)]
struct Cow {
    data: File,
    bitmap_file: File,
    bitmap: RwLock<Bitmap>,
    /// Serialises writers: a partial-block copy-in and the write that follows are one step.
    write: Mutex<()>,
    /// Serialises syncs: a flush returns only once the bitmap chunks another flush is writing
    /// are on disk too.
    sync: Mutex<()>,
    /// A data sync failed: acknowledged writes may be gone, so no flush may succeed until a reset.
    lost: AtomicBool,
    faults: Faults,
}

/// One DUT's view of one disk: a shared base plus, unless read-only, its own overlay.
#[derive(Debug)]
pub struct CowDisk {
    size: u64,
    base: Option<Arc<File>>,
    base_len: u64,
    cow: Option<Cow>,
    dir: Option<PathBuf>,
    /// Why the store withdrew this view ([`CowDisk::withdraw`]); set at most once.
    gone: OnceLock<String>,
}

impl CowDisk {
    /// A read-only view of `base` (zeroes when `None`), `size` bytes long.
    pub fn readonly(base: Option<Arc<File>>, size: u64) -> io::Result<CowDisk> {
        let base_len = base_len(&base)?;
        Ok(CowDisk { size, base, base_len, cow: None, dir: None, gone: OnceLock::new() })
    }

    /// A writable view whose overlay lives in `dir`: reopened with its writes if `dir` holds an
    /// overlay of the same base (`base_key`) and size, else created empty.
    pub fn open(dir: &Path, base: Option<Arc<File>>, base_key: &str, size: u64) -> io::Result<CowDisk> {
        std::fs::create_dir_all(dir)?;
        let meta_path = dir.join("meta");
        let meta = format!("{base_key}\n{size}\n");
        let reuse = std::fs::read_to_string(&meta_path).map(|m| m == meta).unwrap_or(false);
        let open = |name: &str| OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(name));
        let data = open("data")?;
        let bitmap_file = open("bitmap")?;
        let mut bitmap = Bitmap::default();
        if reuse {
            load_bitmap(&bitmap_file, &mut bitmap, size.div_ceil(BLOCK).div_ceil(BLOCKS_PER_CHUNK))?;
        } else {
            bitmap_file.set_len(0)?;
            bitmap_file.sync_all()?;
            data.set_len(0)?;
            let tmp = dir.join("meta.tmp");
            std::fs::write(&tmp, &meta)?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &meta_path)?;
        }
        data.set_len(size)?;
        let base_len = base_len(&base)?;
        Ok(CowDisk {
            size,
            base,
            base_len,
            cow: Some(Cow {
                data,
                bitmap_file,
                bitmap: RwLock::new(bitmap),
                write: Mutex::new(()),
                sync: Mutex::new(()),
                lost: AtomicBool::new(false),
                faults: Faults::default(),
            }),
            dir: Some(dir.to_path_buf()),
            gone: OnceLock::new(),
        })
    }

    /// The store is deleting this view's overlay (a reset by deletion, an expiration) while
    /// connections may still hold it: from now on every request through an
    /// [`Export`](crate::serve::Export) answers [`BlockError::Gone`](crate::serve::BlockError)
    /// with `why`, instead of writes landing in files nobody will read again. The first reason
    /// stays.
    pub fn withdraw(&self, why: &str) {
        let _ = self.gone.set(why.to_string());
    }

    /// Where the overlay lives (`None` for a read-only view).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// How many blocks the overlay holds: 0 right after a reset.
    pub fn written_blocks(&self) -> u64 {
        let Some(c) = &self.cow else { return 0 };
        let bm = c.bitmap.read();
        bm.chunks.values().map(|w| w.iter().map(|x| x.count_ones() as u64).sum::<u64>()).sum()
    }

    /// Drops every write: the disk reads as its base again. Costs two truncations, not a copy.
    pub fn reset(&self) -> io::Result<()> {
        let Some(c) = &self.cow else { return Ok(()) };
        let _w = c.write.lock();
        let _s = c.sync.lock();
        let mut bm = c.bitmap.write();
        bm.clear();
        c.bitmap_file.set_len(0)?;
        c.bitmap_file.sync_all()?;
        c.data.set_len(0)?;
        c.data.set_len(self.size)?;
        // Nothing is left that a failed sync could have lost.
        c.lost.store(false, Ordering::Release);
        Ok(())
    }

    fn read_base(&self, buf: &mut [u8], offset: u64, read: ReadFn) -> io::Result<bool> {
        let (Some(f), true) = (&self.base, offset < self.base_len) else {
            buf.fill(0);
            return Ok(true);
        };
        let avail = ((self.base_len - offset).min(buf.len() as u64)) as usize;
        if !read(f, &mut buf[..avail], offset)? {
            return Ok(false);
        }
        buf[avail..].fill(0);
        Ok(true)
    }

    /// Fills `buf` from the overlay where the DUT wrote and from the base elsewhere, each file
    /// read with `read` (`Ok(false)`: it would wait; stop).
    fn fill(&self, buf: &mut [u8], offset: u64, read: ReadFn) -> io::Result<bool> {
        let Some(c) = &self.cow else { return self.read_base(buf, offset, read) };
        let bm = c.bitmap.read();
        let end = offset + buf.len() as u64;
        let end_block = end.div_ceil(BLOCK);
        let mut pos = offset;
        while pos < end {
            // The longest run of blocks on the same side, one map lookup per chunk crossed.
            let (in_overlay, mut run_end_block) = bm.run(pos / BLOCK, end_block);
            while run_end_block < end_block {
                let (v, next) = bm.run(run_end_block, end_block);
                if v != in_overlay {
                    break;
                }
                run_end_block = next;
            }
            let run_end = (run_end_block * BLOCK).min(end);
            let slice = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            let done = if in_overlay { read(&c.data, slice, pos)? } else { self.read_base(slice, pos, read)? };
            if !done {
                return Ok(false);
            }
            pos = run_end;
        }
        Ok(true)
    }

    /// Makes every block touched by `[offset, end)` but not fully covered by it an overlay block,
    /// so that the caller may then write any part of it.
    fn copy_in_partial(&self, c: &Cow, offset: u64, end: u64) -> io::Result<()> {
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let block_end = |b: u64| ((b + 1) * BLOCK).min(self.size);
        let mut edges = Vec::with_capacity(2);
        if offset & (BLOCK - 1) != 0 || end < block_end(first) {
            edges.push(first);
        }
        if last != first && end < block_end(last) {
            edges.push(last);
        }
        for b in edges {
            if c.bitmap.read().get(b) {
                continue;
            }
            let start = b * BLOCK;
            let len = BLOCK.min(self.size - start) as usize;
            let mut block = vec![0u8; len];
            self.read_base(&mut block, start, &read_exact)?;
            c.data.write_all_at(&block, start)?;
            c.bitmap.write().set_range(b, b + 1);
        }
        Ok(())
    }

    fn cow(&self) -> io::Result<&Cow> {
        self.cow.as_ref().ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only"))
    }

    /// Makes every acknowledged write durable: data first, then the bitmap chunks changed since
    /// the last successful sync. On failure the changed chunks stay listed, so a later sync
    /// writes them again; a failed *data* sync cannot be retried (the kernel may have dropped the
    /// pages and reports the error only once), so the overlay is marked lost and every later
    /// sync fails too, until a reset empties it.
    fn sync(&self, c: &Cow) -> io::Result<()> {
        let _s = c.sync.lock();
        if c.lost.load(Ordering::Acquire) {
            return Err(lost_error());
        }
        let snapshot: Vec<(u64, Vec<u8>)> = {
            let mut bm = c.bitmap.write();
            let dirty = std::mem::take(&mut bm.dirty);
            dirty
                .into_iter()
                .map(|i| {
                    let bytes = match bm.chunks.get(&i) {
                        Some(w) => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        None => vec![0u8; CHUNK_BYTES as usize],
                    };
                    (i, bytes)
                })
                .collect()
        };
        let keep_dirty = |e: io::Error| {
            c.bitmap.write().dirty.extend(snapshot.iter().map(|(i, _)| *i));
            e
        };
        if let Err(e) = c.faults.check(Fault::DataSync).and_then(|()| c.data.sync_data()) {
            c.lost.store(true, Ordering::Release);
            tracing::error!(overlay = ?self.dir, error = %e, "overlay data sync failed: its recent writes may be lost; every flush fails until the disk is reset");
            return Err(keep_dirty(e));
        }
        if snapshot.is_empty() {
            return Ok(());
        }
        for (i, bytes) in &snapshot {
            let r = c.faults.check(Fault::BitmapWrite).and_then(|()| c.bitmap_file.write_all_at(bytes, i * CHUNK_BYTES));
            r.map_err(keep_dirty)?;
        }
        c.bitmap_file.sync_data().map_err(keep_dirty)
    }
}

/// What every sync answers once a data sync failed.
fn lost_error() -> io::Error {
    io::Error::other("an earlier sync of this overlay failed, so writes since the last good flush may be lost; reset the disk")
}

/// Failures a test can make the next sync meet (nothing in a release build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    DataSync,
    BitmapWrite,
}

#[derive(Debug, Default)]
struct Faults {
    #[cfg(test)]
    next: Mutex<Vec<Fault>>,
}

impl Faults {
    #[cfg(test)]
    fn check(&self, f: Fault) -> io::Result<()> {
        let mut next = self.next.lock();
        match next.iter().position(|x| *x == f) {
            Some(i) => {
                next.remove(i);
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn check(&self, _f: Fault) -> io::Result<()> {
        Ok(())
    }
}

fn base_len(base: &Option<Arc<File>>) -> io::Result<u64> {
    Ok(match base {
        Some(f) => f.metadata()?.len(),
        None => 0,
    })
}

/// Reads the chunks saved in `f`, at most `chunks` of them (the disk's size bounds the index).
fn load_bitmap(f: &File, bm: &mut Bitmap, chunks: u64) -> io::Result<()> {
    let len = f.metadata()?.len();
    let mut page = [0u8; CHUNK_BYTES as usize];
    for i in 0..chunks.min(len.div_ceil(CHUNK_BYTES)) {
        let off = i * CHUNK_BYTES;
        let n = ((len - off).min(CHUNK_BYTES)) as usize;
        page[n..].fill(0);
        f.read_exact_at(&mut page[..n], off)?;
        if page.iter().any(|b| *b != 0) {
            let mut words = Box::new([0u64; CHUNK_WORDS]);
            for (w, bytes) in words.iter_mut().zip(page.chunks_exact(8)) {
                *w = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            }
            bm.chunks.insert(i, words);
        }
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for writing.
    let r = unsafe {
        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_f: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

fn write_zero_bytes(f: &File, mut offset: u64, mut len: u64) -> io::Result<()> {
    let zeroes = vec![0u8; len.min(1 << 20) as usize];
    while len > 0 {
        let n = len.min(zeroes.len() as u64);
        f.write_all_at(&zeroes[..n as usize], offset)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

impl BlockDevice for CowDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn readonly(&self) -> bool {
        self.cow.is_none()
    }

    fn gone(&self) -> Option<&str> {
        self.gone.get().map(String::as_str)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fill(buf, offset, &read_exact).map(|_| ())
    }

    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.fill(buf, offset, &crate::nowait::read_exact_cached)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let c = self.cow()?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        {
            let _w = c.write.lock();
            self.copy_in_partial(c, offset, end)?;
            c.data.write_all_at(buf, offset)?;
            c.bitmap.write().set_range(offset / BLOCK, end.div_ceil(BLOCK));
        }
        if fua {
            self.sync(c)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let c = self.cow()?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        {
            let _w = c.write.lock();
            self.copy_in_partial(c, offset, end)?;
            if punch_hole(&c.data, offset, len).is_err() {
                write_zero_bytes(&c.data, offset, len)?;
            }
            c.bitmap.write().set_range(offset / BLOCK, end.div_ceil(BLOCK));
        }
        if fua {
            self.sync(c)?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, false)
    }

    fn flush(&self) -> io::Result<()> {
        match &self.cow {
            Some(c) => self.sync(c),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "overlay_tests.rs"]
mod tests;
