//! blkfront's life cycle with the toolstack: `xl block-detach` of a device that did I/O
//! closes both ends and leaves the guest holding exactly what it held before the device
//! came (pages, grants, ports): ring, indirect pages, bounce buffer and event channel are
//! all released, including the ring pages the backend still mapped when the frontend
//! disconnected.

mod front_common;

use std::time::{Duration, Instant};

use front_common::*;
use xen_blk::front::{BlockDevice, DeviceState, WaitMode};

#[test]
fn block_detach_after_io_releases_everything() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    let base = s.guest.domain().stats().unwrap();
    let be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        16 << 20,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    let data = pattern(1 << 20, 1);
    dev.write(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(0, &mut back).unwrap();
    assert_eq!(back, data);
    let held = s.guest.domain().stats().unwrap();
    assert!(held.pages > base.pages && held.grants > base.grants && held.ports > base.ports);
    let fe = s.guest.domid();
    let Setup {
        ts, bus, front, t0, ..
    } = &mut s;
    std::thread::scope(|sc| {
        let detach = sc.spawn(|| ts.block_detach(fe, "xvda"));
        let end = Instant::now() + LIMIT;
        while !detach.is_finished() {
            assert!(Instant::now() < end, "block-detach did not return");
            let _ = bus.poll(t0.elapsed());
            front.service(bus);
            std::thread::sleep(Duration::from_millis(1));
        }
        detach.join().unwrap().unwrap();
    });
    assert_eq!(s.state(), Some(DeviceState::Closed));
    assert!(dev.read(0, &mut [0u8; 512]).is_err());
    s.until("everything released", |s| {
        s.guest.domain().stats().unwrap() == base
    });
    drop(be);
}
