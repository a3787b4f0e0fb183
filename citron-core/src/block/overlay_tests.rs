//! Tests of [`CowDisk`](super::CowDisk): copy-on-write, durability, failed syncs, huge sizes.

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
