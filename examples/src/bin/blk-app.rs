//! Compile-in storage for a single-purpose VM, on the simulator: dom0 serves a RAM disk (the
//! storage-domain app's loop), the guest runs the blk app (`xenolith_apps::blk_app`, the code
//! an image runs): its first disk gets a record written, flushed, read back and verified.
//!
//! `cargo run -p xenolith-examples --bin blk-app`

use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xen_blk::front::{Blkfront, WaitMode};
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::{Bus, BusConfig};
use xen_toolstack::{DomainConfig, Toolstack, Vbd};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blk-app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let cfg = BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    };
    let ts = Toolstack::new().map_err(|e| format!("{e:?}"))?;
    let guest = ts
        .create_domain("blk-app", DomainConfig::default())
        .map_err(|e| format!("{e:?}"))?;
    ts.add_vbd(&Vbd::new(guest.domid(), 0, "xvda", "ram"))
        .map_err(|e| format!("{e:?}"))?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let dom0 = ts.dom0().clone();
        let xs = ts.dom0_client().map_err(|e| format!("{e:?}"))?;
        let stop0 = &stop;
        let server = sc.spawn(move || {
            let mut bus = Bus::with_config(xs, 0, cfg);
            xenolith_apps::storage_domain(
                Rc::new(dom0),
                &mut bus,
                Box::new(|_| Ok(Box::new(MemDisk::new(64 << 11)) as Box<dyn Storage>)),
                None,
                &|| stop0.load(Ordering::SeqCst),
                &|| std::thread::sleep(Duration::from_micros(100)),
            )
        });
        let plat = Rc::new(guest.domain().clone());
        let mut bus = Bus::with_config(
            guest.xs_client().map_err(|e| format!("{e:?}"))?,
            guest.domid(),
            cfg,
        );
        let front = Blkfront::new(plat.clone()).with_mode(WaitMode::Event);
        front.register(&mut bus).map_err(|e| format!("{e:?}"))?;
        let result = front
            .first_disk(&mut bus, Duration::from_secs(10), &mut || {
                std::thread::sleep(Duration::from_millis(1))
            })
            .map_err(|e| format!("no disk connected: {e}"))
            .and_then(|mut dev| xenolith_apps::blk_app(&mut dev, 2048, b"xenolith blk-app record"));
        stop.store(true, Ordering::SeqCst);
        server
            .join()
            .map_err(|_| "storage loop panicked".to_string())??;
        let r = result?;
        println!(
            "blk-app: disk of {} MiB; {} bytes written, flushed, read back and verified",
            r.disk_bytes >> 20,
            r.verified
        );
        Ok(())
    })
}
