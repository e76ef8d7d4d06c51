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

/// A buffer the application drops instead of giving back is not lost: it goes to its
/// device's return list and the device frees its pages at its next call.
#[test]
fn a_dropped_buffer_is_reclaimed_at_the_next_call() {
    for persistent in [false, true] {
        let mut s = Setup::new(WaitMode::Event, false, false);
        let mut offer = modern_offer();
        offer.persistent = persistent;
        let _be = s.backend(BackKeys::from_offer(&offer), 16 << 20, Behaviour::Honest);
        let mut dev = s.connect();
        // Warm up: the device's own pages (bounce buffer, indirect pages) exist before we count.
        dev.write(0, &pattern(64 << 10, 3)).unwrap();
        let base = s.guest.domain().stats().unwrap();
        let mut buf = dev.alloc_buffer(64 << 10).unwrap();
        buf.as_mut_slice().copy_from_slice(&pattern(64 << 10, 4));
        dev.submit(7, xen_blk::front::Request::Write { sector: 0, buf })
            .unwrap();
        let end = Instant::now() + LIMIT;
        let mut back = None;
        while back.is_none() {
            assert!(Instant::now() < end, "no completion");
            dev.poll(&mut |c| back = c.buf).unwrap();
            if back.is_none() {
                dev.wait(Duration::from_millis(10)).unwrap();
            }
        }
        let buf = back.unwrap();
        assert!(s.guest.domain().stats().unwrap().pages > base.pages);
        drop(buf);
        // The next call reclaims it.
        dev.poll(&mut |_| {}).unwrap();
        // Its pages go back to the platform; no grant of them outlived the request (with
        // persistent grants only the device's own bounce pages, made by the warm-up, are
        // granted for the connection).
        let now = s.guest.domain().stats().unwrap();
        assert_eq!(now.pages, base.pages, "persistent {persistent}");
        assert_eq!(now.grants, base.grants, "persistent {persistent}");
    }
}

/// The guest's XenStore connection is reset during the handshake (a ring reconnection: the
/// daemon forgets the guest's watches, as when xenstored restarts or `XS_RESET_WATCHES`):
/// after `Bus::store_reset` the device still connects and serves I/O, and a disk added later
/// is still found (its class watch was registered again).
#[test]
fn xenstore_connection_reset_during_the_handshake() {
    let mut s = Setup::new(WaitMode::Event, false, false);
    // The frontend sees its device and waits for a backend that is not there yet.
    s.until("frontend adopted", |s| s.front.state(XVDA).is_some());
    let client = s.bus.client();
    client
        .transport_mut()
        .reconnect(Duration::from_secs(5))
        .unwrap();
    client.reset();
    s.bus.store_reset().unwrap();
    let _be = s.backend(
        BackKeys::from_offer(&modern_offer()),
        16 << 20,
        Behaviour::Honest,
    );
    let mut dev = s.connect();
    dev.write(0, &pattern(8192, 3)).unwrap();
    let mut back = vec![0u8; 8192];
    dev.read(0, &mut back).unwrap();
    assert_eq!(back, pattern(8192, 3));
    // A second disk, added after the reset, is found.
    let vbd = xen_toolstack::Vbd::new(s.guest.domid(), s.back.id(), "xvdb", "/disk2.img");
    s.ts.add_vbd(&vbd).unwrap();
    s.until("second disk adopted", |s| {
        s.front.state("device/vbd/51728").is_some()
    });
}
