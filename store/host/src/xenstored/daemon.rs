//! The core: the Store and every connection's state (sockets and rings), under one mutex.

use super::*;

pub(super) struct SimSide {
    pub(super) hv: Arc<Hypervisor>,
    pub(super) dom0: Domain,
    /// The doorbell: (the port the service thread waits on, the port to notify).
    pub(super) bell: (EvtchnPort, EvtchnPort),
    /// Domains the Store was told about, with the handle of that incarnation.
    pub(super) known: BTreeMap<DomId, Known>,
    /// [`Hypervisor::domain_epoch`] when `known` was last brought up to date.
    pub(super) epoch: Option<u64>,
}

pub(super) struct Known {
    pub(super) handle: Domain,
    pub(super) shutdown_fired: bool,
}

/// A grant mapping of a guest's ring page.
pub(super) struct MappedPage(Mapping);

// SAFETY: a Mapping is the address (and grant handle) of a page mapped into this process's
// address space, valid from any thread; the page is shared memory that is only accessed
// through an XsServerRing (atomics and volatile copies), which is Send itself.
unsafe impl Send for MappedPage {}

/// A domain's ring page as the daemon serves it.
pub(super) struct RingConn {
    pub(super) conn: ConnId,
    /// Dropped before `mapping` is unmapped (it points into it).
    pub(super) ring: Option<XsServerRing>,
    pub(super) mapping: Option<MappedPage>,
    /// dom0's end of the xenstore event channel (none if a re-bind failed).
    pub(super) port: Option<EvtchnPort>,
    pub(super) framer: Framer,
    /// Reply bytes taken from the Store and not yet in `rsp`.
    pub(super) out: VecDeque<u8>,
    /// An index moved since the last notification.
    pub(super) moved: bool,
    /// Stopped after an error (the `error` field is set).
    pub(super) stopped: bool,
}

/// A mapping and binding made for an `XS_INTRODUCE` before the Store handles it.
pub(super) struct Attach {
    pub(super) mapping: MappedPage,
    pub(super) port: EvtchnPort,
}

pub(super) struct Core {
    pub(super) store: Store,
    pub(super) sim: Option<SimSide>,
    pub(super) sockets: BTreeMap<ConnId, Arc<Sock>>,
    pub(super) rings: BTreeMap<DomId, RingConn>,
    pub(super) prepared: BTreeMap<DomId, Attach>,
}

impl Core {
    pub(super) fn new(quotas: Quotas, sim: Option<SimSide>) -> Core {
        Core {
            store: Store::new(quotas),
            sim,
            sockets: BTreeMap::new(),
            rings: BTreeMap::new(),
            prepared: BTreeMap::new(),
        }
    }

    pub(super) fn ring_bell(&self) {
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.notify(sim.bell.1);
        }
    }

    /// After requests were handled (by `handler`, which writes its own output): write what
    /// is queued for rings, wake the writers of other sockets with output, and drop what the
    /// Store cut off. True if bytes moved into a ring.
    pub(super) fn after_requests(&mut self, handler: Option<ConnId>) -> bool {
        self.prune_rings();
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        let mut moved = false;
        for d in doms {
            moved |= self.ring_output(d);
        }
        let broken: Vec<DomId> = self
            .rings
            .iter()
            .filter(|(_, r)| !r.stopped && self.store.is_broken(r.conn))
            .map(|(&d, _)| d)
            .collect();
        for d in broken {
            self.fail_ring(d, XENSTORE_ERROR_COMM);
        }
        let mut cut = Vec::new();
        for (&id, s) in &self.sockets {
            if self.store.is_broken(id) || !self.store.is_connected(id) {
                cut.push(id);
            } else if Some(id) != handler && self.store.pending_output(id) > 0 {
                s.wake_writer();
            }
        }
        for id in cut {
            self.drop_socket(id);
        }
        moved
    }

    pub(super) fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.sockets.keys().copied().collect();
        for id in ids {
            self.drop_socket(id);
        }
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        for d in doms {
            self.detach_ring(d);
        }
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.close(sim.bell.1);
            let _ = sim.dom0.close(sim.bell.0);
        }
    }

    /// Close a socket connection (end of stream, a bad message, a failed write, or cut off):
    /// the Store forgets it and the client sees the connection closed.
    pub(super) fn drop_socket(&mut self, id: ConnId) {
        if let Some(s) = self.sockets.remove(&id) {
            s.close();
        }
        self.store.disconnect(id);
    }

    // -----------------------------------------------------------------------------------------
    // Requests and notices.

    /// Handle one request of `conn`, then act on the Store's notices. `Err` is a reply made
    /// here for an `XS_INTRODUCE` whose ring could not be attached (the Store never saw it).
    pub(super) fn handle(&mut self, conn: ConnId, msg: &Message) -> Result<(), XsError> {
        // A domain the requester created (or destroyed) just before must count.
        self.sync_domains();
        // (In a transaction the Store answers first, as xenstored checks the id first.)
        if matches!(msg.msg_type(), Ok(MsgType::Introduce))
            && msg.header.tx_id == 0
            && self.store.conn_domid(conn) == Some(0)
        {
            self.prepare_introduce(msg)?;
        }
        self.store.handle(conn, msg);
        self.process_notices();
        // An attachment the Store did not use (it refused the request).
        for (_, a) in std::mem::take(&mut self.prepared) {
            self.undo_attach(a);
        }
        Ok(())
    }

    /// For `XS_INTRODUCE` of an existing domain not yet introduced: map its reserved grant
    /// and bind its port first, as xenstored's `introduce_domain()` does (`EINVAL` if that
    /// fails, and the Store never sees the request). Malformed requests, unknown domains and
    /// re-introductions are the Store's business.
    pub(super) fn prepare_introduce(&mut self, msg: &Message) -> Result<(), XsError> {
        let Ok(Request::Introduce { domid, port, .. }) =
            Request::decode(MsgType::Introduce, &msg.payload)
        else {
            return Ok(());
        };
        if domid == 0 || self.store.is_introduced(domid) {
            return Ok(());
        }
        let Some(sim) = &self.sim else {
            return Ok(());
        };
        if !sim.known.contains_key(&domid) {
            return Ok(());
        }
        let a = attach(&sim.dom0, domid, port).map_err(|_| XsError::Einval)?;
        if let Some(old) = self.prepared.insert(domid, a) {
            self.undo_attach(old);
        }
        Ok(())
    }

    pub(super) fn undo_attach(&mut self, a: Attach) {
        if let Some(sim) = &self.sim {
            let _ = sim.dom0.unmap(a.mapping.0);
            let _ = sim.dom0.close(a.port);
        }
    }

    /// A request on a temporary privileged connection (the API's toolstack calls); the
    /// reply's error, if any.
    pub(super) fn internal_request(&mut self, req: &Request) -> Result<(), XsError> {
        let msg = req.to_message(1, 0).map_err(|e| e.xs_error())?;
        let conn = self.store.connect(0);
        let r = self.handle(conn, &msg).and_then(|()| {
            let out = self.store.take_output(conn);
            let reply = out
                .iter()
                .find(|m| m.header.ty != MsgType::WatchEvent.as_u32())
                .map(Response::from_message);
            match reply {
                Some(Ok(Response::Error(e))) => Err(e),
                Some(Ok(_)) => Ok(()),
                _ => Err(XsError::Eio),
            }
        });
        self.store.disconnect(conn);
        r
    }

    pub(super) fn process_notices(&mut self) {
        for n in self.store.take_notices() {
            match n {
                Notice::Introduced {
                    domid,
                    conn,
                    port,
                    new: true,
                    ..
                } => self.attach_ring(domid, conn, port),
                Notice::Introduced {
                    domid,
                    port,
                    new: false,
                    ..
                } => self.rebind(domid, port),
                Notice::Released { domid, .. } => self.detach_ring(domid),
            }
        }
    }

    /// A new connection for `domid`: its ring (mapped for the `XS_INTRODUCE`, or now).
    pub(super) fn attach_ring(&mut self, domid: DomId, conn: ConnId, port: EvtchnPort) {
        // A ring of an earlier connection (stopped after an error) goes first.
        self.detach_ring(domid);
        let a = match self.prepared.remove(&domid) {
            Some(a) => Some(a),
            None => self
                .sim
                .as_ref()
                .and_then(|s| attach(&s.dom0, domid, port).ok()),
        };
        let Some(a) = a else {
            // Nothing to serve it on (no hypervisor, or no grant): the Store's connection
            // would only collect output.
            self.store.disconnect(conn);
            return;
        };
        // SAFETY: `a.mapping` is a one-page (4096 bytes, page-aligned) read/write grant
        // mapping made by dom0 in this process; it stays mapped until `detach_ring`, which
        // drops this XsServerRing before unmapping (RingConn keeps both), and if dom0 or the
        // guest is destroyed first the simulator replaces the range with anonymous memory
        // rather than unmapping it. The guest writes the page concurrently, which is what
        // XsServerRing is for; no Rust reference to the page exists, and this is the only
        // XsServerRing on this mapping.
        let ring = match unsafe { XsServerRing::new(a.mapping.0.addr) } {
            Ok(r) => r,
            Err(_) => {
                self.undo_attach(a);
                self.store.disconnect(conn);
                return;
            }
        };
        let mut ring = ring;
        // As xenstored: the indexes are left as the guest's builder made them (zero, for a
        // fresh page) — a guest may already have queued a request.
        ring.set_error(0);
        ring.add_server_features(FEATURES);
        ring.set_connected();
        self.rings.insert(
            domid,
            RingConn {
                conn,
                ring: Some(ring),
                mapping: Some(a.mapping),
                port: Some(a.port),
                framer: Framer::new(),
                out: VecDeque::new(),
                moved: true,
                stopped: false,
            },
        );
        // The service thread must wait on the new port.
        self.ring_bell();
    }

    /// A repeated `XS_INTRODUCE`: re-bind the event channel to `port`, as xenstored does
    /// (unbind the old one first; if the new bind fails the ring has no channel, and is
    /// still looked at on every wake-up).
    pub(super) fn rebind(&mut self, domid: DomId, port: EvtchnPort) {
        let (Some(sim), Some(r)) = (&self.sim, self.rings.get_mut(&domid)) else {
            return;
        };
        if let Some(old) = r.port.take() {
            let _ = sim.dom0.close(old);
        }
        r.port = sim.dom0.bind_interdomain(domid, port).ok();
        r.moved = true;
        self.ring_bell();
    }

    /// Stop serving `domid`'s ring: unmap it and close the channel.
    pub(super) fn detach_ring(&mut self, domid: DomId) {
        let Some(mut r) = self.rings.remove(&domid) else {
            return;
        };
        // The ring points into the mapping: drop it first.
        r.ring = None;
        if let Some(sim) = &self.sim {
            if let Some(m) = r.mapping.take() {
                let _ = sim.dom0.unmap(m.0);
            }
            if let Some(p) = r.port.take() {
                let _ = sim.dom0.close(p);
            }
        }
        self.store.disconnect(r.conn);
    }

    /// What the hypervisor says about domains (`xc_domain_getinfo()` after `VIRQ_DOM_EXC`):
    /// new ones exist for the Store, gone ones are destroyed (a domid re-used by a new domain
    /// counts as both), a shutdown fires `@releaseDomain` once.
    pub(super) fn sync_domains(&mut self) {
        let Some(sim) = self.sim.as_mut() else {
            return;
        };
        // Read before the list: a change after it is seen next time.
        let epoch = sim.hv.domain_epoch();
        if sim.epoch == Some(epoch) {
            return;
        }
        sim.epoch = Some(epoch);
        let live = sim.hv.domains();
        let mut gone: Vec<DomId> = sim
            .known
            .keys()
            .filter(|id| !live.iter().any(|d| d.id() == **id))
            .copied()
            .collect();
        let mut fresh = Vec::new();
        let mut shut = Vec::new();
        for d in live {
            let id = d.id();
            if id == 0 {
                continue;
            }
            match sim.known.get_mut(&id) {
                Some(k) if k.handle == d => {
                    if !k.shutdown_fired
                        && self.store.is_introduced(id)
                        && d.shutdown_reason().is_some()
                    {
                        k.shutdown_fired = true;
                        shut.push(id);
                    }
                }
                Some(_) => {
                    gone.push(id);
                    fresh.push(d);
                }
                None => fresh.push(d),
            }
        }
        for id in gone {
            sim.known.remove(&id);
            self.store.destroy_domain(id);
        }
        for d in fresh {
            self.store.create_domain(d.id());
            sim.known.insert(
                d.id(),
                Known {
                    handle: d,
                    shutdown_fired: false,
                },
            );
        }
        for id in shut {
            self.store.shutdown_domain(id);
        }
        self.process_notices();
        self.prune_rings();
    }

    /// Stop serving (unmap) the rings of domains that are no longer introduced. A ring
    /// stopped after an error has no Store connection, so its release brings no notice.
    pub(super) fn prune_rings(&mut self) {
        let gone: Vec<DomId> = self
            .rings
            .keys()
            .filter(|d| !self.store.is_introduced(**d))
            .copied()
            .collect();
        for d in gone {
            self.detach_ring(d);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Rings.

    /// Read and handle every ring's requests; true if anything moved.
    pub(super) fn ring_inputs(&mut self) -> bool {
        let doms: Vec<DomId> = self.rings.keys().copied().collect();
        let mut moved = false;
        for d in doms {
            moved |= self.ring_input(d);
        }
        moved
    }

    /// Read and handle `d`'s requests while the Store wants input.
    pub(super) fn ring_input(&mut self, d: DomId) -> bool {
        let mut progress = false;
        let mut buf = [0u8; 1024];
        // At most this much per round, so that a guest writing as fast as we read cannot keep
        // the core locked: the service thread lets others in between rounds.
        for _ in 0..RING_ROUND_READS {
            let Some(r) = self.rings.get_mut(&d) else {
                return progress;
            };
            if r.stopped {
                return progress;
            }
            let Some(ring) = r.ring.as_mut() else {
                return progress;
            };
            if ring.connection() == XENSTORE_RECONNECT {
                // One reset per call: a guest asking again at once is served next round.
                self.reconnect(d);
                return true;
            }
            let conn = r.conn;
            if !self.store.wants_input(conn) {
                return progress;
            }
            let n = match ring.read(&mut buf) {
                Ok(0) => return progress,
                Ok(n) => n,
                Err(_) => {
                    self.fail_ring(d, XENSTORE_ERROR_RINGIDX);
                    return true;
                }
            };
            r.moved = true;
            progress = true;
            let mut msgs = Vec::new();
            let mut bad = false;
            let mut input = buf.get(..n).unwrap_or(&[]);
            while !input.is_empty() {
                match r.framer.push(input) {
                    Ok((used, m)) => {
                        input = input.get(used..).unwrap_or(&[]);
                        msgs.extend(m);
                    }
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            for m in &msgs {
                // Only dom0's XS_INTRODUCE can fail before the Store; a domU's is EACCES.
                let _ = self.handle(conn, m);
            }
            if bad {
                self.fail_ring(d, XENSTORE_ERROR_PROTO);
                return true;
            }
        }
        progress
    }

    /// Move the Store's output for `d` into its `rsp` ring, as far as it fits; notify the
    /// guest if an index moved during this pass.
    pub(super) fn ring_output(&mut self, d: DomId) -> bool {
        let mut progress = false;
        loop {
            let Some(r) = self.rings.get_mut(&d) else {
                return progress;
            };
            if r.stopped {
                break;
            }
            if r.out.len() < RING_OUT_HIGH {
                for m in self.store.take_output(r.conn) {
                    if let Ok(b) = m.encode() {
                        r.out.extend(b);
                    }
                }
            }
            if r.out.is_empty() {
                break;
            }
            let Some(ring) = r.ring.as_mut() else {
                break;
            };
            let (front, _) = r.out.as_slices();
            match ring.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    r.out.drain(..n);
                    r.moved = true;
                    progress = true;
                }
                Err(_) => {
                    self.fail_ring(d, XENSTORE_ERROR_RINGIDX);
                    return true;
                }
            }
        }
        if let (Some(r), Some(sim)) = (self.rings.get_mut(&d), &self.sim) {
            if std::mem::take(&mut r.moved) {
                if let Some(p) = r.port {
                    // PeerGone: the guest died; the next look at the domains releases it.
                    let _ = sim.dom0.notify(p);
                }
            }
        }
        progress
    }

    /// Stop serving a ring: set its `error` field, notify, and drop the connection's
    /// watches, transactions and output (the domain stays introduced).
    pub(super) fn fail_ring(&mut self, d: DomId, error: u32) {
        let Some(r) = self.rings.get_mut(&d) else {
            return;
        };
        if let Some(ring) = r.ring.as_mut() {
            ring.set_error(error);
        }
        r.stopped = true;
        r.moved = false;
        r.out.clear();
        if let (Some(p), Some(sim)) = (r.port, &self.sim) {
            let _ = sim.dom0.notify(p);
        }
        self.store.disconnect(r.conn);
    }

    /// `connection == XENSTORE_RECONNECT`: drop partial input and queued output, the
    /// connection's watches and transactions (what `XS_RESET_WATCHES` drops), reset the
    /// indexes and set `XENSTORE_CONNECTED`.
    pub(super) fn reconnect(&mut self, d: DomId) {
        let Some(r) = self.rings.get_mut(&d) else {
            return;
        };
        r.framer.reset();
        r.out.clear();
        let _ = self.store.take_output(r.conn);
        if let Ok(m) = Request::ResetWatches.to_message(0, 0) {
            self.store.handle(r.conn, &m);
        }
        let _ = self.store.take_output(r.conn);
        if let Some(ring) = r.ring.as_mut() {
            ring.reset(0);
            ring.set_connected();
        }
        r.moved = true;
    }
}

/// Map `domid`'s `GNTTAB_RESERVED_XENSTORE` grant in dom0 and bind its `port`.
pub(super) fn attach(
    dom0: &Domain,
    domid: DomId,
    port: EvtchnPort,
) -> Result<Attach, PlatformError> {
    let mapping = dom0.map(domid, GNTTAB_RESERVED_XENSTORE, false)?;
    match dom0.bind_interdomain(domid, port) {
        Ok(port) => Ok(Attach {
            mapping: MappedPage(mapping),
            port,
        }),
        Err(e) => {
            let _ = dom0.unmap(mapping);
            Err(e)
        }
    }
}
