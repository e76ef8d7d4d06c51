//! A minimal storage service domain, as a bootable image (PVH or 64-bit PV, see
//! `storage-domain.cfg`): blkback serves every vbd whose backend libxl put in this domain
//! (`disk = [ 'backend=<this domain>, ...' ]` in a guest's config), with the storage its
//! `target=` names (`xenolith_apps::target`: `ram:<MiB>`, or `disk:<vdev>[:<start>:<len>]`, a
//! disk this domain received itself through blkfront and re-exports). Event-driven: between
//! rounds it sleeps in `SCHEDOP_poll` on the rings', the disks' and the XenStore ports.
//!
//! XenStore: `data/storage-domain = ready` once serving; `xl shutdown` closes every device it
//! serves (the guests' blkfronts see Closing) and its own disks, then powers off.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::time::Duration;

use xenolith::blk::back::{BackOptions, DiskSpec};
use xenolith::blk::front::{Blkfront, WaitMode, DEFAULT_LIMITS};
use xenolith::blk::negotiate::FrontLimits;
use xenolith::bus::{Bus, BusConfig};
use xenolith::control::{Control, ControlError, Event, Request};
use xenolith::platform::abi::xen::{
    HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_SCHED_OP,
};
use xenolith::platform::{Clock, Scheduler, ShutdownReason};
use xenolith::rt::Xen;
use xenolith::store::client::Store;
use xenolith_apps::start::{open_store, wait_on, StoreSession};
use xenolith_apps::target::{describe, make_storage, parse_target};
use xenolith_apps::StorageDomain;

/// Called by the runtime (xen-rt) once the platform and the heap are up.
#[no_mangle]
fn xen_main(xen: &'static Xen) -> ! {
    let mut out = xen;
    let _ = writeln!(out, "storage-domain: booting");
    let reason = match run(xen) {
        Ok(()) => ShutdownReason::Poweroff,
        Err(e) => {
            let _ = writeln!(out, "storage-domain: {e}");
            ShutdownReason::Crash
        }
    };
    let _ = xen.shutdown(reason);
    loop {
        xen.yield_now();
    }
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
    let _ = writeln!(out, "storage-domain: domid {domid}, name {name}");

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
        let _ = writeln!(out, "storage-domain: {} requested", req.as_str());
    })
    .with_deferred_shutdown();
    ctl.start(bus.client())
        .map_err(|e| format!("control start: {e:?}"))?;

    // Its own disks (served on as disk:<vdev> targets), event-driven like everything here.
    // No persistent grants on its own disks: each one pins a page of this domain for the whole
    // connection (Linux blkback keeps up to 1056 per disk, 4 MiB), which a storage domain of
    // 16 MiB cannot give (seen in the lab: the second guest's devices ran the heap dry).
    let front = Blkfront::new(xen)
        .with_mode(WaitMode::Event)
        .with_limits(FrontLimits {
            persistent: false,
            ..DEFAULT_LIMITS
        });
    front
        .register(&mut bus)
        .map_err(|e| format!("registering blkfront: {e:?}"))?;
    let own = front.clone();
    let factory = Box::new(move |spec: &DiskSpec| {
        let mut out = xen;
        let what = parse_target(&spec.params).map_or_else(|e| e, |t| describe(&t));
        let r = make_storage(spec, Some(&own));
        match &r {
            Ok(_) => {
                let (used, managed) = xen.page_usage();
                let (free, blocks) = xen.heap_free();
                let _ = writeln!(
                    out,
                    "storage-domain: serving vbd {}/{} ({}): {what} [pages {used}/{managed}, heap free {} KiB in {blocks}]",
                    spec.frontend_id,
                    spec.devid,
                    if spec.read_only { "r" } else { "w" },
                    free >> 10
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "storage-domain: refusing vbd {}/{}: {} (errno {})",
                    spec.frontend_id, spec.devid, e.message, e.errno
                );
            }
        }
        r
    });
    let mut sd = StorageDomain::new(xen, &mut bus, BackOptions::default(), factory, Some(front))?;
    bus.client()
        .write_str("data/storage-domain", "ready")
        .map_err(|e| format!("write data/storage-domain: {e:?}"))?;
    let _ = writeln!(out, "storage-domain: ready");

    let mut ports: Vec<u32> = Vec::new();
    loop {
        // One clock read per round: in a PVH domain Xen may trap every rdtsc (emulated TSC),
        // and both triple faults seen in the lab hit this domain inside the pvclock read.
        let now = xen.now();
        let (p, deadline) = sd.step(&mut bus, now);
        loop {
            let ev = match ctl.poll(bus.client(), xen) {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                // A XenStore request that timed out (a daemon starved for a while) or was
                // refused is not the end of the disks this domain serves: the control driver
                // reads the request again at its next poll. A dead connection is.
                Err(ControlError::Store(e)) if !e.is_fatal() => {
                    let _ = writeln!(out, "storage-domain: control: {e:?} (going on)");
                    break;
                }
                Err(e) => return Err(format!("control: {e:?}")),
            };
            if let Event::ShutdownPending { request, .. } = ev {
                // Close every device, served and received, in order, bounded.
                let s = bus.shutdown(xen, Duration::from_secs(20), |bp| {
                    // Rings go on being served (requests in flight complete or fail) while
                    // the devices close.
                    let p = sd.back().poll();
                    let _ = wait_on(xen, &mut Vec::new(), xs_port, &p.ports, bp.next_deadline);
                });
                let _ = writeln!(
                    out,
                    "storage-domain: {}: devices closed: {s:?}",
                    request.as_str()
                );
                // Each hypercall is a guest exit: per response, the cost a request pays here.
                let calls = |nr| xenolith::rt::hypercall::calls(nr);
                let _ = writeln!(
                    out,
                    "storage-domain: {} responses; hypercalls: sched_op {}, event_channel_op {}, grant_table_op {}",
                    sd.back().responses(),
                    calls(HYPERVISOR_SCHED_OP),
                    calls(HYPERVISOR_EVENT_CHANNEL_OP),
                    calls(HYPERVISOR_GRANT_TABLE_OP)
                );
                ctl.finish_shutdown(xen)
                    .map_err(|e| format!("shutdown: {e:?}"))?;
                return Ok(()); // not reached on Xen
            }
        }
        if p.busy {
            continue;
        }
        let until = deadline.map_or(now + Duration::from_secs(10), |d| {
            d.min(now + Duration::from_secs(10))
        });
        wait_on(xen, &mut ports, xs_port, &p.ports, Some(until))?;
    }
}
