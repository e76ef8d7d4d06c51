//! The example apps, written against the platform traits only (`#![no_std]` + `alloc`): the
//! same code runs in threads of the simulator today (`examples/src/bin`) and in an image on
//! Xen, where `plat` is the runtime's `&'static Xen` and the bus talks to the XenStore ring.
//! Every function takes any platform handle ([`PlatformRef`]: `&'static Xen`, `Rc<Domain>`,
//! `Arc<Domain>`).
//!
//! - [`storage_domain`]: a storage domain's main loop — blkback serving what its factory makes
//!   of each `params` (a RAM disk, a file on a host, a window of a disk this domain received
//!   through its own blkfront), and blkfront for the disks it receives.
//! - [`start`]: what every bootable image does first (XenStore over the guest ring, domid and
//!   name) and how it sleeps (`SCHEDOP_poll` on its ports until a deadline).
//! - [`blk_app`]: compile-in storage for a single-purpose VM — wait for its first disk, write
//!   a record, flush, read it back and verify it.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod disk_check;
pub mod seqlog;
pub mod start;
pub mod target;

use alloc::format;
use alloc::string::String;
use alloc::vec;

use core::time::Duration;

use xen_blk::back::{BackOptions, BackPoll, BlkBack, StorageFactory};
use xen_blk::front::{Blkfront, BlockDevice};
use xen_bus::store::client::Transport;
use xen_bus::Bus;
use xen_platform::{Clock, Events, PlatformRef};

/// A storage domain's moving parts: blkback serving the vbds whose backend is this domain,
/// and (optionally) the blkfront that receives the disks this domain re-exports. An image
/// calls [`step`](Self::step) in its main loop, next to its other drivers (the control
/// driver), and waits on the ports it reports plus its own.
pub struct StorageDomain<H: PlatformRef> {
    back: BlkBack<H>,
    front: Option<Blkfront<H>>,
}

impl<H: PlatformRef> StorageDomain<H> {
    /// Register blkback (with `factory`) on `bus`. `front` must be registered on the same bus
    /// by the caller.
    pub fn new<T: Transport>(
        plat: H,
        bus: &mut Bus<T>,
        options: BackOptions,
        factory: StorageFactory,
        front: Option<Blkfront<H>>,
    ) -> Result<Self, String> {
        let back = BlkBack::new(plat, options, factory);
        back.register(bus)
            .map_err(|e| format!("registering blkback: {e:?}"))?;
        Ok(StorageDomain { back, front })
    }

    /// The backend.
    pub fn back(&self) -> &BlkBack<H> {
        &self.back
    }

    /// One round: the bus (new devices, state changes), the frontend, every ring. Devices
    /// whose frontend broke the ring protocol are closed. Returns what to wait on, and when
    /// the bus wants to be polled again at the latest (a handshake in progress re-reads the
    /// states every `resync_interval`; `None`: only on events).
    pub fn step<T: Transport>(
        &mut self,
        bus: &mut Bus<T>,
        now: Duration,
    ) -> (BackPoll, Option<Duration>) {
        let deadline = bus.poll(now).ok().and_then(|p| p.next_deadline);
        if let Some(f) = &self.front {
            f.service(bus);
        }
        let p = self.back.poll();
        for name in &p.broken {
            let _ = bus.close(name);
        }
        (p, deadline)
    }
}

/// A storage domain: serves its backend devices until `stop()` says so. `front` (registered on
/// the same bus by the caller, or `None`) receives disks this domain can re-export through its
/// factory (see `xen_blk::reexport::FrontStorage`). Event-driven: between rounds it waits on
/// the rings' event channels; `idle` is called instead when there is nothing to wait on (a
/// storage without ports still working, or no device yet).
pub fn storage_domain<H: PlatformRef, T: Transport>(
    plat: H,
    bus: &mut Bus<T>,
    factory: StorageFactory,
    front: Option<&Blkfront<H>>,
    stop: &dyn Fn() -> bool,
    idle: &dyn Fn(),
) -> Result<(), String> {
    let mut sd = StorageDomain::new(
        plat.clone(),
        bus,
        BackOptions::default(),
        factory,
        front.cloned(),
    )?;
    let plat = plat.get();
    while !stop() {
        let (p, _) = sd.step(bus, plat.now());
        if p.busy || p.ports.is_empty() {
            idle();
        } else if let Ok(port) = plat.wait(&p.ports, Some(Duration::from_millis(2))) {
            plat.clear(port);
        }
    }
    Ok(())
}

/// What [`blk_app`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppReport {
    /// The disk's size in bytes.
    pub disk_bytes: u64,
    /// Bytes written, flushed, read back and verified.
    pub verified: u64,
}

/// Compile-in storage for a single-purpose VM: on its first disk, write `record` (padded to
/// whole sectors) at `sector`, flush, read it back and verify it.
pub fn blk_app(dev: &mut dyn BlockDevice, sector: u64, record: &[u8]) -> Result<AppReport, String> {
    let ss = dev.sector_size() as usize;
    let len = record.len().div_ceil(ss).max(1) * ss;
    let mut data = vec![0u8; len];
    data[..record.len()].copy_from_slice(record);
    dev.write(sector, &data)
        .map_err(|e| format!("write at sector {sector}: {e}"))?;
    dev.flush().map_err(|e| format!("flush: {e}"))?;
    let mut back = vec![0u8; len];
    dev.read(sector, &mut back)
        .map_err(|e| format!("read at sector {sector}: {e}"))?;
    if back != data {
        let at = back
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!("read back differs at byte {at}"));
    }
    Ok(AppReport {
        disk_bytes: dev.sectors() * xen_blk::block::SECTOR,
        verified: len as u64,
    })
}
