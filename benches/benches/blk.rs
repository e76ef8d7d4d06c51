//! blkfront → blkback → MemDisk on the simulator, against baselines measured in the same run.
//!
//! `cargo bench -p xenolith-benches --bench blk [-- --quick]`
//!
//! - Sequential 64 KiB and 1 MiB reads and writes, in GB/s, beside a `memcpy` of the same
//!   bytes (same buffer sizes, same total): the ratio `blk / memcpy` (target ≥ 0.8).
//! - 4 KiB random reads and writes at queue depth 1 and 32, polled and event-driven, in IOPS;
//!   printed with the ratio to the 2 M IOPS target and to a 4 KiB memcpy rate measured here.
//!
//! - 1 vs 2 queues (blkif multi-queue): the same 4 KiB random QD32 and 1 MiB sequential runs
//!   on a second guest whose blkfront asks for two queues, rounds interleaved with the
//!   one-queue guest's; the ratio `2 queues / 1 queue`. Our blkback serves every queue of a
//!   device from one thread (a unikernel has one vCPU), so no gain is expected here: the
//!   number says what the second ring costs.
//!
//! The storage domain (domid 1) runs blkback in its own thread (polling its rings in polled
//! mode, waiting on event channels in event mode); the guest runs blkfront. Numbers are medians
//! of rounds; the machine is shared, so compare ratios, not absolute values.

mod common;

use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bus_cfg, median};
use xen_blk::back::{BackOptions, BackPoll, BlkBack};
use xen_blk::front::{BlkDevice, Blkfront, BlockDevice, Buffer, Request, WaitMode, DEFAULT_LIMITS};
use xen_blk::negotiate::FrontLimits;
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::Bus;
use xen_platform::Events;
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Guest, Toolstack, Vbd};

const DISK_MIB: u64 = 256;

fn serve(storage: &Guest, polled: &AtomicBool, stop: &AtomicBool) {
    let mut bus = Bus::with_config(storage.xs_client().unwrap(), storage.domid(), bus_cfg());
    let dom = storage.domain().clone();
    let back = BlkBack::new(Rc::new(dom.clone()), BackOptions::default(), |_| {
        // Every page written before the run: a zeroed Vec would be the kernel's shared zero
        // page until first written (reads of it are cache hits, and the first write of each
        // page faults and shoots down TLBs) — not what a RAM disk is.
        Ok(
            Box::new(MemDisk::from_bytes(vec![0xa5; (DISK_MIB << 20) as usize]))
                as Box<dyn Storage>,
        )
    });
    back.register(&mut bus).unwrap();
    let t0 = Instant::now();
    let mut n = 0u32;
    let mut p = BackPoll::default();
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) {
            let _ = bus.poll(t0.elapsed());
        }
        back.set_polled(polled.load(Ordering::Relaxed));
        back.poll_into(&mut p);
        if polled.load(Ordering::Relaxed) || p.busy {
            continue;
        }
        if p.ports.is_empty() {
            std::thread::sleep(Duration::from_micros(100));
        } else if let Ok(port) = dom.wait(&p.ports, Some(Duration::from_millis(1))) {
            dom.clear(port);
        }
    }
}

/// Keeps `depth` requests of `size` bytes in flight for `dur`; returns (requests, bytes, secs).
fn run(
    dev: &mut BlkDevice<Rc<Domain>>,
    size: usize,
    depth: usize,
    write: bool,
    random: bool,
    dur: Duration,
) -> (u64, u64, f64) {
    let span = (DISK_MIB << 20) / size as u64;
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = 0u64;
    let mut pick = move || {
        if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % span
        } else {
            next = (next + 1) % span;
            next
        }
    };
    let mut free: Vec<Buffer> = (0..depth)
        .map(|_| {
            let mut b = dev.alloc_buffer(size).unwrap();
            b.as_mut_slice().fill(0x5a);
            b
        })
        .collect();
    let (mut reqs, mut bytes, mut outstanding) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    let end = start + dur;
    loop {
        let now_done = Instant::now() >= end;
        if !now_done {
            while let Some(buf) = free.pop() {
                let sector = pick() * (size as u64 / 512);
                let req = if write {
                    Request::Write { sector, buf }
                } else {
                    Request::Read { sector, buf }
                };
                match dev.submit(0, req) {
                    Ok(()) => outstanding += 1,
                    Err(rej) => {
                        free.push(rej.buf.expect("a refused request gives its buffer back"));
                        break;
                    }
                }
            }
        }
        if now_done && outstanding == 0 {
            break;
        }
        dev.poll(&mut |c| {
            c.result.expect("benchmark I/O failed");
            outstanding -= 1;
            reqs += 1;
            bytes += size as u64;
            free.push(c.buf.expect("buffer back"));
        })
        .unwrap();
        if outstanding > 0 {
            dev.wait(Duration::from_millis(10)).unwrap();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for b in free {
        dev.free_buffer(b).unwrap();
    }
    (reqs, bytes, secs)
}

/// memcpy of the same bytes the benchmark moves: `size`-byte copies between 8 small buffers
/// and `disk` (disk-sized, every page already written), at sequential or random offsets like
/// the requests — from the disk for a read, into it for a write — for `dur`. Bytes per second.
fn memcpy_rate(disk: &mut [u8], size: usize, random: bool, write: bool, dur: Duration) -> f64 {
    let mut backing: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; size + 4096]).collect();
    // Page-aligned, as the frontend's I/O buffers are.
    let mut bufs: Vec<&mut [u8]> = backing.iter_mut().map(|b| aligned(b, size)).collect();
    let span = disk.len() / size;
    let (mut rng, mut next) = (0x1234_5678_9abc_def0u64, 0usize);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for k in 0..16 {
            let slot = if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % span as u64) as usize
            } else {
                next = (next + 1) % span;
                next
            };
            let at = &mut disk[slot * size..(slot + 1) * size];
            if write {
                at.copy_from_slice(black_box(bufs[k % 8]));
            } else {
                bufs[k % 8].copy_from_slice(black_box(at));
            }
        }
        black_box(&mut *disk);
        black_box(&mut bufs);
        n += 16;
    }
    (n * size as u64) as f64 / start.elapsed().as_secs_f64()
}

/// The first `len` bytes of `v` from its first page boundary (`v` has a page to spare).
fn aligned(v: &mut [u8], len: usize) -> &mut [u8] {
    let start = v.as_ptr().align_offset(4096).min(4096);
    &mut v[start..start + len]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT`: run only the cases whose label contains TEXT (e.g. "1024 KiB read",
    // "polled QD32"), to profile one of them.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |label: &str| only.as_deref().is_none_or(|o| label.contains(o));
    let rounds = if quick { 1 } else { 3 };
    let dur = Duration::from_millis(if quick { 150 } else { 500 });

    let mut disk_backing = vec![0x3cu8; (DISK_MIB << 20) as usize + 4096];
    // Page-aligned, as MemDisk's bytes are.
    let disk = aligned(&mut disk_backing, (DISK_MIB << 20) as usize);
    let ts = Toolstack::new().unwrap();
    let storage = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .unwrap();
    let guest = ts.create_domain("guest", DomainConfig::default()).unwrap();
    ts.add_vbd(&Vbd::new(guest.domid(), storage.domid(), "xvda", "ram"))
        .unwrap();
    let guest2 = ts
        .create_domain("guest-mq", DomainConfig::default())
        .unwrap();
    ts.add_vbd(&Vbd::new(guest2.domid(), storage.domid(), "xvda", "ram"))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let polled = Arc::new(AtomicBool::new(true));
    std::thread::scope(|sc| {
        let (st, po) = (stop.clone(), polled.clone());
        let storage = &storage;
        sc.spawn(move || serve(storage, &po, &st));

        let (mut dev, _bus) = attach(&guest, 1);
        let cfg = dev.config().unwrap();
        println!(
            "blk bench: ring {} pages, {} requests, {} segments/request; {} round(s) of {:?}",
            cfg.ring_pages(),
            cfg.max_requests,
            cfg.max_segments,
            rounds,
            dur
        );

        println!("sequential (polled), GB/s, ratio to memcpy of the same bytes (target ≥ 0.8):");
        for size in [64 << 10, 1 << 20] {
            for write in [false, true] {
                let label = format!(
                    "{:>4} KiB {:5}",
                    size >> 10,
                    if write { "write" } else { "read" }
                );
                if !wanted(&label) {
                    continue;
                }
                let mut blk = Vec::new();
                let mut mc = Vec::new();
                for _ in 0..rounds {
                    let (_, bytes, secs) = run(&mut dev, size, 8, write, false, dur);
                    blk.push(bytes as f64 / secs);
                    mc.push(memcpy_rate(disk, size, false, write, dur));
                }
                let (b, m) = (median(blk), median(mc));
                println!(
                    "  {label}: blk {:6.2} GB/s  memcpy {:6.2} GB/s  ratio {:.2}",
                    b / 1e9,
                    m / 1e9,
                    b / m
                );
            }
        }

        println!("4 KiB random, IOPS (target 2 M at QD32 polled), ratio to target and to a 4 KiB memcpy rate:");
        let mc4r = memcpy_rate(disk, 4096, true, false, dur) / 4096.0;
        let mc4w = memcpy_rate(disk, 4096, true, true, dur) / 4096.0;
        for mode in [WaitMode::Polled, WaitMode::Event] {
            polled.store(mode == WaitMode::Polled, Ordering::Relaxed);
            dev.set_mode(mode);
            for depth in [1, 32] {
                for write in [false, true] {
                    let label = format!(
                        "{:6} QD{:<2} {:5}",
                        if mode == WaitMode::Polled {
                            "polled"
                        } else {
                            "event"
                        },
                        depth,
                        if write { "write" } else { "read" }
                    );
                    if !wanted(&label) {
                        continue;
                    }
                    let mut iops = Vec::new();
                    for _ in 0..rounds {
                        let (reqs, _, secs) = run(&mut dev, 4096, depth, write, true, dur);
                        iops.push(reqs as f64 / secs);
                    }
                    let i = median(iops);
                    let mc4 = if write { mc4w } else { mc4r };
                    println!(
                        "  {label}: {:9.0} IOPS  ratio to 2M {:.3}  to memcpy-4K {:.4}",
                        i,
                        i / 2e6,
                        i / mc4
                    );
                }
            }
        }

        println!("1 vs 2 queues (polled), ratio 2 queues / 1 queue (rounds interleaved):");
        polled.store(true, Ordering::Relaxed);
        dev.set_mode(WaitMode::Polled);
        let (mut dev2, _bus2) = attach(&guest2, 2);
        assert_eq!(
            dev2.config().unwrap().queues,
            2,
            "the backend took 2 queues"
        );
        for (size, depth, random) in [(4096, 32, true), (1 << 20, 8, false)] {
            for write in [false, true] {
                let label = format!(
                    "queues {:>4} KiB QD{depth} {:5}",
                    size >> 10,
                    if write { "write" } else { "read" }
                );
                if !wanted(&label) {
                    continue;
                }
                let (mut one, mut two) = (Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let (r, _, secs) = run(&mut dev, size, depth, write, random, dur);
                    one.push(r as f64 / secs);
                    let (r, _, secs) = run(&mut dev2, size, depth, write, random, dur);
                    two.push(r as f64 / secs);
                }
                let (a, b) = (median(one), median(two));
                println!(
                    "  {label}: 1 queue {a:9.0} req/s  2 queues {b:9.0} req/s  ratio {:.2}",
                    b / a
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// blkfront in `guest` (polled, at most `queues` queues) on its own bus, once its disk is
/// connected; the bus is returned to keep the device's watches alive.
fn attach(
    guest: &Guest,
    queues: u32,
) -> (
    BlkDevice<Rc<Domain>>,
    Bus<xen_store_host::OwnedRing<Domain>>,
) {
    let dom = Rc::new(guest.domain().clone());
    let mut bus = Bus::with_config(guest.xs_client().unwrap(), guest.domid(), bus_cfg());
    let front = Blkfront::new(dom)
        .with_mode(WaitMode::Polled)
        .with_limits(FrontLimits {
            max_queues: queues,
            ..DEFAULT_LIMITS
        });
    front.register(&mut bus).unwrap();
    let t0 = Instant::now();
    loop {
        let _ = bus.poll(t0.elapsed());
        front.service(&mut bus);
        if let Some(d) = front.connected().first().and_then(|n| front.device(n)) {
            return (d, bus);
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no connection");
        std::thread::sleep(Duration::from_millis(1));
    }
}
