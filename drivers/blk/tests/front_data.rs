//! blkfront's data path against a raw backend: round trips, many requests in flight, a
//! multi-page ring, 1 MiB indirect requests, flush, discard, grants ended in batches, the
//! read-only disk, and the embedded-io adapter.

mod front_common;

use std::time::{Duration, Instant};

use embedded_io::{Read, Seek, SeekFrom, Write};
use front_common::*;
use xen_blk::abi::*;
use xen_blk::front::io::BlockIo;
use xen_blk::front::{BlkError, BlockDevice, Completion, Request, WaitMode};
use xen_blk::negotiate::FlushMode;

const DISK: usize = 16 << 20;

fn poll_all<D: BlockDevice>(dev: &mut D, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let end = Instant::now() + LIMIT;
    while out.len() < n {
        assert!(Instant::now() < end, "only {} of {n} completed", out.len());
        dev.poll(&mut |c| out.push(c)).unwrap();
        if out.len() < n {
            dev.wait(Duration::from_millis(10)).unwrap();
        }
    }
    out
}

fn roundtrip(mode: WaitMode, storage: bool) {
    let mut s = Setup::new(mode, storage, false);
    let mut be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    assert_eq!(dev.sector_size(), 512);
    assert_eq!(dev.sectors(), 32768);
    assert!(!dev.read_only());
    // Unaligned-in-memory slices of several sizes, at several sectors.
    for (sector, len, seed) in [
        (0u64, 512usize, 1u8),
        (7, 4096, 2),
        (100, 3 * 4096 + 1024, 3),
    ] {
        let data = pattern(len, seed);
        dev.write(sector, &data).unwrap();
        let mut back = vec![0u8; len];
        dev.read(sector, &mut back).unwrap();
        assert_eq!(back, data);
        let disk = be.disk.lock().unwrap();
        assert_eq!(&disk[sector as usize * 512..][..len], &data[..]);
    }
    assert_eq!(dev.read(32768, &mut [0u8; 512]), Err(BlkError::OutOfRange));
    assert_eq!(dev.read(0, &mut [0u8; 100]), Err(BlkError::Misaligned));
    be.finish().unwrap();
}

#[test]
fn roundtrip_event_mode_backend_in_dom0() {
    roundtrip(WaitMode::Event, false);
}

#[test]
fn roundtrip_polled_mode_backend_in_storage_domain() {
    roundtrip(WaitMode::Polled, true);
}

#[test]
fn many_requests_in_flight_on_a_multi_page_ring() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Stall,
    );
    let mut dev = s.connect();
    // A 16-page ring: the frontend wrote ring-ref0..15 and the backend mapped 16 pages.
    assert_eq!(s.fe_key("ring-page-order").as_deref(), Some("4"));
    assert_eq!(s.fe_key("num-ring-pages").as_deref(), Some("16"));
    assert!(s.fe_key("ring-ref15").is_some());
    assert_eq!(s.fe_key("ring-ref"), None);
    assert_eq!(be.ring_pages.load(std::sync::atomic::Ordering::SeqCst), 16);
    let cfg = dev.config().unwrap();
    assert_eq!(cfg.max_requests, blkif_ring_size(16));
    // 600 writes of 8 KiB submitted at once; the backend takes them but answers nothing
    // until all the ring can hold (512) are in flight.
    assert_eq!(cfg.max_requests, 512);
    let n = 600usize;
    for i in 0..n {
        let mut b = dev.alloc_buffer(8192).unwrap();
        b.as_mut_slice().copy_from_slice(&pattern(8192, i as u8));
        dev.submit(
            i as u64,
            Request::Write {
                sector: i as u64 * 16,
                buf: b,
            },
        )
        .unwrap();
    }
    let end = Instant::now() + LIMIT;
    while be.taken.load(std::sync::atomic::Ordering::SeqCst) < 512 {
        assert!(Instant::now() < end, "backend did not see 512 requests");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(be.taken.load(std::sync::atomic::Ordering::SeqCst), 512);
    be.set(Behaviour::Honest);
    let done = poll_all(&mut dev, n);
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..n as u64).collect::<Vec<_>>());
    for c in done {
        assert_eq!(c.result, Ok(()));
        dev.free_buffer(c.buf.unwrap()).unwrap();
    }
    for i in [0usize, 300, 599] {
        let mut back = vec![0u8; 8192];
        dev.read(i as u64 * 16, &mut back).unwrap();
        assert_eq!(back, pattern(8192, i as u8));
    }
}

#[test]
fn one_mib_request_goes_as_one_indirect_request() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    assert_eq!(dev.max_request_bytes(), 1 << 20);
    let mut buf = dev.alloc_buffer(1 << 20).unwrap();
    let data = pattern(1 << 20, 9);
    buf.as_mut_slice().copy_from_slice(&data);
    dev.submit(1, Request::Write { sector: 2048, buf }).unwrap();
    let c = poll_all(&mut dev, 1).pop().unwrap();
    assert_eq!(c.result, Ok(()));
    let buf = c.buf.unwrap();
    let seen = be.seen();
    assert_eq!(
        seen,
        vec![Seen {
            operation: BLKIF_OP_INDIRECT,
            data_op: BLKIF_OP_WRITE,
            segments: 256,
            sector: 2048,
            bytes: 1 << 20,
        }]
    );
    // Read it back in one indirect read into a fresh buffer.
    let rb = dev.alloc_buffer(1 << 20).unwrap();
    dev.submit(
        2,
        Request::Read {
            sector: 2048,
            buf: rb,
        },
    )
    .unwrap();
    let c = poll_all(&mut dev, 1).pop().unwrap();
    assert_eq!(c.result, Ok(()));
    assert_eq!(c.buf.as_ref().unwrap().as_slice(), &data[..]);
    dev.free_buffer(c.buf.unwrap()).unwrap();
    dev.free_buffer(buf).unwrap();
    // A 2 MiB request is split into two 1 MiB indirect requests.
    let big = dev.alloc_buffer(2 << 20).unwrap();
    dev.submit(
        3,
        Request::Read {
            sector: 0,
            buf: big,
        },
    )
    .unwrap();
    let c = poll_all(&mut dev, 1).pop().unwrap();
    assert_eq!(c.result, Ok(()));
    let seen = be.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen[2..]
        .iter()
        .all(|x| x.operation == BLKIF_OP_INDIRECT && x.segments == 256));
    // Grants: every one ended (the platform counts what was granted and the sim refuses
    // to free pages still granted).
    dev.free_buffer(c.buf.unwrap()).unwrap();
}

#[test]
fn small_requests_stay_direct_and_direct_only_backends_get_11_segments() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut offer = modern_offer();
    offer.max_indirect_segments = 0;
    let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Honest);
    let mut dev = s.connect();
    assert_eq!(dev.max_request_bytes(), 11 * 4096);
    let data = pattern(100 * 1024, 4);
    dev.write(64, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(64, &mut back).unwrap();
    assert_eq!(back, data);
    let seen = be.seen();
    assert!(seen
        .iter()
        .all(|x| x.operation != BLKIF_OP_INDIRECT && x.segments <= 11));
    assert_eq!(seen[0].segments, 11);
}

#[test]
fn grants_are_ended_in_one_batch_per_batch_of_responses() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Batch(8),
    );
    let mut dev = s.connect();
    let before = s.plat.batches();
    let ends = s.plat.end_calls.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..8u64 {
        let b = dev.alloc_buffer(3 * 4096).unwrap();
        dev.submit(
            i,
            Request::Read {
                sector: i * 24,
                buf: b,
            },
        )
        .unwrap();
    }
    // The backend answers all 8 in one push once it has them.
    let end = Instant::now() + LIMIT;
    while be.seen().len() < 8 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = poll_all(&mut dev, 8);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(
        s.plat.batches() - before,
        1,
        "one end_batch for 8 responses"
    );
    assert_eq!(
        s.plat.end_calls.load(std::sync::atomic::Ordering::SeqCst),
        ends,
        "no single-grant ends on the data path"
    );
    for c in done {
        dev.free_buffer(c.buf.unwrap()).unwrap();
    }
}

#[test]
fn flush_and_discard_as_negotiated() {
    // Flush via FLUSH_DISKCACHE, discard offered.
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().flush, FlushMode::FlushCache);
    dev.write(0, &pattern(8192, 5)).unwrap();
    dev.flush().unwrap();
    dev.discard(0, 8).unwrap();
    let mut back = vec![1u8; 8192];
    dev.read(0, &mut back).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert_eq!(&back[4096..], &pattern(8192, 5)[4096..]);
    let ops: Vec<u8> = be.seen().iter().map(|x| x.operation).collect();
    assert_eq!(
        ops,
        vec![
            BLKIF_OP_WRITE,
            BLKIF_OP_FLUSH_DISKCACHE,
            BLKIF_OP_DISCARD,
            BLKIF_OP_READ
        ]
    );
    assert_eq!(be.seen()[2].bytes, 4096);
    assert_eq!(dev.discard(32760, 9), Err(BlkError::OutOfRange));
    drop(be);

    // Barrier only; no discard.
    let mut s = Setup::new(WaitMode::Polled, false, false);
    let mut offer = modern_offer();
    offer.flush_cache = false;
    offer.barrier = true;
    offer.discard = None;
    let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Honest);
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().flush, FlushMode::Barrier);
    dev.flush().unwrap();
    assert_eq!(dev.discard(0, 8), Err(BlkError::Unsupported));
    assert_eq!(be.seen()[0].operation, BLKIF_OP_WRITE_BARRIER);
    assert_eq!(be.seen().len(), 1);
    drop(be);

    // Neither: flush completes locally (the backend writes through).
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut offer = modern_offer();
    offer.flush_cache = false;
    let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Honest);
    let mut dev = s.connect();
    assert_eq!(dev.config().unwrap().flush, FlushMode::None);
    dev.flush().unwrap();
    assert!(be.seen().is_empty());
}

#[test]
fn read_only_disk_refuses_writes_locally() {
    let mut s = Setup::new(WaitMode::Event, false, true);
    let mut offer = modern_offer();
    offer.info = VDISK_READONLY;
    let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Honest);
    let mut dev = s.connect();
    assert!(dev.read_only());
    assert_eq!(dev.write(0, &[0u8; 512]), Err(BlkError::ReadOnly));
    assert_eq!(dev.discard(0, 1), Err(BlkError::ReadOnly));
    let b = dev.alloc_buffer(512).unwrap();
    let r = dev
        .submit(0, Request::Write { sector: 0, buf: b })
        .unwrap_err();
    assert_eq!(r.error, BlkError::ReadOnly);
    dev.free_buffer(r.buf.unwrap()).unwrap();
    dev.read(0, &mut [0u8; 512]).unwrap();
    assert!(be.seen().iter().all(|x| x.operation == BLKIF_OP_READ));
}

#[test]
fn embedded_io_adapter_reads_and_writes_bytes_anywhere() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        DISK,
        Behaviour::Honest,
    );
    let dev = s.connect();
    let mut io = BlockIo::new(dev);
    // An unaligned write spanning three sectors: read-modify-write at both ends.
    io.seek(SeekFrom::Start(1000)).unwrap();
    let data = pattern(2000, 7);
    io.write_all(&data).unwrap();
    io.flush().unwrap();
    assert_eq!(io.position(), 3000);
    {
        let disk = be.disk.lock().unwrap();
        assert_eq!(&disk[1000..3000], &data[..]);
        assert!(disk[..1000].iter().all(|&b| b == 0));
        assert!(disk[3000..4096].iter().all(|&b| b == 0));
    }
    io.seek(SeekFrom::Current(-1500)).unwrap();
    let mut back = vec![0u8; 1500];
    io.read_exact(&mut back).unwrap();
    assert_eq!(back, data[500..]);
    // The end of the device.
    let end = io.seek(SeekFrom::End(-10)).unwrap();
    assert_eq!(end, DISK as u64 - 10);
    let mut tail = [0u8; 64];
    assert_eq!(io.read(&mut tail).unwrap(), 10);
    assert_eq!(io.read(&mut tail).unwrap(), 0);
    assert!(io.write_all(&[1u8; 20]).is_err());
    assert!(io.seek(SeekFrom::Current(-(DISK as i64) - 1)).is_err());
}

#[test]
fn caller_memory_bad_buffers_and_busy() {
    use xen_blk::front::Buffer;
    use xen_platform::Pages;
    let mut s = Setup::new(WaitMode::Event, false, false);
    let mut offer = modern_offer();
    offer.max_requests = Some(4);
    let be = s.backend(BackKeys::from_offer(&offer), DISK, Behaviour::Stall);
    let mut dev = s.connect();
    // Caller-provided page-aligned memory (here: the guest's own pages).
    let run = s.plat.alloc(2).unwrap();
    assert_eq!(
        // SAFETY: not page aligned: refused before anything is touched.
        unsafe {
            Buffer::from_raw(
                std::ptr::NonNull::new(run.addr.as_ptr().add(512)).unwrap(),
                4096,
            )
        }
        .unwrap_err(),
        BlkError::BadBuffer
    );
    // SAFETY: two pages of our own, used only through this Buffer until it comes back.
    let mut mine = unsafe { Buffer::from_raw(run.addr, 8192) }.unwrap();
    mine.as_mut_slice().copy_from_slice(&pattern(8192, 8));
    // A length that is not whole blocks is refused (Misaligned) and the buffer given back.
    mine.set_len(1000).unwrap();
    let r = dev
        .submit(
            0,
            Request::Write {
                sector: 0,
                buf: mine,
            },
        )
        .unwrap_err();
    assert_eq!(r.error, BlkError::Misaligned);
    let mut mine = r.buf.unwrap();
    mine.set_len(8192).unwrap();
    // Beyond the end.
    let r = dev
        .submit(
            0,
            Request::Write {
                sector: 32767,
                buf: mine,
            },
        )
        .unwrap_err();
    assert_eq!(r.error, BlkError::OutOfRange);
    let mine = r.buf.unwrap();
    // max-requests = 4: 4 ids, 8 operations accepted, the 9th is Busy.
    dev.submit(
        100,
        Request::Write {
            sector: 0,
            buf: mine,
        },
    )
    .unwrap();
    for i in 1..8u64 {
        let b = dev.alloc_buffer(512).unwrap();
        dev.submit(i, Request::Read { sector: i, buf: b }).unwrap();
    }
    assert_eq!(dev.in_flight(), 8);
    let b = dev.alloc_buffer(512).unwrap();
    let r = dev
        .submit(9, Request::Read { sector: 0, buf: b })
        .unwrap_err();
    assert_eq!(r.error, BlkError::Busy);
    dev.free_buffer(r.buf.unwrap()).unwrap();
    let end = Instant::now() + LIMIT;
    while be.taken.load(std::sync::atomic::Ordering::SeqCst) < 4 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(be.taken.load(std::sync::atomic::Ordering::SeqCst), 4);
    be.set(Behaviour::Honest);
    let done = poll_all(&mut dev, 8);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(dev.in_flight(), 0);
    for c in done {
        let b = c.buf.unwrap();
        if c.tag == 100 {
            // The caller's memory comes back as it went.
            assert_eq!(b.addr(), run.addr);
            assert_eq!(b.as_slice(), &pattern(8192, 8)[..]);
        } else {
            dev.free_buffer(b).unwrap();
        }
    }
    assert_eq!(&be.disk.lock().unwrap()[..8192], &pattern(8192, 8)[..]);
    s.plat.free(run).unwrap();
}
