//! Compile-in storage for a single-purpose VM, as a bootable image (PVH or 64-bit PV, see
//! `blk-app.cfg`): attach the first vbd through blkfront, log what was negotiated, run
//! [`xenolith_apps::disk_check`] on it (the toolstack's pattern, the app's own pattern written,
//! flushed, read back and verified, 4 KiB random reads, a discard when offered), publish the
//! outcome in XenStore, then wait for `xl shutdown` and close the disk in order.
//!
//! XenStore (the domain's home): `data/blk-app` = `ok` or `fail: <reason>`;
//! `data/blk-app-config` = the negotiated parameters; `data/blk-app-perf` =
//! `write-kib-s=.. read-kib-s=.. write-qd1-kib-s=.. read-qd1-kib-s=.. iops-qd1=.. iops-qdN=..`
//! (sequential 1 MiB requests, N in flight then one; 4 KiB random reads); `data/blk-app-discard` =
//! `zeros`, `kept` or `none`.
//!
//! Options on the command line (`extra=`): `mib=N nonce=HEX qd=N ops=N mode=event|polled
//! discard=N dom0=0|1 small=random|seq`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::fmt::Write as _;
use core::time::Duration;

use xenolith::blk::front::{Blkfront, BlockDevice, WaitMode};
use xenolith::blk::negotiate::FlushMode;
use xenolith::bus::{Bus, BusConfig};
use xenolith::control::{Control, Event, Request};
use xenolith::platform::{Clock, Scheduler, ShutdownReason};
use xenolith::rt::Xen;
use xenolith::store::client::Store;
use xenolith_apps::disk_check::{disk_check, DiskCheck};
use xenolith_apps::start::{open_store, wait_until, StoreSession};

/// Called by the runtime (xen-rt) once the platform and the heap are up.
#[no_mangle]
fn xen_main(xen: &'static Xen) -> ! {
    let mut out = xen;
    let _ = writeln!(out, "blk-app: booting, cmdline '{}'", xen.cmdline());
    let reason = match run(xen) {
        Ok(()) => ShutdownReason::Poweroff,
        Err(e) => {
            let _ = writeln!(out, "blk-app: {e}");
            ShutdownReason::Crash
        }
    };
    let _ = xen.shutdown(reason);
    loop {
        xen.yield_now();
    }
}

/// The options of the command line.
struct Options {
    check: DiskCheck,
    mode: WaitMode,
}

fn options(cmdline: &str) -> Result<Options, String> {
    let mut check = DiskCheck::default();
    let mut mode = WaitMode::Event;
    for word in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue; // not ours
        };
        let num = || {
            v.parse::<u64>()
                .map_err(|_| format!("option {k}: '{v}' is not a number"))
        };
        match k {
            "mib" => check.bytes = num()? << 20,
            "nonce" => {
                check.nonce = u32::from_str_radix(v, 16)
                    .map_err(|_| format!("option nonce: '{v}' is not hex"))?
            }
            "qd" => check.depth = num()?.clamp(1, 256) as usize,
            "ops" => check.small_ops = num()?.min(1 << 24) as u32,
            "discard" => check.discard_bytes = num()? << 20,
            "dom0" => check.dom0_bytes = if num()? == 0 { 0 } else { 1 << 20 },
            "small" => {
                check.small_sequential = match v {
                    "seq" => true,
                    "random" => false,
                    _ => return Err(format!("option small: '{v}' (seq or random)")),
                }
            }
            "mode" => {
                mode = match v {
                    "event" => WaitMode::Event,
                    "polled" => WaitMode::Polled,
                    _ => return Err(format!("option mode: '{v}' (event or polled)")),
                }
            }
            _ => {}
        }
    }
    Ok(Options { check, mode })
}

fn run(xen: &'static Xen) -> Result<(), String> {
    let mut out = xen;
    let (ring, xs_port) = xen.take_store_ring().ok_or("no xenstore ring")?;
    let StoreSession {
        client: xs,
        domid,
        name,
        ..
    } = open_store(xen, ring, xs_port)?;
    let _ = writeln!(out, "blk-app: domid {domid}, name {name}");

    let mut bus = Bus::with_config(
        xs,
        domid,
        BusConfig {
            handshake_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_millis(500),
            ..BusConfig::default()
        },
    );
    let mut ctl = Control::new(|req: Request| {
        let mut out = xen;
        let _ = writeln!(out, "blk-app: {} requested", req.as_str());
    })
    .with_deferred_shutdown();
    ctl.start(bus.client())
        .map_err(|e| format!("control start: {e:?}"))?;

    let outcome = match options(xen.cmdline()) {
        Ok(opts) => check_disk(xen, &mut bus, xs_port, &opts),
        Err(e) => Err(e),
    };
    let status = match &outcome {
        Ok(()) => String::from("ok"),
        Err(e) => format!("fail: {e}"),
    };
    let _ = writeln!(out, "blk-app: data/blk-app = {status}");
    bus.client()
        .write_str("data/blk-app", &status)
        .map_err(|e| format!("write data/blk-app: {e:?}"))?;

    let _ = writeln!(out, "blk-app: waiting for xl shutdown");
    loop {
        let _ = bus.poll(xen.now());
        while let Some(ev) = ctl
            .poll(bus.client(), xen)
            .map_err(|e| format!("control: {e:?}"))?
        {
            if let Event::ShutdownPending { request, .. } = ev {
                // Close the disk in order (Closing -> Closed) before SCHEDOP_shutdown.
                let s = bus.shutdown(xen, Duration::from_secs(10), |p| {
                    let _ = wait_until(xen, &[xs_port], p.next_deadline);
                });
                let _ = writeln!(out, "blk-app: {}: devices closed: {s:?}", request.as_str());
                ctl.finish_shutdown(xen)
                    .map_err(|e| format!("shutdown: {e:?}"))?;
                return Ok(()); // not reached on Xen
            }
        }
        wait_until(xen, &[xs_port], Some(xen.now() + Duration::from_secs(10)))?;
    }
}

fn check_disk<T: xenolith::store::client::Transport>(
    xen: &'static Xen,
    bus: &mut Bus<T>,
    xs_port: u32,
    opts: &Options,
) -> Result<(), String> {
    let mut out = xen;
    let front = Blkfront::new(xen).with_mode(opts.mode);
    front
        .register(bus)
        .map_err(|e| format!("registering blkfront: {e:?}"))?;
    let t0 = xen.now();
    let mut dev = front
        .first_disk(bus, Duration::from_secs(60), &mut || {
            let _ = wait_until(xen, &[xs_port], Some(xen.now() + Duration::from_millis(20)));
        })
        .map_err(|e| format!("no disk connected: {e}"))?;
    let attach_ms = xen.now().saturating_sub(t0).as_millis();
    let cfg = dev
        .config()
        .ok_or("disk connected without a configuration")?;
    let discard = match &cfg.discard {
        Some(d) => format!(
            "yes (granularity {}, alignment {}, secure {})",
            d.granularity, d.alignment, d.secure as u8
        ),
        None => String::from("no"),
    };
    let flush = match cfg.flush {
        FlushMode::FlushCache => "flush-diskcache",
        FlushMode::Barrier => "write-barrier",
        FlushMode::None => "none (write-through)",
    };
    let summary = format!(
        "ring-pages={} max-requests={} segments={} indirect={} persistent={} flush={} discard={} sector-size={} physical-sector-size={} sectors512={} bytes={} readonly={} mode={:?}",
        cfg.ring_pages(),
        cfg.max_requests,
        cfg.max_segments,
        cfg.indirect as u8,
        cfg.persistent as u8,
        flush,
        discard,
        cfg.sector_size,
        cfg.physical_sector_size,
        cfg.sectors,
        dev.sectors() * xenolith::blk::block::SECTOR,
        cfg.readonly as u8,
        opts.mode,
    );
    let _ = writeln!(
        out,
        "blk-app: {} connected after {attach_ms} ms: {summary}",
        dev.nodename()
    );
    let _ = bus.client().write_str("data/blk-app-config", &summary);

    let now = || xen.now();
    let report = disk_check(
        &mut dev,
        &opts.check,
        cfg.discard.is_some(),
        cfg.discard.as_ref().is_some_and(|d| d.secure),
        &now,
        &mut |line| {
            let mut out = xen;
            let _ = writeln!(out, "blk-app: {line}");
        },
    )?;
    let perf = format!(
        "write-kib-s={} read-kib-s={} write-qd1-kib-s={} read-qd1-kib-s={} iops-qd1={} iops-qd{}={} mib={}",
        report.write_kib_s,
        report.read_kib_s,
        report.write_qd1_kib_s,
        report.read_qd1_kib_s,
        report.iops_qd1,
        opts.check.depth,
        report.iops_queued,
        opts.check.bytes >> 20
    );
    let _ = writeln!(out, "blk-app: {perf}");
    let _ = bus.client().write_str("data/blk-app-perf", &perf);
    let d = match report.discard {
        Some(true) => "zeros",
        Some(false) => "kept",
        None => "none",
    };
    let _ = bus.client().write_str("data/blk-app-discard", d);
    Ok(())
}
