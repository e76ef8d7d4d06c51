//! Fairness of our xenstored between guests, on the simulator: an honest guest's `READ` round
//! trips, alone and while a greedy guest floods the daemon. Three floods, each from a fresh
//! guest:
//! - `sync`: 2000-byte writes in a tight loop, a watch on what it writes (an event per write),
//!   a transaction every eighth write — each request waits for its reply;
//! - `pipelined`: the same writes sent 16 at a time without waiting (raw messages on its ring),
//!   the replies drained after each batch;
//! - `silent`: writes sent as fast as its ring takes them, replies never read (the daemon's
//!   reply ring and queue for it fill up).
//!
//! Ratio in one run per flood: `with the flood / alone` (target ≥ 0.5, issue "hostile peers").
//!
//! `cargo bench -p xenolith-benches --bench xs_fairness [-- --quick]`
//!
//! Each guest talks to the daemon over its own shared ring; the daemon's ring service thread
//! reads at most a few requests per ring per round. Medians of rounds; compare the ratios.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::median;
use xen_bus::store::client::{Store, Transport};
use xen_bus::store::{Path, Request};
use xen_toolstack::{DomainConfig, Guest, Toolstack};

#[derive(Clone, Copy, Debug)]
enum Flood {
    Sync,
    Pipelined,
    Silent,
}

/// Run `flood` from `greedy` while `on` (counting requests sent in `ops`) until `stop`.
fn flood(kind: Flood, greedy: &Guest, on: &AtomicBool, stop: &AtomicBool, ops: &AtomicU64) {
    // As large as a node may be (the entry-size quota, 2048 bytes as in C xenstored).
    let value = vec![b'x'; 2000];
    let wait_on = || {
        while !on.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    match kind {
        Flood::Sync => {
            let mut xs = greedy.xs_client().unwrap();
            xs.watch("data", "flood").unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                wait_on();
                let path = format!("data/k{}", i % 16);
                if i.is_multiple_of(8) {
                    let _ = xs.transact(|tx| tx.write(&path, &value));
                } else {
                    let _ = xs.write(&path, &value);
                }
                // Take what the watch queued (a guest that reads its events).
                let _ = xs.poll_watch_events();
                while xs.take_watch_event(None).is_some() {}
                i += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Flood::Pipelined | Flood::Silent => {
            let mut t = greedy.take_transport().unwrap();
            let mut buf = vec![0u8; 65536];
            let mut i = 0u32;
            // A send that times out may have left half a message on the ring: after that the
            // stream is not ours to continue (the silent guest then just sits there).
            let mut stuck = false;
            while !stop.load(Ordering::Relaxed) {
                wait_on();
                if stuck {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                for _ in 0..16 {
                    let req = Request::Write {
                        path: Path::new(&format!("data/p{}", i % 16)).unwrap(),
                        value: value.clone(),
                    };
                    let bytes = req.to_message(i, 0).unwrap().encode().unwrap();
                    i = i.wrapping_add(1);
                    // Silent: once its replies fill up the daemon stops reading this ring.
                    if t.send(&bytes, Duration::from_secs(1)).is_err() {
                        stuck = true;
                        break;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                if let Flood::Pipelined = kind {
                    while matches!(t.recv(&mut buf, Duration::ZERO), Ok(n) if n > 0) {}
                }
            }
        }
    }
}

fn measure(ts: &Toolstack, kind: Flood, rounds: usize, dur: Duration) -> (f64, f64, f64) {
    let honest = ts
        .create_domain(&format!("honest-{kind:?}"), DomainConfig::default())
        .unwrap();
    let greedy = ts
        .create_domain(&format!("greedy-{kind:?}"), DomainConfig::default())
        .unwrap();
    let on = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let greedy_ops = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| flood(kind, &greedy, &on, &stop, &greedy_ops));
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
        let (mut alone, mut loaded, mut rate) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            on.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            alone.push(round_trips(dur));
            on.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            let (g0, t0) = (greedy_ops.load(Ordering::Relaxed), Instant::now());
            loaded.push(round_trips(dur));
            let g = greedy_ops.load(Ordering::Relaxed) - g0;
            rate.push(g as f64 / t0.elapsed().as_secs_f64());
        }
        on.store(false, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        (median(alone), median(loaded), median(rate))
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let dur = Duration::from_millis(if quick { 300 } else { 1000 });
    let ts = Toolstack::new().unwrap();
    for (kind, what) in [
        (
            Flood::Sync,
            "2 KB writes, watch events and transactions, each waiting for its reply",
        ),
        (Flood::Pipelined, "2 KB writes pipelined 16 at a time"),
        (
            Flood::Silent,
            "2 KB writes as fast as its ring takes them, replies never read",
        ),
    ] {
        let (a, l, f) = measure(&ts, kind, rounds, dur);
        // The silent flood stops being read once its replies fill up: its rate may be ~0.
        assert!(f > 0.0 || matches!(kind, Flood::Silent), "the flood ran");
        println!(
            "xs fairness ({kind:?}): honest guest READ round trips alone {a:.0}/s, beside a guest \
             flooding {what} ({f:.0} requests/s) {l:.0}/s: ratio {:.2} (target >= 0.5)",
            l / a
        );
    }
}
