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
use xen_blk::front::{BlockDevice, Request, WaitMode};
use xen_blk::negotiate::FlushMode;
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::Bus;
use xen_platform::Events;

#[test]
fn blkfront_with_xenolith_blkback_in_a_storage_domain() {
    for mode in [WaitMode::Event, WaitMode::Polled] {
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
                let bb = BlkBack::new(Rc::new(dom.clone()), BackOptions::default(), |_| {
                    Ok(Box::new(MemDisk::new(32768)) as Box<dyn Storage>)
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
            let cfg = dev.config().unwrap();
            assert_eq!(cfg.ring_page_order, 4);
            assert_eq!(cfg.max_segments, 256);
            assert_eq!(cfg.flush, FlushMode::FlushCache);
            assert!(cfg.discard.is_some());
            assert_eq!(dev.sector_count(), 32768);
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
                    Request::Write {
                        sector: 4096 + i * 8,
                        buf: b,
                    },
                    i,
                )
                .unwrap();
            }
            let mut done = Vec::new();
            let end = Instant::now() + LIMIT;
            while done.len() < 64 {
                assert!(Instant::now() < end, "{} of 64", done.len());
                dev.poll(&mut |c| done.push(c)).unwrap();
                dev.wait(Duration::from_millis(5)).unwrap();
            }
            for c in done {
                assert_eq!(c.result, Ok(()), "tag {}", c.tag);
                dev.free_buffer(c.buffer.unwrap()).unwrap();
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
            stop.store(true, Ordering::SeqCst);
            back.join().unwrap();
        });
    }
}
