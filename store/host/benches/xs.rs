//! XenStore READ and WRITE round trips per second, per (server, transport), printed side by
//! side with their ratios: ring / socket for each server, and each server / the real
//! xenstored for each transport.
//!
//! `cargo bench -p xen-store-host` (`XS_BENCH_SECS` sets the seconds per measurement, default
//! 1). Rows: the real xenstored 4.17 (under `ci/real-xenstored`) over its Unix socket (dom0)
//! and over a real shared ring page (a domU, its event channel a datagram socket under the
//! shim); our xenstored (`xen_store_host::xenstored`, in this process) over its Unix socket and
//! over a simulated domU's ring page and event channel. To add a server or transport, push a
//! [`Row`] in `main` — everything else (table, ratios) follows.
//!
//! Without the real daemon (not root, packages missing) the bench fails, unless
//! `XENOLITH_SKIP_REAL_XENSTORED=1` (then it prints `SKIPPED` and its rows are missing).

use std::hint::black_box;
use std::time::{Duration, Instant};

use xen_store::client::Store;
use xen_store_host::conformance::{make_domain, Limits, Peer, PeerClient};
use xen_store_host::ours::OurXenstored;
use xen_store_host::real::RealXenstored;

/// The real daemon's server name (the baseline of the per-transport ratios).
const REAL: &str = "real xenstored 4.17";
/// Ours.
const OURS: &str = "our xenstored";

/// A client to measure: which server, which transport (`"socket"` or `"ring"`: rows of the
/// same transport are compared across servers), and the node it reads and writes.
struct Row {
    server: String,
    transport: &'static str,
    client: PeerClient,
    node: String,
    read: f64,
    write: f64,
}

impl Row {
    fn new(server: &str, transport: &'static str, client: PeerClient, node: &str) -> Row {
        Row {
            server: server.to_string(),
            transport,
            client,
            node: node.to_string(),
            read: 0.0,
            write: 0.0,
        }
    }
}

const VALUE: &[u8] = b"0123456789abcdef";
const WARMUP: usize = 200;

/// Round trips per second of `op` for `secs` seconds (after a warm-up), checking every reply.
fn rate(secs: f64, mut op: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        op();
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        // Check the clock every 64 operations only.
        for _ in 0..64 {
            op();
        }
        n += 64;
        let t = start.elapsed();
        if t >= budget {
            return n as f64 / t.as_secs_f64();
        }
    }
}

fn measure(row: &mut Row, secs: f64) {
    let (c, node) = (&mut row.client, row.node.clone());
    c.write(&node, VALUE).expect("initial write");
    row.read = rate(secs, || {
        let v = c.read(&node).expect("READ");
        assert_eq!(black_box(v).len(), VALUE.len());
    });
    row.write = rate(secs, || c.write(&node, black_box(VALUE)).expect("WRITE"));
}

fn main() {
    let secs: f64 = std::env::var("XS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0);

    let mut rows: Vec<Row> = Vec::new();
    // Keep the daemons alive until the end.
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();

    if let Some(real) = RealXenstored::for_test("bench xs", Limits::DEFAULT) {
        let mut d0 = Peer::dom0(&real);
        let u = make_domain(&real, &mut d0, 7);
        rows.push(Row::new(REAL, "socket", Peer::dom0(&real), "/bench/node"));
        rows.push(Row::new(REAL, "ring", u, "data/node"));
        keep.push(Box::new(d0));
        keep.push(Box::new(real));
    }
    // Our xenstored: dom0 on its Unix socket, a simulated domU on its ring page and event
    // channel (the same client code).
    {
        let ours = OurXenstored::for_test(Limits::DEFAULT);
        let mut d0 = Peer::dom0(&ours);
        let u = make_domain(&ours, &mut d0, 7);
        rows.push(Row::new(OURS, "socket", Peer::dom0(&ours), "/bench/node"));
        rows.push(Row::new(OURS, "ring", u, "data/node"));
        keep.push(Box::new(d0));
        keep.push(Box::new(ours));
    }

    if rows.is_empty() {
        println!("xs bench: no server to measure");
        return;
    }
    for row in &mut rows {
        measure(row, secs);
    }

    println!();
    println!("XenStore round trips per second ({secs} s per measurement, {WARMUP} warm-up ops)");
    println!(
        "{:<24} {:<8} {:>12} {:>12}",
        "server", "over", "READ/s", "WRITE/s"
    );
    for r in &rows {
        println!(
            "{:<24} {:<8} {:>12.0} {:>12.0}",
            r.server, r.transport, r.read, r.write
        );
    }
    println!();
    println!("ratios");
    // Ring / socket for each server.
    for r in rows.iter().filter(|r| r.transport == "ring") {
        if let Some(s) = rows
            .iter()
            .find(|s| s.server == r.server && s.transport == "socket")
        {
            println!(
                "{:<24} ring/socket      READ {:>6.2}   WRITE {:>6.2}",
                r.server,
                r.read / s.read,
                r.write / s.write
            );
        }
    }
    // Each server / the real daemon, per transport.
    for r in rows.iter().filter(|r| r.server != REAL) {
        if let Some(b) = rows
            .iter()
            .find(|b| b.server == REAL && b.transport == r.transport)
        {
            println!(
                "{:<24} {:<6}/real     READ {:>6.2}   WRITE {:>6.2}",
                r.server,
                r.transport,
                r.read / b.read,
                r.write / b.write
            );
        }
    }
    drop(rows);
    drop(keep);
}
