//! (feature `fuzzing`) blkfront's data path without the XenBus handshake, for a fuzz target
//! that plays a hostile backend: the ring is set up and granted as blkfront does it, the
//! configuration is what negotiation would have produced, and the target writes responses
//! (and `rsp_prod`) into the ring page itself. Not an API for drivers.

use alloc::vec::Vec;
use core::ptr::NonNull;

use xen_platform::{DomId, EvtchnPort, GrantRef, PlatformRef};

use super::ring::{release_rings, setup_rings, DataPath, WaitMode};
use super::{BlkError, Buffer, Completion, Rejected, Request};
use crate::negotiate::FrontConfig;

/// A connected data path over a ring granted to `backend`.
pub struct FuzzFront<H: PlatformRef> {
    dp: DataPath<H>,
    refs: Vec<GrantRef>,
    port: EvtchnPort,
    rings: Vec<NonNull<u8>>,
}

impl<H: PlatformRef> FuzzFront<H> {
    /// Grant `cfg.queues` rings (at least one) of `1 << cfg.ring_page_order` pages each to
    /// `backend`, bind nothing (the target plays the backend and never notifies), and start a
    /// data path on them in polled mode.
    pub fn new(plat: H, backend: DomId, cfg: FrontConfig) -> Result<Self, BlkError> {
        let setups = setup_rings(&plat, backend, cfg.ring_page_order, cfg.queues.max(1))
            .map_err(BlkError::Platform)?;
        let (refs, port) = (setups[0].refs.clone(), setups[0].port);
        let rings = setups.iter().map(|s| s.run.addr).collect();
        let dp = match DataPath::new(
            plat.clone(),
            backend,
            0,
            setups,
            cfg,
            WaitMode::Polled,
            true,
        ) {
            Ok(dp) => dp,
            Err((e, setups)) => {
                release_rings(&plat, setups);
                return Err(e);
            }
        };
        Ok(FuzzFront {
            dp,
            refs,
            port,
            rings,
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

    /// The first byte of the (first queue's) shared ring (its `sring` header, then the
    /// entries).
    pub fn ring(&self) -> NonNull<u8> {
        self.rings[0]
    }

    /// The first byte of queue `q`'s shared ring.
    pub fn ring_of(&self, q: usize) -> Option<NonNull<u8>> {
        self.rings.get(q).copied()
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
