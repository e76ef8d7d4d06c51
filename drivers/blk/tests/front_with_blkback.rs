//! blkfront against xenolith's own blkback (`xen_blk::back::BlkBack` serving a `MemDisk`) in
//! a storage domain, each on its own XenBus, through the toolstack's `add_vbd`: the
//! handshake both ways, 1 MiB indirect I/O, many requests in flight, flush, discard, the
//! embedded-io adapter.

mod front_common;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use embedded_io::{Read, Seek, SeekFrom, Write};
use front_common::*;
use xen_blk::back::{BackOptions, BlkBack};
use xen_blk::front::io::BlockIo;
use xen_blk::front::{BlkDevice, BlkError, BlockDevice, Completion, Request, WaitMode};
use xen_blk::negotiate::FlushMode;
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::Bus;
use xen_platform::Events;

/// Runs `body` with a blkfront device connected (in `mode`) to xenolith's blkback serving the
/// disk `disk` makes, in a storage domain on a thread of its own.
fn with_blkback(
    mode: WaitMode,
    disk: fn() -> MemDisk,
    body: impl FnOnce(&mut BlkDevice<Rc<Counting>>),
) {
    let mut s = Setup::new(mode, true, false);
    let stop = AtomicBool::new(false);
    let storage = s.storage.take().unwrap();
    /// Stops the backend thread even when an assertion fails (the scope joins it).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|sc| {
        let _stop = Stop(&stop);
        let back = sc.spawn(|| {
            let mut bus =
                Bus::with_config(storage.xs_client().unwrap(), storage.domid(), bus_cfg());
            let dom = storage.domain().clone();
            let bb = BlkBack::new(Rc::new(dom.clone()), BackOptions::default(), move |_| {
                Ok(Box::new(disk()) as Box<dyn Storage>)
            });
            bb.register(&mut bus).unwrap();
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let _ = bus.poll(t0.elapsed());
                let p = bb.poll();
                if !p.busy && !p.ports.is_empty() {
                    if let Ok(port) = dom.wait(&p.ports, Some(Duration::from_millis(1))) {
                        dom.clear(port);
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let mut dev = s.connect();
        body(&mut dev);
        stop.store(true, Ordering::SeqCst);
        back.join().unwrap();
    });
}

#[test]
fn blkfront_with_xenolith_blkback_in_a_storage_domain() {
    for mode in [WaitMode::Event, WaitMode::Polled] {
        with_blkback(
            mode,
            || MemDisk::new(32768),
            |dev| {
                let cfg = dev.config().unwrap();
                assert_eq!(cfg.ring_page_order, 4);
                assert_eq!(cfg.max_segments, 256);
                assert_eq!(cfg.flush, FlushMode::FlushCache);
                assert!(cfg.discard.is_some());
                assert_eq!(dev.sectors(), 32768);
                // 1 MiB through one indirect request, back again.
                let data = pattern(1 << 20, 5);
                dev.write(100, &data).unwrap();
                let mut back_data = vec![0u8; data.len()];
                dev.read(100, &mut back_data).unwrap();
                assert_eq!(back_data, data);
                dev.flush().unwrap();
                // 64 requests in flight.
                for i in 0..64u64 {
                    let mut b = dev.alloc_buffer(4096).unwrap();
                    b.as_mut_slice().copy_from_slice(&pattern(4096, i as u8));
                    dev.submit(
                        i,
                        Request::Write {
                            sector: 4096 + i * 8,
                            buf: b,
                        },
                    )
                    .unwrap();
                }
                let done = wait_for(dev, 64);
                for c in done {
                    assert_eq!(c.result, Ok(()), "tag {}", c.tag);
                    dev.free_buffer(c.buf.unwrap()).unwrap();
                }
                let mut one = vec![0u8; 4096];
                dev.read(4096 + 63 * 8, &mut one).unwrap();
                assert_eq!(one, pattern(4096, 63));
                // Discard, then the bytes API.
                dev.discard(100, 8).unwrap();
                let mut io = BlockIo::new(dev.clone());
                io.seek(SeekFrom::Start(100 * 512)).unwrap();
                let mut head = [1u8; 4096];
                io.read_exact(&mut head).unwrap();
                assert!(head.iter().all(|&b| b == 0));
                io.seek(SeekFrom::Start(777)).unwrap();
                io.write_all(b"hello, blkback").unwrap();
                io.seek(SeekFrom::Start(777)).unwrap();
                let mut h = [0u8; 14];
                io.read_exact(&mut h).unwrap();
                assert_eq!(&h, b"hello, blkback");
            },
        );
    }
}

/// Polls `dev` until `n` completions came (bounded by `LIMIT`).
fn wait_for(dev: &mut BlkDevice<Rc<Counting>>, n: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    let end = Instant::now() + LIMIT;
    while done.len() < n {
        assert!(Instant::now() < end, "{} of {n}", done.len());
        dev.poll(&mut |c| done.push(c)).unwrap();
        dev.wait(Duration::from_millis(5)).unwrap();
    }
    done
}

/// A disk with 4096-byte logical blocks (blkif.h as clarified in 2024: `sectors`,
/// `sector_number` and `first_sect`/`last_sect` stay in 512-byte units; `sector-size` only says
/// what requests must be aligned to): blkfront reports the size in 512-byte sectors, addresses
/// requests in 512-byte sectors, and refuses requests that are not whole blocks.
#[test]
fn blkfront_on_a_disk_with_4096_byte_blocks() {
    with_blkback(
        WaitMode::Event,
        || MemDisk::new(32768).with_sector_size(4096),
        |dev| {
            assert_eq!(dev.sector_size(), 4096);
            assert_eq!(
                dev.sectors(),
                32768,
                "512-byte units, as the wire's `sectors`"
            );
            // Block 3 is 512-byte sector 24.
            let data = pattern(8192, 9);
            dev.write(24, &data).unwrap();
            let mut back = vec![0u8; 8192];
            dev.read(24, &mut back).unwrap();
            assert_eq!(back, data);
            // The bytes landed at 24 * 512 (through the byte adapter, independently).
            let mut io = BlockIo::new(dev.clone());
            io.seek(SeekFrom::Start(24 * 512)).unwrap();
            let mut raw = vec![0u8; 8192];
            io.read_exact(&mut raw).unwrap();
            assert_eq!(raw, data);
            // Not on a block boundary, not whole blocks, past the end: refused locally.
            assert_eq!(dev.read(25, &mut back), Err(BlkError::Misaligned));
            assert_eq!(dev.read(24, &mut back[..512]), Err(BlkError::Misaligned));
            assert_eq!(dev.read(32768, &mut back), Err(BlkError::OutOfRange));
            assert_eq!(dev.discard(8, 4), Err(BlkError::Misaligned));
            // The last block, by the async API.
            let b = dev.alloc_buffer(4096).unwrap();
            dev.submit(
                1,
                Request::Read {
                    sector: 32768 - 8,
                    buf: b,
                },
            )
            .unwrap();
            let c = wait_for(dev, 1).pop().unwrap();
            assert_eq!(c.result, Ok(()));
            dev.free_buffer(c.buf.unwrap()).unwrap();
        },
    );
}
