//! The storage demo: a storage domain (domid ≠ 0) serves a file-backed disk and a RAM disk to
//! two guest domains, through the libxl-faithful toolstack, our xenstored and the simulated
//! hypervisor. Each guest writes patterns with many requests in flight, flushes, reads
//! everything back and verifies it byte for byte. A progress line runs while they work; a
//! summary (bytes, IOPS, MB/s, negotiated parameters) ends it. The exit status is non-zero if
//! any byte differs or any request fails.
//!
//! `cargo run --release -p xenolith-examples --bin storage-demo [-- --mib N]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xen_blk::back::DiskSpec;
use xen_blk::front::{BlkDevice, Blkfront, BlockDevice, Request, WaitMode};
use xen_blk::negotiate::FrontConfig;
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::{Bus, BusConfig, DriverError};
use xen_sim::Domain;
use xen_toolstack::{DomainConfig, Guest, Toolstack, Vbd};

/// Requests kept in flight by each guest.
const DEPTH: usize = 32;
/// How long anything may take before the demo gives up.
const LIMIT: Duration = Duration::from_secs(50);

fn bus_cfg() -> BusConfig {
    BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    }
}

/// The storage a `params` names: `ram:<MiB>` is a RAM disk, anything else a file.
fn make_storage(spec: &DiskSpec) -> Result<Box<dyn Storage>, DriverError> {
    if let Some(mib) = spec.params.strip_prefix("ram:") {
        let mib: u64 = mib
            .parse()
            .map_err(|_| DriverError::new(22, format!("bad RAM disk size {mib}")))?;
        return Ok(Box::new(MemDisk::new(mib << 11)));
    }
    let disk = xen_blk_host::open(&spec.params, spec.read_only)
        .map_err(|e| DriverError::new(5, format!("opening {}: {e}", spec.params)))?;
    Ok(Box::new(disk))
}

/// The storage domain: the example app's main loop (`xenolith_apps::storage_domain`, the same
/// code an image runs) on the simulated domain.
fn serve(storage: &Guest, stop: &AtomicBool) -> Result<(), String> {
    let xs = storage
        .xs_client()
        .map_err(|e| format!("xenstore: {e:?}"))?;
    let mut bus = Bus::with_config(xs, storage.domid(), bus_cfg());
    xenolith_apps::storage_domain(
        Rc::new(storage.domain().clone()),
        &mut bus,
        Box::new(make_storage),
        None,
        &|| stop.load(Ordering::SeqCst),
        &|| std::thread::sleep(Duration::from_micros(50)),
    )
}

/// What one guest did.
struct Report {
    name: String,
    disk: &'static str,
    config: FrontConfig,
    bytes_written: u64,
    bytes_read: u64,
    requests: u64,
    elapsed: Duration,
    mismatched_bytes: u64,
    failed_requests: u64,
}

/// The byte at `offset` of the disk, for guest `seed`.
fn pattern_byte(seed: u8, offset: u64) -> u8 {
    let x = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(seed) << 56);
    (x >> 29) as u8 ^ (offset as u8)
}

fn fill(buf: &mut [u8], seed: u8, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

fn mismatches(buf: &[u8], seed: u8, offset: u64) -> u64 {
    buf.iter()
        .enumerate()
        .filter(|&(i, &b)| b != pattern_byte(seed, offset + i as u64))
        .count() as u64
}

/// One pass over bytes `[from, to)` in `chunk`-byte requests, `DEPTH` in flight: write the
/// pattern, or read and verify it.
#[allow(clippy::too_many_arguments)]
fn pass(
    dev: &mut BlkDevice<Rc<Domain>>,
    seed: u8,
    from: u64,
    total: u64,
    chunk: usize,
    write: bool,
    progress: &AtomicU64,
    r: &mut Report,
) -> Result<(), String> {
    let sector_bytes = 512u64;
    let mut next = from;
    let mut outstanding = 0usize;
    let mut free: Vec<_> = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while next < total || outstanding > 0 {
        while next < total && outstanding < DEPTH {
            let mut buf = match free.pop() {
                Some(b) => b,
                None => dev
                    .alloc_buffer(chunk)
                    .map_err(|e| format!("buffer: {e}"))?,
            };
            let len = chunk.min((total - next) as usize);
            buf.set_len(len).map_err(|e| format!("buffer: {e}"))?;
            let sector = next / sector_bytes;
            let req = if write {
                fill(buf.as_mut_slice(), seed, next);
                Request::Write { sector, buf }
            } else {
                Request::Read { sector, buf }
            };
            if let Err(rej) = dev.submit(next, req) {
                // The ring is full: take the buffer back and wait for completions.
                if let Some(b) = rej.buf {
                    free.push(b);
                }
                break;
            }
            next += len as u64;
            outstanding += 1;
        }
        let mut err = None;
        dev.poll(&mut |c| {
            outstanding -= 1;
            r.requests += 1;
            match c.result {
                Ok(()) => {
                    if let Some(mut b) = c.buf {
                        let n = b.len() as u64;
                        if write {
                            r.bytes_written += n;
                        } else {
                            r.bytes_read += n;
                            r.mismatched_bytes += mismatches(b.as_slice(), seed, c.tag);
                        }
                        progress.fetch_add(n, Ordering::Relaxed);
                        let _ = b.set_len(b.capacity());
                        free.push(b);
                    }
                }
                Err(e) => {
                    r.failed_requests += 1;
                    err.get_or_insert(format!("request at byte {}: {e}", c.tag));
                }
            }
        })
        .map_err(|e| format!("poll: {e}"))?;
        if let Some(e) = err {
            return Err(format!("{e}; device {:?}", dev.state()));
        }
        if Instant::now() > deadline {
            return Err(format!("timed out with {outstanding} requests in flight"));
        }
        if outstanding > 0 {
            dev.wait(Duration::from_millis(5))
                .map_err(|e| format!("wait: {e}"))?;
        }
    }
    for b in free {
        let _ = dev.free_buffer(b);
    }
    Ok(())
}

/// A guest: blkfront on its own XenBus; writes `mib` MiB in large requests and a region in
/// 4 KiB requests, flushes, reads everything back and verifies it.
fn guest(
    g: &Guest,
    disk: &'static str,
    seed: u8,
    mib: u64,
    progress: &AtomicU64,
) -> Result<Report, String> {
    let dom = Rc::new(g.domain().clone());
    let xs = g.xs_client().map_err(|e| format!("xenstore: {e:?}"))?;
    let mut bus = Bus::with_config(xs, g.domid(), bus_cfg());
    let front = Blkfront::new(dom.clone()).with_mode(WaitMode::Event);
    front.register(&mut bus).map_err(|e| format!("{e:?}"))?;
    let mut dev = front
        .first_disk(&mut bus, LIMIT, &mut || {
            std::thread::sleep(Duration::from_millis(1))
        })
        .map_err(|e| format!("no disk connected: {e}"))?;
    let config = dev.config().ok_or("connected without a configuration")?;
    let mut r = Report {
        name: g.name().to_string(),
        disk,
        config: config.clone(),
        bytes_written: 0,
        bytes_read: 0,
        requests: 0,
        elapsed: Duration::ZERO,
        mismatched_bytes: 0,
        failed_requests: 0,
    };
    let big = dev.max_request_bytes().min(1 << 20);
    let total = mib << 20;
    // The last eighth of the region is written in 4 KiB requests (random-I/O shape), the rest
    // in the largest request the negotiation allows.
    let small_from = total - total / 8;
    let start = Instant::now();
    pass(&mut dev, seed, 0, small_from, big, true, progress, &mut r)?;
    pass(
        &mut dev, seed, small_from, total, 4096, true, progress, &mut r,
    )?;
    dev.flush().map_err(|e| format!("flush: {e}"))?;
    r.requests += 1;
    pass(&mut dev, seed, 0, total, big, false, progress, &mut r)?;
    r.elapsed = start.elapsed();
    Ok(r)
}

fn mib_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .filter(|&m: &u64| (1..=1024).contains(&m))
        .unwrap_or(64)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("storage-demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let mib = mib_arg();
    let dir: PathBuf = std::env::temp_dir().join(format!("xenolith-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let image = dir.join("disk.img");
    let disk_bytes = (mib + 16) << 20;
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(disk_bytes))
        .map_err(|e| format!("{}: {e}", image.display()))?;

    let ts = Toolstack::new().map_err(|e| format!("toolstack: {e:?}"))?;
    let storage = ts
        .create_domain("storage", DomainConfig::default().driver_domain())
        .map_err(|e| format!("create storage: {e:?}"))?;
    let a = ts
        .create_domain("guest-a", DomainConfig::default())
        .map_err(|e| format!("create guest-a: {e:?}"))?;
    let b = ts
        .create_domain("guest-b", DomainConfig::default())
        .map_err(|e| format!("create guest-b: {e:?}"))?;
    println!(
        "xl create: storage (domid {}), guest-a (domid {}), guest-b (domid {})",
        storage.domid(),
        a.domid(),
        b.domid()
    );
    let img = image.to_string_lossy().to_string();
    let ram = format!("ram:{}", mib + 16);
    for (g, target) in [(&a, img.as_str()), (&b, ram.as_str())] {
        ts.add_vbd(&Vbd::new(g.domid(), storage.domid(), "xvda", target))
            .map_err(|e| format!("block-attach: {e:?}"))?;
        println!(
            "xl block-attach {} 'backend=storage,vdev=xvda,target={target}'",
            g.name()
        );
    }

    let stop = AtomicBool::new(false);
    let progress = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let per_guest = 2 * (mib << 20);
    let result = std::thread::scope(|sc| {
        let server = sc.spawn(|| serve(&storage, &stop));
        let ga = {
            let p = progress[0].clone();
            let a = &a;
            sc.spawn(move || guest(a, "file", 0xA5, mib, &p))
        };
        let gb = {
            let p = progress[1].clone();
            let b = &b;
            sc.spawn(move || guest(b, "RAM", 0x5B, mib, &p))
        };
        let t0 = Instant::now();
        while !(ga.is_finished() && gb.is_finished()) {
            let pct = |i: usize| progress[i].load(Ordering::Relaxed) * 100 / per_guest;
            print!(
                "\r  [{:5.1} s] guest-a (file) {:3}%   guest-b (RAM) {:3}%  ",
                t0.elapsed().as_secs_f64(),
                pct(0),
                pct(1)
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(200));
        }
        println!();
        let ra = ga.join().map_err(|_| "guest-a panicked".to_string());
        let rb = gb.join().map_err(|_| "guest-b panicked".to_string());
        stop.store(true, Ordering::SeqCst);
        let rs = server
            .join()
            .map_err(|_| "storage domain panicked".to_string());
        (ra, rb, rs)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (ra, rb, rs) = result;
    rs??;
    let mut ok = true;
    println!("summary:");
    for r in [ra?, rb?] {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                println!("  FAILED: {e}");
                ok = false;
                continue;
            }
        };
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let bytes = r.bytes_written + r.bytes_read;
        let c = &r.config;
        println!(
            "  {} ({} disk): wrote {} MiB, read {} MiB, {} requests in {:.2} s: {:.0} IOPS, {:.1} MB/s",
            r.name,
            r.disk,
            r.bytes_written >> 20,
            r.bytes_read >> 20,
            r.requests,
            secs,
            r.requests as f64 / secs,
            bytes as f64 / secs / 1e6
        );
        println!(
            "    negotiated: ring {} page(s) ({} requests), {} segments/request ({}), flush {:?}, discard {}, {} sectors of {} bytes",
            c.ring_pages(),
            c.max_requests,
            c.max_segments,
            if c.indirect { "indirect" } else { "direct" },
            c.flush,
            if c.discard.is_some() { "yes" } else { "no" },
            c.sectors,
            c.sector_size
        );
        if r.mismatched_bytes > 0 || r.failed_requests > 0 {
            println!(
                "    MISMATCH: {} bytes differ, {} requests failed",
                r.mismatched_bytes, r.failed_requests
            );
            ok = false;
        } else {
            println!("    verified: every byte read back matches what was written");
        }
    }
    println!(
        "{}",
        if ok {
            "storage-demo: OK"
        } else {
            "storage-demo: FAILED"
        }
    );
    Ok(ok)
}
