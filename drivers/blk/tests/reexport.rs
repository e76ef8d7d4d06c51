//! A storage domain re-exports a disk it received: dom0 serves a `MemDisk` to the storage
//! domain (blkfront there), which serves a window of it (`Slice` of a `FrontStorage`) to a
//! guest through its own blkback. Two hops of the real code path: guest blkfront → storage
//! blkback → storage blkfront → dom0 blkback → MemDisk.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xen_blk::back::{BackOptions, BlkBack};
use xen_blk::front::{Blkfront, BlockDevice, WaitMode};
use xen_blk::reexport::FrontStorage;
use xen_blk::storage::{MemDisk, Slice, Storage};
use xen_bus::{Bus, BusConfig, DriverError};
use xen_platform::Events;
use xen_toolstack::{DomainConfig, Timeouts, Toolstack, Vbd};

const LIMIT: Duration = Duration::from_secs(20);
/// The window the storage domain exports: from sector 2048 (1 MiB), 4096 sectors (2 MiB).
const WINDOW: (u64, u64) = (2048, 4096);

fn cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        resync_interval: Duration::from_millis(50),
        ..BusConfig::default()
    }
}

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(31) >> 3) as u8 ^ 0x3c
}

#[test]
fn storage_domain_reexports_a_disk_it_received() {
    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(Duration::from_secs(10)));
    let storage = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .unwrap();
    let guest = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let stop = AtomicBool::new(false);
    // dom0's disk: 8 MiB with a known pattern.
    let disk: Vec<u8> = (0..8 << 20).map(byte).collect();

    std::thread::scope(|sc| {
        // dom0: blkback serving the MemDisk to the storage domain.
        let dom0 = ts.dom0().clone();
        let stop0 = &stop;
        let disk0 = disk.clone();
        let dom0_xs = ts.dom0_client().unwrap();
        sc.spawn(move || {
            let mut bus = Bus::with_config(dom0_xs, 0, cfg());
            let mut d = Some(disk0);
            let back = BlkBack::new(Rc::new(dom0.clone()), BackOptions::default(), move |_| {
                let bytes = d
                    .take()
                    .ok_or_else(|| DriverError::new(16, "one disk only"))?;
                Ok(Box::new(MemDisk::from_bytes(bytes)) as Box<dyn Storage>)
            });
            back.register(&mut bus).unwrap();
            let t0 = Instant::now();
            while !stop0.load(Ordering::SeqCst) {
                let _ = bus.poll(t0.elapsed());
                let p = back.poll();
                if p.busy || p.ports.is_empty() {
                    std::thread::sleep(Duration::from_micros(100));
                } else if let Ok(port) = dom0.wait(&p.ports, Some(Duration::from_millis(1))) {
                    dom0.clear(port);
                }
            }
        });
        ts.add_vbd(&Vbd::new(storage.domid(), 0, "xvda", "/dom0/disk.img"))
            .unwrap();

        // The storage domain: blkfront for the disk it gets, blkback re-exporting a window.
        let sdom = storage.domain().clone();
        let s_xs = storage.xs_client().unwrap();
        let sid = storage.domid();
        let stop1 = &stop;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        sc.spawn(move || {
            let plat = Rc::new(sdom.clone());
            let mut bus = Bus::with_config(s_xs, sid, cfg());
            let front = Blkfront::new(plat.clone()).with_mode(WaitMode::Event);
            front.register(&mut bus).unwrap();
            let f2 = front.clone();
            let back = BlkBack::new(plat, BackOptions::default(), move |_| {
                let dev = f2.device("device/vbd/51712").ok_or_else(|| {
                    DriverError::new(19, "the storage domain's disk is not connected")
                })?;
                let s = Slice::new(FrontStorage::new(dev), WINDOW.0, WINDOW.1)
                    .ok_or_else(|| DriverError::new(22, "window outside the disk"))?;
                Ok(Box::new(s) as Box<dyn Storage>)
            });
            back.register(&mut bus).unwrap();
            let t0 = Instant::now();
            let mut told = false;
            while !stop1.load(Ordering::SeqCst) {
                let _ = bus.poll(t0.elapsed());
                front.service(&mut bus);
                if !told && front.device("device/vbd/51712").is_some() {
                    ready_tx.send(()).unwrap();
                    told = true;
                }
                let p = back.poll();
                if p.busy || p.ports.is_empty() {
                    std::thread::sleep(Duration::from_micros(100));
                } else if let Ok(port) = sdom.wait(&p.ports, Some(Duration::from_millis(1))) {
                    sdom.clear(port);
                }
            }
        });
        ready_rx
            .recv_timeout(LIMIT)
            .expect("the storage domain's blkfront connected");
        ts.add_vbd(&Vbd::new(guest.domid(), storage.domid(), "xvda", "window"))
            .unwrap();

        // The guest.
        let gplat = Rc::new(guest.domain().clone());
        let mut bus = Bus::with_config(guest.xs_client().unwrap(), guest.domid(), cfg());
        let front = Blkfront::new(gplat).with_mode(WaitMode::Event);
        front.register(&mut bus).unwrap();
        let t0 = Instant::now();
        let mut dev = loop {
            let _ = bus.poll(t0.elapsed());
            front.service(&mut bus);
            if let Some(d) = front.device("device/vbd/51712") {
                break d;
            }
            assert!(t0.elapsed() < LIMIT, "guest blkfront did not connect");
            std::thread::sleep(Duration::from_millis(1));
        };
        // The guest sees the window: its size, and dom0's bytes from 1 MiB on.
        assert_eq!(dev.sectors(), WINDOW.1);
        let mut head = vec![0u8; 256 << 10];
        dev.read(0, &mut head).unwrap();
        let off = (WINDOW.0 * 512) as usize;
        assert!(head.iter().enumerate().all(|(i, &b)| b == byte(off + i)));
        // Writes (large, through indirect requests on both hops when offered) come back.
        let data: Vec<u8> = (0..(1 << 20)).map(|i: usize| (i % 251) as u8).collect();
        dev.write(8, &data).unwrap();
        dev.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read(8, &mut back).unwrap();
        assert_eq!(back, data);
        // The window is enforced: the last sector is readable, one past it is not.
        let mut one = vec![0u8; 512];
        dev.read(WINDOW.1 - 1, &mut one).unwrap();
        assert!(dev.read(WINDOW.1, &mut one).is_err());
        stop.store(true, Ordering::SeqCst);
    });
}

/// A `FrontStorage` holds at most its buffer budget in flight: with dom0's blkback not
/// answering, 1 MiB writes are taken while they fit in a 2 MiB budget and the next one is
/// given back (`Busy`); once dom0 answers, it is taken, and every write lands on dom0's disk.
#[test]
fn front_storage_keeps_its_buffers_within_the_budget() {
    use xen_blk::storage::{Busy, Completion as SCompletion, Op};

    let ts = Toolstack::new().unwrap();
    ts.set_timeouts(Timeouts::all(Duration::from_secs(10)));
    let storage = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .unwrap();
    let stop = AtomicBool::new(false);
    let answer = AtomicBool::new(true);
    /// Stops dom0's thread when the test body ends, also by a failed assertion (the scope
    /// would otherwise wait for it forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|sc| {
        let dom0 = ts.dom0().clone();
        let (stop0, answer0) = (&stop, &answer);
        let dom0_xs = ts.dom0_client().unwrap();
        sc.spawn(move || {
            let mut bus = Bus::with_config(dom0_xs, 0, cfg());
            let back = BlkBack::new(Rc::new(dom0.clone()), BackOptions::default(), |_| {
                Ok(Box::new(MemDisk::new(16 << 11)) as Box<dyn Storage>)
            });
            back.register(&mut bus).unwrap();
            let t0 = Instant::now();
            while !stop0.load(Ordering::SeqCst) {
                let _ = bus.poll(t0.elapsed());
                if answer0.load(Ordering::SeqCst) {
                    let _ = back.poll();
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        ts.add_vbd(&Vbd::new(storage.domid(), 0, "xvda", "/dom0/disk.img"))
            .unwrap();
        let plat = Rc::new(storage.domain().clone());
        let mut bus = Bus::with_config(storage.xs_client().unwrap(), storage.domid(), cfg());
        let front = Blkfront::new(plat).with_mode(WaitMode::Event);
        front.register(&mut bus).unwrap();
        let t0 = Instant::now();
        let dev = loop {
            let _ = bus.poll(t0.elapsed());
            front.service(&mut bus);
            if let Some(d) = front.device("device/vbd/51712") {
                break d;
            }
            assert!(t0.elapsed() < LIMIT, "blkfront did not connect");
            std::thread::sleep(Duration::from_millis(1));
        };
        let _stop = StopOnDrop(&stop);
        let mut fs = FrontStorage::new(dev).with_buffer_budget(2 << 20);
        let data = |i: u64| vec![i as u8 ^ 0x5a; 1 << 20];
        answer.store(false, Ordering::SeqCst);
        for i in 0..2u64 {
            let op = Op::Write {
                sector: i * 2048,
                buf: data(i),
            };
            assert!(fs.submit(i, op).is_ok(), "write {i} within the budget");
        }
        let third = Op::Write {
            sector: 2 * 2048,
            buf: data(2),
        };
        let Err(Busy(third)) = fs.submit(2, third) else {
            panic!("a third 1 MiB write was taken beyond the 2 MiB budget");
        };
        answer.store(true, Ordering::SeqCst);
        let mut done: Vec<SCompletion> = Vec::new();
        let mut pending = Some(third);
        while done.len() < 3 {
            assert!(t0.elapsed() < LIMIT, "{} of 3 writes completed", done.len());
            fs.poll_completions(&mut |c| done.push(c));
            if let Some(op) = pending.take() {
                if let Err(Busy(op)) = fs.submit(2, op) {
                    pending = Some(op);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            done.iter().all(|c| c.result.is_ok()),
            "every write succeeded"
        );
        // read back through the same storage: every write is on dom0's disk
        for i in 0..3u64 {
            let op = Op::Read {
                sector: i * 2048,
                buf: vec![0; 1 << 20],
            };
            assert!(fs.submit(10 + i, op).is_ok());
            let mut got = None;
            while got.is_none() {
                assert!(t0.elapsed() < LIMIT, "read {i} did not complete");
                fs.poll_completions(&mut |c| got = Some(c));
                std::thread::sleep(Duration::from_millis(1));
            }
            let c = got.unwrap();
            assert!(c.result.is_ok());
            assert_eq!(c.buf.as_deref(), Some(&data(i)[..]), "write {i} read back");
        }
        stop.store(true, Ordering::SeqCst);
    });
}
