//! Fairness of our xenstored between two guests, on the simulator: an honest guest's `READ`
//! round trips, alone and while a greedy guest floods the daemon — 2000-byte writes in a tight loop,
//! a watch on what it writes (an event per write), and a transaction every eighth write. Ratio
//! in one run: `with the flood / alone` (target ≥ 0.5, issue "hostile peers").
//!
//! `cargo bench -p xenolith-benches --bench xs_fairness [-- --quick]`
//!
//! Each guest talks to the daemon over its own shared ring; the daemon's ring service thread
//! reads at most a few requests per ring per round. Medians of rounds; compare the ratio.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::median;
use xen_bus::store::client::Store;
use xen_toolstack::{DomainConfig, Toolstack};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let dur = Duration::from_millis(if quick { 300 } else { 1000 });
    let ts = Toolstack::new().unwrap();
    let honest = ts.create_domain("honest", DomainConfig::default()).unwrap();
    let greedy = ts.create_domain("greedy", DomainConfig::default()).unwrap();
    let on = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let greedy_ops = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut xs = greedy.xs_client().unwrap();
            xs.watch("data", "flood").unwrap();
            // As large as a node may be (the entry-size quota, 2048 bytes as in C xenstored).
            let value = vec![b'x'; 2000];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !on.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let path = format!("data/k{}", i % 16);
                if i.is_multiple_of(8) {
                    let _ = xs.transact(|tx| tx.write(&path, &value));
                } else {
                    xs.write(&path, &value).unwrap();
                }
                // Take what the watch queued (a guest that reads its events).
                let _ = xs.poll_watch_events();
                while xs.take_watch_event(None).is_some() {}
                i += 1;
                greedy_ops.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut xs = honest.xs_client().unwrap();
        let mut round_trips = |d: Duration| {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < d {
                xs.read("name").unwrap();
                n += 1;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        };
        let (mut alone, mut loaded, mut flood) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            on.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            alone.push(round_trips(dur));
            on.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            let (g0, t0) = (greedy_ops.load(Ordering::Relaxed), Instant::now());
            loaded.push(round_trips(dur));
            let g = greedy_ops.load(Ordering::Relaxed) - g0;
            flood.push(g as f64 / t0.elapsed().as_secs_f64());
        }
        on.store(false, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let (a, l, f) = (median(alone), median(loaded), median(flood));
        assert!(f > 0.0, "the flood ran");
        println!(
            "xs fairness: honest guest READ round trips alone {a:.0}/s, beside a guest flooding \
             2 KB writes, watch events and transactions ({f:.0} ops/s) {l:.0}/s: ratio {:.2} \
             (target >= 0.5)",
            l / a
        );
    });
}
