//! Our blkfront against our blkback, both on one test thread in the simulator (the storage
//! domain serves a MemDisk to a guest): direct and indirect I/O, flush, discard.

mod back_common;

use std::rc::Rc;
use std::time::Instant;

use back_common::*;
use xen_blk::back::BackOptions;
use xen_blk::front::{BlkDevice, Blkfront, BlockDevice, Completion, Request, WaitMode};
use xen_bus::{Bus, BusConfig};
use xen_sim::Domain;

const XVDA: &str = "device/vbd/51712";

struct Both {
    w: World,
    fbus: Bus<xen_store_host::OwnedRing<Domain>>,
    front: Blkfront<Rc<Domain>>,
}

impl Both {
    fn new() -> (Both, BlkDevice<Rc<Domain>>) {
        let mut w = World::new(BackOptions::default(), DiskKind::Mem);
        let g = w.guest("guest");
        let cfg = BusConfig {
            handshake_timeout: std::time::Duration::from_secs(5),
            ..BusConfig::default()
        };
        let mut fbus = Bus::with_config(g.xs_client().unwrap(), g.domid(), cfg);
        let front = Blkfront::new(Rc::new(g.domain().clone())).with_mode(WaitMode::Polled);
        front.register(&mut fbus).unwrap();
        w.add_disk(&g, |v| v);
        let mut b = Both { w, fbus, front };
        let end = Instant::now() + LIMIT;
        let dev = loop {
            b.poll();
            if let Some(d) = b.front.device(XVDA) {
                break d;
            }
            assert!(Instant::now() < end, "not connected: {:?}", b.w.events);
        };
        (b, dev)
    }

    fn poll(&mut self) {
        self.w.poll();
        self.fbus.poll(self.w.t0.elapsed()).unwrap();
        self.front.service(&mut self.fbus);
    }

    fn run(&mut self, dev: &mut BlkDevice<Rc<Domain>>, req: Request) -> Completion {
        dev.submit(1, req).unwrap();
        let end = Instant::now() + LIMIT;
        loop {
            self.poll();
            let mut got = None;
            dev.poll(&mut |c| got = Some(c)).unwrap();
            if let Some(c) = got {
                return c;
            }
            assert!(Instant::now() < end, "no completion");
        }
    }
}

/// Write `len` bytes at `sector` and read them back.
fn write_read(b: &mut Both, dev: &mut BlkDevice<Rc<Domain>>, sector: u64, len: usize, seed: u8) {
    let mut buf = dev.alloc_buffer(len).unwrap();
    for (i, x) in buf.as_mut_slice().iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(seed);
    }
    let c = b.run(dev, Request::Write { sector, buf });
    let err = b.w.read(&format!(
        "/local/domain/{}/error/{XVDA}/error",
        b.fbus.domid()
    ));
    assert_eq!(c.result, Ok(()), "write {len}: {err:?}");
    let buf = dev.alloc_buffer(len).unwrap();
    let c = b.run(dev, Request::Read { sector, buf });
    assert_eq!(c.result, Ok(()), "read {len}");
    let data = c.buf.unwrap();
    assert!(data
        .as_slice()
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u8).wrapping_mul(seed)));
}

#[test]
fn blkfront_and_blkback_direct_io_flush_discard() {
    let (mut b, mut dev) = Both::new();
    assert_eq!(dev.sectors(), DISK_SECTORS);
    assert!(!dev.read_only());
    // At most 11 pages: direct requests.
    write_read(&mut b, &mut dev, 16, 8192, 3);
    write_read(&mut b, &mut dev, 100, 11 * 4096, 5);
    assert_eq!(b.run(&mut dev, Request::Flush).result, Ok(()));
    let c = b.run(
        &mut dev,
        Request::Discard {
            sector: 16,
            count: 8,
            secure: false,
        },
    );
    assert_eq!(c.result, Ok(()));
    let buf = dev.alloc_buffer(4096).unwrap();
    let c = b.run(&mut dev, Request::Read { sector: 16, buf });
    assert!(c.buf.unwrap().as_slice().iter().all(|&x| x == 0));
}

#[test]
fn blkfront_and_blkback_indirect_io() {
    let (mut b, mut dev) = Both::new();
    write_read(&mut b, &mut dev, 512, 512 << 10, 7);
}
