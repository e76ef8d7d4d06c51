//! The guest side: a simulated guest's xenstore page and event channel, and its client.

use super::*;

/// How long a guest client waits for a reply.
pub(super) const GUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A simulated guest's xenstore page and event channel, as the toolstack (libxl's domain
/// builder) sets them up, and the guest's way to its client.
#[derive(Debug)]
pub struct SimGuest {
    pub(super) domain: Domain,
    pub(super) page: xen_platform::PageRun,
    pub(super) frame: XenPfn,
    pub(super) port: EvtchnPort,
}

impl SimGuest {
    /// The toolstack's part for `guest`: allocate its xenstore page (zeroed) in the guest,
    /// grant it to dom0 through the reserved entry `GNTTAB_RESERVED_XENSTORE`, allocate an
    /// unbound port for dom0 (`store_evtchn`), and publish both as `HVM_PARAM_STORE_PFN` and
    /// `HVM_PARAM_STORE_EVTCHN`. Then the domain is introduced (`XS_INTRODUCE(domid, frame,
    /// port)`, or [`Xenstored::introduce_domain`]).
    pub fn build(guest: &Domain) -> Result<SimGuest, PlatformError> {
        let page = guest.alloc(1)?;
        let frame = match guest.frame(page.addr) {
            Ok(f) => f,
            Err(e) => {
                let _ = guest.free(page);
                return Err(e);
            }
        };
        if let Err(e) = guest.grant_reserved(GNTTAB_RESERVED_XENSTORE, 0, frame, false) {
            let _ = guest.free(page);
            return Err(e);
        }
        let port = guest.alloc_unbound(0)?;
        guest.set_hvm_param(HVM_PARAM_STORE_PFN, frame);
        guest.set_hvm_param(HVM_PARAM_STORE_EVTCHN, u64::from(port));
        Ok(SimGuest {
            domain: guest.clone(),
            page,
            frame,
            port,
        })
    }

    /// The guest domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The domid.
    pub fn domid(&self) -> DomId {
        self.domain.id()
    }

    /// The page's frame (`HVM_PARAM_STORE_PFN`; the `mfn` of `XS_INTRODUCE`).
    pub fn frame(&self) -> XenPfn {
        self.frame
    }

    /// The guest's port (`HVM_PARAM_STORE_EVTCHN`).
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Where the page is in this process (the guest's address of it) — for fault-injection
    /// tests that play a misbehaving guest. Any access must go through atomics or volatile
    /// copies: the daemon shares the page.
    pub fn page(&self) -> NonNull<u8> {
        self.page.addr
    }

    /// The guest side: find the page and port from the HVM parameters, as a PVH guest does,
    /// and make the ring transport (the page is the guest's own; one transport per guest).
    pub fn transport(self) -> Result<OwnedRing<Domain>, PlatformError> {
        let pfn = self
            .domain
            .hvm_param(HVM_PARAM_STORE_PFN)
            .ok_or(PlatformError::NotFound)?;
        let port = self
            .domain
            .hvm_param(HVM_PARAM_STORE_EVTCHN)
            .and_then(|p| EvtchnPort::try_from(p).ok())
            .ok_or(PlatformError::NotFound)?;
        let addr: NonNull<u8> = self.page.addr;
        if self.domain.frame(addr)? != pfn {
            return Err(PlatformError::Invalid);
        }
        // SAFETY: `addr` is the start of a page-aligned 4096-byte page this guest allocated
        // in `build` and never frees (it stays granted, so `Pages::free` would refuse it
        // anyway); the simulator keeps a domain's pages mapped while the domain lives and
        // replaces them with anonymous memory (never unmaps them) when it is destroyed,
        // until the Hypervisor is dropped — which the Domain handle given to the OwnedRing
        // as its `keep` prevents. The daemon writes the page concurrently through its own
        // mapping, which is what XsGuestRing is for; no Rust reference to the page exists,
        // and `self` is consumed, so this is the only XsGuestRing on it.
        let ring = unsafe { XsGuestRing::new(addr) }?;
        let keep = Box::new(self.domain.clone());
        Ok(OwnedRing::new(ring, self.domain, port, keep))
    }

    /// [`transport`](Self::transport), connected (a ring reset in progress waited out), as a
    /// client with a 10 s request timeout.
    pub fn client(self) -> Result<Client<OwnedRing<Domain>>, xen_store::client::XsClientError> {
        let mut t = self.transport()?;
        t.connect(GUEST_TIMEOUT)?;
        Ok(Client::with_config(
            t,
            ClientConfig {
                timeout: GUEST_TIMEOUT,
                ..ClientConfig::default()
            },
        ))
    }
}
