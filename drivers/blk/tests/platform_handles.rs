//! One platform-handle convention (`xen_platform::PlatformRef`) for every driver: a `'static`
//! reference (what an image has: `&'static Xen`), an `Rc` and an `Arc` all work, in blkfront
//! and in blkback alike.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_blk::back::{BackOptions, BlkBack};
use xen_blk::front::{BlkDevice, Blkfront, BlockDevice, WaitMode};
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::{Bus, BusConfig};
use xen_platform::{Events, PlatformRef};
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Toolstack, Vbd};

/// Compile-time: the three kinds of handle are platform handles, and both drivers take them.
#[allow(dead_code)]
fn handles_are_platform_refs() {
    fn handle<H: PlatformRef>() {}
    handle::<&'static Domain>();
    handle::<Rc<Domain>>();
    handle::<Arc<Domain>>();
    // The old path still names the same trait.
    fn old_path<H: xen_blk::front::PlatformRef>() {}
    old_path::<&'static Domain>();
    fn drivers<H: PlatformRef>(_: Option<(BlkBack<H>, Blkfront<H>, BlkDevice<H>)>) {}
    drivers::<&'static Domain>(None);
    drivers::<Rc<Domain>>(None);
    drivers::<Arc<Domain>>(None);
}

/// blkback on a `&'static Domain` (as an image holds `&'static Xen`), blkfront on an
/// `Arc<Domain>`: the handshake and a write read back.
#[test]
fn blkback_on_a_static_reference_serves_blkfront_on_an_arc() {
    let cfg = BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    };
    let ts = Toolstack::new().unwrap();
    let guest = ts
        .create_domain("handles", DomainConfig::default())
        .unwrap();
    ts.add_vbd(&Vbd::new(guest.domid(), 0, "xvda", "ram"))
        .unwrap();
    let stop = AtomicBool::new(false);
    /// Stops the backend thread even when an assertion fails (the scope joins it).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|sc| {
        let _stop = Stop(&stop);
        let dom0 = ts.dom0().clone();
        let xs = ts.dom0_client().unwrap();
        let stop0 = &stop;
        let server = sc.spawn(move || {
            // Leaked once, as a platform that lives as long as the program.
            let plat: &'static Domain = Box::leak(Box::new(dom0));
            let mut bus = Bus::with_config(xs, 0, cfg);
            let back = BlkBack::new(plat, BackOptions::default(), |_| {
                Ok(Box::new(MemDisk::new(2048)) as Box<dyn Storage>)
            });
            back.register(&mut bus).unwrap();
            let t0 = Instant::now();
            while !stop0.load(Ordering::SeqCst) {
                let _ = bus.poll(t0.elapsed());
                let p = back.poll();
                if !p.busy && !p.ports.is_empty() {
                    if let Ok(port) = plat.wait(&p.ports, Some(Duration::from_millis(1))) {
                        plat.clear(port);
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let plat = Arc::new(guest.domain().clone());
        let mut bus = Bus::with_config(guest.xs_client().unwrap(), guest.domid(), cfg);
        let front = Blkfront::new(plat).with_mode(WaitMode::Event);
        front.register(&mut bus).unwrap();
        let t0 = Instant::now();
        let mut dev = loop {
            let _ = bus.poll(t0.elapsed());
            front.service(&mut bus);
            if let Some(dev) = front.connected().first().and_then(|n| front.device(n)) {
                break dev;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no disk connected");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(dev.sectors(), 2048);
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        dev.write(8, &data).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read(8, &mut back).unwrap();
        assert_eq!(back, data);
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap();
    });
}
