//! Ring round trips: `FrontRing`/`BackRing` vs Xen's ring.h macros in C, same run, same pages.
//!
//! For 1- and 4-page rings shared between two simulator domains (the front domain grants the
//! pages, the back domain maps them), polled from one thread: single round trips (one request
//! pushed, served, its response consumed) and batches (a full ring of requests per push). Each
//! case runs both implementations on the same ring, 5 rounds alternating which goes first; the
//! median ns per round trip of each and the ratio Rust/C are printed.
//!
//! Requests are a runtime template copied into the slot with id, operation and sector set (every
//! byte written, by the same plain 112-byte copy in both languages). What the back end does with
//! its copy of a request ([`Work`]): answer from its id (`single`, `batched`), or first hand the
//! copy to the same out-of-line validation function (`+val`, the C harness's `bench_validate`),
//! as a backend hands requests to its storage code. Both read every byte of each request once
//! (`BackRing` always copies the whole entry; GCC copies it all because it may be handed on).

mod common;

use std::time::Duration;

use common::median;
use xen_platform::ring::{entry_size, ring_size};
use xenolith_benches::{c_ring_size, c_run, rust_run, BenchReq, BenchRsp, RunStats, SimRing, Work};

const ROUNDS: usize = 5;
/// Target duration of one measured run.
const TARGET: Duration = Duration::from_millis(100);

fn ns_per(stats: RunStats, n: u64) -> f64 {
    stats.elapsed.as_nanos() as f64 / n as f64
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us with no such flag: a quick
    // smoke run then.
    let quick = !std::env::args().any(|a| a == "--bench");
    // `cargo bench -p xenolith-benches -- batched single`: only those modes.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!(
        "ring round trips, blkif-shaped entries ({} bytes), polled, simulator domains; \
         median of {ROUNDS} alternating rounds",
        entry_size::<BenchReq, BenchRsp>()
    );
    println!(
        "{:<7} {:<12} {:>6} {:>12} {:>12} {:>9} {:>10}",
        "pages", "mode", "batch", "rust ns/rt", "C ns/rt", "rust/C", "notifies"
    );
    // The target (ratio <= 1.0) is for the ring's own round trips; the `+val` modes
    // add an out-of-line C call per request, whose call-site cost differs between the
    // compilers, so they are reported apart.
    let (mut worst, mut worst_val): (f64, f64) = (0.0, 0.0);
    for pages in [1usize, 4] {
        let ring = SimRing::new(pages);
        let size = ring_size(ring.bytes(), entry_size::<BenchReq, BenchRsp>());
        assert_eq!(
            size,
            c_ring_size(ring.bytes()),
            "RING_SIZE agrees with the C macros"
        );
        let full = u64::from(size);
        for (mode, batch, work) in [
            ("single", 1u64, Work::Id),
            ("batched", full, Work::Id),
            ("single+val", 1, Work::Validate),
            ("batched+val", full, Work::Validate),
        ] {
            if !filter.is_empty() && !filter.iter().any(|f| f == mode) {
                continue;
            }
            // Calibrate on a short run, then size the measured runs to ~TARGET.
            let probe = 20_000;
            let warm = rust_run(&ring, probe, batch, work);
            c_run(&ring, probe, batch, work);
            let n = if quick {
                probe
            } else {
                ((TARGET.as_nanos() as f64 / ns_per(warm, probe)) as u64).max(probe)
            };
            let (mut rust, mut c) = (Vec::new(), Vec::new());
            let mut notifies = (0, 0);
            for round in 0..ROUNDS {
                let (r, cc) = if round % 2 == 0 {
                    let r = rust_run(&ring, n, batch, work);
                    (r, c_run(&ring, n, batch, work))
                } else {
                    let cc = c_run(&ring, n, batch, work);
                    (rust_run(&ring, n, batch, work), cc)
                };
                notifies = (r.notifies, cc.notifies);
                rust.push(ns_per(r, n));
                c.push(ns_per(cc, n));
            }
            assert_eq!(
                notifies.0, notifies.1,
                "same notification decisions as the C macros"
            );
            let (r, cc) = (median(rust), median(c));
            let ratio = r / cc;
            if work == Work::Id {
                worst = worst.max(ratio);
            } else {
                worst_val = worst_val.max(ratio);
            }
            println!(
                "{pages:<7} {mode:<12} {batch:>6} {r:>12.1} {cc:>12.1} {ratio:>9.3} {:>10}",
                notifies.0
            );
        }
    }
    if quick {
        println!("(smoke run without --bench: not optimised, short runs; the ratios mean nothing)");
    } else {
        println!("worst rust/C ratio, ring round trips: {worst:.3} (target <= 1.0)");
        println!(
            "worst rust/C ratio, with a C validation call per request: {worst_val:.3} \
             (informational: includes FFI call-site cost)"
        );
    }
}
