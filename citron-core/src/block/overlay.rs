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
use std::sync::Arc;

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
            if within % 64 == 0 && chunk_end - b >= 64 && words[(within / 64) as usize] == full {
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
}

impl CowDisk {
    /// A read-only view of `base` (zeroes when `None`), `size` bytes long.
    pub fn readonly(base: Option<Arc<File>>, size: u64) -> io::Result<CowDisk> {
        let base_len = base_len(&base)?;
        Ok(CowDisk { size, base, base_len, cow: None, dir: None })
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
        })
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
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
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
mod tests {
    use super::*;

    fn base_file(dir: &Path, content: &[u8]) -> Arc<File> {
        let p = dir.join("base");
        std::fs::write(&p, content).unwrap();
        Arc::new(File::open(&p).unwrap())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cached_reads_see_what_blocking_reads_see() {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8 + 1).collect();
        // Base shorter than the disk: its tail reads as zeroes.
        let d = CowDisk::open(dir.path(), Some(base_file(dir.path(), &base)), "t", 64 * 1024).unwrap();
        d.write_at(b"overlay bytes", 5000, false).unwrap();
        d.write_at(&[7u8; 9000], 30_000, false).unwrap();
        for (off, len) in [(0u64, 100usize), (4090, 20), (4096, 8192), (29_000, 12_000), (39_990, 30), (0, 65_536)] {
            let mut cached = vec![0xeeu8; len];
            // Just written or read: everything is in the page cache.
            assert!(d.read_cached(&mut cached, off).unwrap(), "({off}, {len}) should be cached");
            assert_eq!(cached, read(&d, off, len), "({off}, {len})");
        }
    }

    fn read(d: &CowDisk, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        d.read_at(&mut v, off).unwrap();
        v
    }

    #[test]
    fn partial_writes_keep_base_bytes_around_them() {
        let t = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        let base = base_file(t.path(), &content);
        let d = CowDisk::open(&t.path().join("ov"), Some(base), "k", content.len() as u64).unwrap();
        d.write_at(b"hello", 4090, false).unwrap();
        d.write_at(b"end", content.len() as u64 - 3, false).unwrap();
        let mut want = content.clone();
        want[4090..4095].copy_from_slice(b"hello");
        let n = want.len();
        want[n - 3..].copy_from_slice(b"end");
        assert_eq!(read(&d, 0, n), want);
        d.write_zeroes(10, 5000, false).unwrap();
        want[10..5010].fill(0);
        assert_eq!(read(&d, 0, n), want);
        d.reset().unwrap();
        assert_eq!(read(&d, 0, n), content);
        assert_eq!(d.written_blocks(), 0);
    }

    #[test]
    fn flushed_writes_survive_reopen_and_other_base_starts_fresh() {
        let t = tempfile::tempdir().unwrap();
        let ov = t.path().join("ov");
        let size = 1 << 20;
        {
            let d = CowDisk::open(&ov, None, "raw", size).unwrap();
            d.write_at(&[7u8; 8192], 65536, false).unwrap();
            d.flush().unwrap();
        }
        let d = CowDisk::open(&ov, None, "raw", size).unwrap();
        assert_eq!(read(&d, 65536 - 1, 8194), [&[0u8][..], &[7u8; 8192], &[0u8]].concat());
        drop(d);
        let d = CowDisk::open(&ov, None, "other", size).unwrap();
        assert_eq!(read(&d, 65536, 10), vec![0u8; 10]);
    }

    #[test]
    fn reset_of_a_20_gib_disk_frees_everything_without_copying() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let size = 20u64 << 30;
        let d = CowDisk::open(&t.path().join("ov"), None, "raw", size).unwrap();
        d.write_at(&[1u8; 8192], size - 8192, false).unwrap();
        d.write_at(&[2u8; 4096], 0, true).unwrap();
        assert_eq!(d.written_blocks(), 3);
        d.reset().unwrap();
        assert_eq!(d.written_blocks(), 0);
        let data = std::fs::metadata(t.path().join("ov/data")).unwrap();
        assert_eq!((data.len(), data.blocks()), (size, 0));
        assert_eq!(std::fs::metadata(t.path().join("ov/bitmap")).unwrap().len(), 0);
        assert_eq!(read(&d, size - 4, 4), vec![0u8; 4]);
    }

    fn inject(d: &CowDisk, f: Fault) {
        d.cow.as_ref().unwrap().faults.next.lock().push(f);
    }

    #[test]
    fn a_failed_data_sync_fails_every_flush_until_reset() {
        let t = tempfile::tempdir().unwrap();
        let d = CowDisk::open(&t.path().join("ov"), None, "raw", 1 << 20).unwrap();
        d.write_at(&[1u8; 4096], 0, false).unwrap();
        d.flush().unwrap();
        d.write_at(&[2u8; 4096], 8192, false).unwrap();
        inject(&d, Fault::DataSync);
        assert!(d.flush().is_err());
        // The kernel reports a writeback error once; citron must not turn the next fsync's
        // success into a promise about data that may be gone.
        for _ in 0..3 {
            let e = d.flush().unwrap_err();
            assert!(e.to_string().contains("reset the disk"), "{e}");
        }
        let e = d.write_at(&[3u8; 4096], 0, true).unwrap_err();
        assert!(e.to_string().contains("earlier sync"), "{e}");
        // The dirty chunk is still listed: nothing claims it was saved.
        assert!(!d.cow.as_ref().unwrap().bitmap.read().dirty.is_empty());
        d.reset().unwrap();
        d.write_at(&[4u8; 4096], 0, true).unwrap();
        d.flush().unwrap();
    }

    #[test]
    fn a_failed_bitmap_write_is_written_again_by_the_next_flush() {
        let t = tempfile::tempdir().unwrap();
        let ov = t.path().join("ov");
        {
            let d = CowDisk::open(&ov, None, "raw", 1 << 30).unwrap();
            d.write_at(&[5u8; 4096], 200 << 20, false).unwrap();
            inject(&d, Fault::BitmapWrite);
            assert!(d.flush().is_err());
            // The data is synced and the bitmap is rewritten from memory: a retry is honest.
            d.flush().unwrap();
        }
        let d = CowDisk::open(&ov, None, "raw", 1 << 30).unwrap();
        assert_eq!(read(&d, 200 << 20, 4096), vec![5u8; 4096]);
    }

    #[test]
    fn a_4_tib_disk_costs_nothing_until_written() {
        let t = tempfile::tempdir().unwrap();
        let size = 4u64 << 40;
        let d = match CowDisk::open(&t.path().join("ov"), None, "raw", size) {
            Ok(d) => d,
            // A file system that cannot hold a sparse 4 TiB file: nothing to test here.
            Err(e) if e.raw_os_error() == Some(libc::EFBIG) => return,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(d.cow.as_ref().unwrap().bitmap.read().chunks.len(), 0);
        d.write_at(&[9u8; 8192], size - 8192, false).unwrap();
        d.write_at(&[8u8; 100], 1 << 40, false).unwrap();
        assert_eq!(d.cow.as_ref().unwrap().bitmap.read().chunks.len(), 2);
        assert_eq!(read(&d, size - 12288, 12288), [vec![0u8; 4096], vec![9u8; 8192]].concat());
        assert_eq!(read(&d, (1 << 40) - 4, 104), [vec![0u8; 4], vec![8u8; 100]].concat());
        d.flush().unwrap();
        drop(d);
        let d = CowDisk::open(&t.path().join("ov"), None, "raw", size).unwrap();
        assert_eq!(d.written_blocks(), 3);
    }

    #[test]
    fn runs_agree_with_single_bits() {
        let mut bm = Bitmap::default();
        // Written ranges across chunk and word edges.
        for (a, b) in [(3u64, 70u64), (BLOCKS_PER_CHUNK - 5, BLOCKS_PER_CHUNK + 130), (3 * BLOCKS_PER_CHUNK, 3 * BLOCKS_PER_CHUNK + 1)] {
            bm.set_range(a, b);
        }
        let limit = 4 * BLOCKS_PER_CHUNK;
        let mut b = 0;
        while b < limit {
            let (v, end) = bm.run(b, limit);
            assert!(end > b && end <= limit);
            assert!((b..end).all(|x| bm.get(x) == v), "run {b}..{end}");
            assert!(end == limit || end % BLOCKS_PER_CHUNK == 0 || bm.get(end) != v, "run {b}..{end} stops early");
            b = end;
        }
    }

    #[test]
    fn readonly_refuses_writes() {
        let d = CowDisk::readonly(None, 4096).unwrap();
        assert!(d.readonly());
        assert!(d.write_at(b"x", 0, false).is_err());
        assert_eq!(read(&d, 0, 4096), vec![0u8; 4096]);
    }
}
