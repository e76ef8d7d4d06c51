//! A bootable image, PVH or 64-bit PV (see `hello.cfg`): prints a greeting, reads `domid` and `name` from
//! XenStore, writes `data/hello = "ready"`, then runs the control driver until `xl shutdown`
//! (or `xl reboot`/`xl destroy`) ends it. It can be saved (`xl save`, `xl restore`) and
//! checkpointed (`xl save -c`): after each resume it writes `data/hello-resumes`. With `hello.fault=ud2` on its command line
//! (`extra=`), it executes `ud2` instead: the lab's check of the runtime's exception handler.
//!
//! Build: `cargo build --profile image -p xenolith-hello` → `target/image/xenolith-hello`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::fmt::Write as _;
use core::time::Duration;

use xenolith::control::{Control, Event, NothingToQuiesce, Request};
use xenolith::platform::{Clock, Events, Scheduler, ShutdownReason};
use xenolith::rt::Xen;
use xenolith::store::client::Store;
use xenolith_apps::start::{open_store, resume_store, wait_until, StoreSession};

/// Called by the runtime (xen-rt) once the platform and the heap are up.
#[no_mangle]
fn xen_main(xen: &'static Xen) -> ! {
    let mut out = xen;
    let _ = writeln!(out, "hello from xenolith");
    // Self-check of the clock (pvclock) against SCHEDOP_poll's timeout (Xen system time): a
    // wait on no port runs until its deadline, however often other events wake the vCPU.
    let t0 = xen.now();
    let r = xen.wait(&[], Some(Duration::from_millis(100)));
    let _ = writeln!(
        out,
        "clock: now {} ms; a 100 ms wait took {} ms ({r:?})",
        t0.as_millis(),
        xen.now().saturating_sub(t0).as_millis()
    );
    if xen
        .cmdline()
        .split_whitespace()
        .any(|w| w == "hello.fault=ud2")
    {
        // The lab's check of xen-rt's PVH exception handler: it must report "#UD" with this
        // rip on the debug port and crash the domain (not triple-fault).
        let _ = writeln!(out, "hello: raising #UD (hello.fault=ud2)");
        // SAFETY: ud2 touches no memory; it raises #UD, which the runtime reports and turns
        // into a crash of this domain: nothing runs after it.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
    let reason = match run(xen) {
        Ok(()) => ShutdownReason::Poweroff,
        Err(e) => {
            let _ = writeln!(out, "hello: {e}");
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
    let (ring, port) = xen.take_store_ring().ok_or("no xenstore ring")?;
    let StoreSession {
        client: mut xs,
        domid,
        name,
        ..
    } = open_store(xen, ring, port)?;
    let _ = writeln!(out, "domid = {domid}, name = {name}");
    xs.write_str("data/hello", "ready")
        .map_err(|e| format!("write data/hello: {e:?}"))?;
    let _ = writeln!(out, "wrote data/hello = ready");

    let mut ctl = Control::new(move |req: Request| {
        let mut out = xen;
        let _ = writeln!(out, "hello: {} requested, shutting down", req.as_str());
    })
    .with_suspend(NothingToQuiesce);
    ctl.start(&mut xs)
        .map_err(|e| format!("control start: {e:?}"))?;
    let _ = writeln!(
        out,
        "waiting for xl shutdown (xl save and xl save -c work too)"
    );
    let mut port = port;
    let (mut resumed, mut cancelled_suspends) = (0u32, 0u32);
    loop {
        while let Some(ev) = ctl
            .poll(&mut xs, xen)
            .map_err(|e| format!("control: {e:?}"))?
        {
            match ev {
                Event::Shutdown { .. } => return Ok(()), // not reached on Xen
                // xl save / xl restore: the runtime re-established the platform inside the
                // suspend hypercall; the XenStore connection is new (new port).
                Event::Resumed { cancelled, error } => {
                    if cancelled {
                        cancelled_suspends += 1;
                    } else {
                        resumed += 1;
                        let (_, p) = xen.store().ok_or("no xenstore after the resume")?;
                        resume_store(&mut xs, p);
                        port = p;
                    }
                    let _ = writeln!(
                        out,
                        "hello: resumed (cancelled: {cancelled}, error: {error:?}); xenstore port {port}"
                    );
                    // For the lab: how many resumes of each kind this domain went through.
                    let v = format!("resumed {resumed} cancelled {cancelled_suspends}");
                    xs.write_str("data/hello-resumes", &v)
                        .map_err(|e| format!("write data/hello-resumes: {e:?}"))?;
                }
                ev => {
                    let _ = writeln!(out, "hello: {ev:?}");
                }
            }
        }
        wait_until(xen, &[port], Some(xen.now() + Duration::from_secs(10)))?;
    }
}
