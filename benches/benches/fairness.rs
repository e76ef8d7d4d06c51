//! Fairness of one blkback between two guests, on the simulator: an honest guest's 4 KiB reads
//! at queue depth 1, alone and while a greedy guest keeps its ring full of the largest
//! requests (1 MiB writes through indirect segments, 32 in flight). Ratio in one run:
//! `with greedy / alone` (target ≥ 0.5, issue "hostile peers": each ring gets a budgeted round
//! and rings are served round-robin).
//!
//! `cargo bench -p xenolith-benches --bench fairness [-- --quick]`
//!
//! The storage domain serves in event mode in its own thread, each guest runs in its own
//! thread. Numbers are medians of rounds; the machine is shared, so compare the ratio.

mod common;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{bus_cfg, median};
use xen_blk::back::{BackOptions, BackPoll, BlkBack};
use xen_blk::front::{BlkDevice, Blkfront, BlockDevice, Buffer, Request, WaitMode};
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::store::client::Transport;
use xen_bus::Bus;
use xen_platform::Events;
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Guest, Toolstack, Vbd};

const DISK_MIB: u64 = 64;

/// The storage domain: blkback over RAM disks, event-driven.
fn serve(storage: &Guest, stop: &AtomicBool) {
    let mut bus = Bus::with_config(storage.xs_client().unwrap(), storage.domid(), bus_cfg());
    let dom = storage.domain().clone();
    let back = BlkBack::new(Rc::new(dom.clone()), BackOptions::default(), |_| {
        Ok(
            Box::new(MemDisk::from_bytes(vec![0xa5; (DISK_MIB << 20) as usize]))
                as Box<dyn Storage>,
        )
    });
    back.register(&mut bus).unwrap();
    let t0 = Instant::now();
    let mut p = BackPoll::default();
    while !stop.load(Ordering::Relaxed) {
        let _ = bus.poll(t0.elapsed());
        back.poll_into(&mut p);
        if p.busy {
            continue;
        }
        if p.ports.is_empty() {
            std::thread::sleep(Duration::from_micros(100));
        } else if let Ok(port) = dom.wait(&p.ports, Some(Duration::from_millis(1))) {
            dom.clear(port);
        }
    }
}

/// A guest's first disk, event-driven.
fn connect(g: &Guest) -> (Bus<impl Transport>, BlkDevice<Rc<Domain>>) {
    let dom = Rc::new(g.domain().clone());
    let mut bus = Bus::with_config(g.xs_client().unwrap(), g.domid(), bus_cfg());
    let front = Blkfront::new(dom).with_mode(WaitMode::Event);
    front.register(&mut bus).unwrap();
    let dev = front
        .first_disk(&mut bus, Duration::from_secs(20), &mut || {
            std::thread::sleep(Duration::from_millis(1))
        })
        .expect("disk connected");
    (bus, dev)
}

/// Keeps `depth` requests of `size` bytes in flight while `on`; adds the bytes written to
/// `done`.
fn greedy(
    dev: &mut BlkDevice<Rc<Domain>>,
    size: usize,
    depth: usize,
    on: &AtomicBool,
    done: &AtomicU64,
) {
    let span = (DISK_MIB << 20) / size as u64;
    let mut free: Vec<Buffer> = (0..depth)
        .map(|_| dev.alloc_buffer(size).unwrap())
        .collect();
    let mut next = 0u64;
    while on.load(Ordering::Relaxed) {
        while let Some(buf) = free.pop() {
            next = (next + 1) % span;
            let req = Request::Write {
                sector: next * (size as u64 / 512),
                buf,
            };
            if let Err(r) = dev.submit(next, req) {
                free.push(r.buf.expect("buffer back"));
                break;
            }
        }
        dev.poll(&mut |c| {
            assert_eq!(c.result, Ok(()), "greedy write");
            done.fetch_add(size as u64, Ordering::Relaxed);
            free.push(c.buf.expect("buffer back"))
        })
        .unwrap();
        let _ = dev.wait(Duration::from_millis(1));
    }
}

/// 4 KiB reads at queue depth 1 for `dur`: IOPS.
fn honest(dev: &mut BlkDevice<Rc<Domain>>, dur: Duration) -> f64 {
    let mut buf = Some(dev.alloc_buffer(4096).unwrap());
    let (t0, mut n, mut rng) = (Instant::now(), 0u64, 0x9e37_79b9_7f4a_7c15u64);
    while t0.elapsed() < dur {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let sector = (rng % ((DISK_MIB << 20) / 4096)) * 8;
        let req = Request::Read {
            sector,
            buf: buf.take().unwrap(),
        };
        buf = Some(dev.run(req).unwrap().expect("buffer back"));
        n += 1;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let dur = Duration::from_millis(if quick { 300 } else { 1000 });
    let ts = Toolstack::new().unwrap();
    let storage = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .unwrap();
    let g_honest = ts.create_domain("honest", DomainConfig::default()).unwrap();
    let g_greedy = ts.create_domain("greedy", DomainConfig::default()).unwrap();
    for g in [&g_honest, &g_greedy] {
        ts.add_vbd(&Vbd::new(g.domid(), storage.domid(), "xvda", "ram"))
            .unwrap();
    }
    let stop = AtomicBool::new(false);
    let greedy_on = AtomicBool::new(false);
    let greedy_stop = AtomicBool::new(false);
    let greedy_ready = AtomicU64::new(0);
    let greedy_bytes = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| serve(&storage, &stop));
        sc.spawn(|| {
            let (mut bus, mut dev) = connect(&g_greedy);
            greedy_ready.store(1, Ordering::SeqCst);
            let t0 = Instant::now();
            while !greedy_stop.load(Ordering::Relaxed) {
                if greedy_on.load(Ordering::Relaxed) {
                    greedy(&mut dev, 1 << 20, 32, &greedy_on, &greedy_bytes);
                    let _ = bus.poll(t0.elapsed());
                } else {
                    let _ = bus.poll(t0.elapsed());
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let (_bus, mut dev) = connect(&g_honest);
        while greedy_ready.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (mut alone, mut loaded, mut bulk) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            greedy_on.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            alone.push(honest(&mut dev, dur));
            greedy_on.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            let (b0, t0) = (greedy_bytes.load(Ordering::Relaxed), Instant::now());
            loaded.push(honest(&mut dev, dur));
            let b = greedy_bytes.load(Ordering::Relaxed) - b0;
            bulk.push(b as f64 / t0.elapsed().as_secs_f64());
        }
        greedy_on.store(false, Ordering::SeqCst);
        greedy_stop.store(true, Ordering::SeqCst);
        let (a, l, g) = (median(alone), median(loaded), median(bulk));
        println!(
            "fairness: honest guest 4 KiB QD1 reads alone {a:.0} IOPS, beside a greedy guest \
             (1 MiB writes, 32 in flight, meanwhile {:.2} GB/s) {l:.0} IOPS: ratio {:.2} \
             (target >= 0.5)",
            g / 1e9,
            l / a
        );
        stop.store(true, Ordering::SeqCst);
    });
}
