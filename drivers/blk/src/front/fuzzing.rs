//! (feature `fuzzing`) blkfront's data path without the XenBus handshake, for a fuzz target
//! that plays a hostile backend: the ring is set up and granted as blkfront does it, the
//! configuration is what negotiation would have produced, and the target writes responses
//! (and `rsp_prod`) into the ring page itself. Not an API for drivers.

use alloc::vec::Vec;
use core::ptr::NonNull;

use xen_platform::{DomId, EvtchnPort, GrantRef, PlatformRef};

use super::ring::{setup_ring, DataPath, WaitMode};
use super::{BlkError, Buffer, Completion, Rejected, Request};
use crate::negotiate::FrontConfig;

/// A connected data path over a ring granted to `backend`.
pub struct FuzzFront<H: PlatformRef> {
    dp: DataPath<H>,
    refs: Vec<GrantRef>,
    port: EvtchnPort,
    ring: NonNull<u8>,
}

impl<H: PlatformRef> FuzzFront<H> {
    /// Grant a ring of `1 << cfg.ring_page_order` pages to `backend`, bind nothing (the target
    /// plays the backend and never notifies), and start a data path on it in polled mode.
    pub fn new(plat: H, backend: DomId, cfg: FrontConfig) -> Result<Self, BlkError> {
        let setup = setup_ring(&plat, backend, cfg.ring_page_order).map_err(BlkError::Platform)?;
        let (refs, port, ring) = (setup.refs.clone(), setup.port, setup.run.addr);
        let dp = DataPath::new(plat, backend, 0, setup, cfg, WaitMode::Polled, true)
            .map_err(|(e, _)| e)?;
        Ok(FuzzFront {
            dp,
            refs,
            port,
            ring,
        })
    }

    /// The ring's grant references (for the backend to map).
    pub fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    /// The unbound port the backend would bind.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// The first byte of the shared ring (its `sring` header, then the entries).
    pub fn ring(&self) -> NonNull<u8> {
        self.ring
    }

    /// Page-aligned zeroed memory of `bytes`.
    pub fn alloc_buffer(&mut self, bytes: usize) -> Result<Buffer, BlkError> {
        self.dp.alloc_buffer(bytes)
    }

    /// Give a buffer back.
    pub fn free_buffer(&mut self, buf: Buffer) -> Result<(), BlkError> {
        self.dp.free_buffer(buf)
    }

    /// Queue `req` (see `BlockDevice::submit`).
    pub fn submit(&mut self, tag: u64, req: Request) -> Result<(), Rejected> {
        self.dp.submit(tag, req, false)
    }

    /// Take the responses on the ring and report completions.
    pub fn poll(&mut self, f: &mut dyn FnMut(Completion)) -> usize {
        self.dp.progress();
        self.dp.deliver(f)
    }

    /// Requests not yet reported.
    pub fn in_flight(&self) -> usize {
        self.dp.in_flight()
    }

    /// End the connection: every request still outstanding completes with `err`.
    pub fn shutdown(&mut self) {
        self.dp.shutdown(BlkError::NotConnected);
    }
}
