//! A device's life: each step re-reads the states when due, drives the driver through the
//! handshake, closes in order or fails (error published), and, in a driver domain, removes
//! the backend directory the toolstack is done with.

use super::*;

impl<T: Transport> Bus<T> {
    pub(super) fn step(&mut self, dev: &mut Device, now: Duration) {
        dev.pending = false;
        if dev.phase == Phase::Closed {
            if dev.remove_at.is_some_and(|t| now >= t) {
                self.remove_backend_dir(dev);
                return;
            }
            if !(dev.reconnectable && dev.dirty) || self.closing_all {
                return;
            }
            dev.dirty = false;
            match read_state(&mut self.xs, &dev.info.otherend) {
                Ok(Some(XenbusState::Initialising)) => self.restart(dev, now),
                _ => return,
            }
        }
        for _ in 0..STEPS_PER_POLL {
            match self.step_once(dev, now) {
                Ok(true) => {}
                Ok(false) => break,
                // The XenStore connection itself died: not the device's fault; `poll`
                // reports it and the device stays as it is.
                Err(_) if self.xs.failure().is_some() => break,
                Err(e) => {
                    self.fail(dev, e, now);
                    break;
                }
            }
            if dev.phase == Phase::Closed {
                break;
            }
        }
    }

    /// Re-read our own and the other end's state.
    pub(super) fn refresh(&mut self, dev: &mut Device) -> Result<(), DriverError> {
        match read_state(&mut self.xs, &dev.info.path)? {
            None => {
                return Err(DriverError::new(
                    errno::ENODEV,
                    format!("{}/state was removed", dev.info.path),
                ))
            }
            Some(s) if s != dev.state => {
                // Someone else wrote our state: the toolstack closing a backend (libxl's
                // detach writes backend `online` = 0 and `state` = 5).
                if dev.info.role == Role::Back && s.is_closing() {
                    dev.toolstack_closing = true;
                } else {
                    return Err(DriverError::new(
                        errno::EINVAL,
                        format!(
                            "{}/state changed under us to {} (we wrote {})",
                            dev.info.path,
                            s.name(),
                            dev.state.name()
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
        match read_state(&mut self.xs, &dev.info.otherend)? {
            None if matches!(dev.phase, Phase::Closing) => dev.other = None,
            None => {
                return Err(DriverError::new(
                    errno::ENODEV,
                    format!("other end {} vanished", dev.info.otherend),
                ))
            }
            Some(s) => {
                if dev.other != Some(s) {
                    dev.other = Some(s);
                    dev.drive(&mut self.xs, Duration::ZERO, |d, ctx| match d {
                        Drv::Front(d) => d.other_end_changed(ctx, s).map(|()| Progress::Done),
                        Drv::Back(d) => d.other_end_changed(ctx, s).map(|()| Progress::Done),
                    })?;
                }
            }
        }
        Ok(())
    }

    /// One step; `Ok(true)` if the device moved (another step may follow at once).
    pub(super) fn step_once(
        &mut self,
        dev: &mut Device,
        now: Duration,
    ) -> Result<bool, DriverError> {
        if dev.dirty || now >= dev.next_resync {
            dev.dirty = false;
            let every = if dev.phase == Phase::Connected && dev.watching {
                self.cfg.connected_resync_interval
            } else {
                self.cfg.resync_interval
            };
            dev.next_resync = now.saturating_add(every);
            self.refresh(dev)?;
        }
        let cfg = self.cfg;
        let role = dev.info.role;
        if dev.toolstack_closing {
            dev.toolstack_closing = false;
            dev.detach(&mut self.xs, now);
            // The toolstack wrote our state; take it as ours.
            if let Ok(Some(s)) = read_state(&mut self.xs, &dev.info.path) {
                dev.state = s;
            }
            if dev.state == XenbusState::Closed {
                return self.closed(dev, now);
            }
            dev.set_phase(Phase::Closing, now, &cfg);
            return Ok(true);
        }
        if dev.close_requested && !matches!(dev.phase, Phase::Closing | Phase::Closed) {
            dev.close_requested = false;
            switch_state(&mut self.xs, dev, XenbusState::Closing)?;
            dev.set_phase(Phase::Closing, now, &cfg);
            return Ok(true);
        }
        let other = dev.other;
        if dev.restarted && other.is_some_and(|s| !s.is_closing()) {
            dev.restarted = false;
        }
        // A restarted device waits (bounded by the handshake timeout) for its peer to leave
        // the previous session's Closed.
        let stale = dev.restarted && other == Some(XenbusState::Closed);
        let peer_closing = !stale && other.is_some_and(XenbusState::is_closing);
        match dev.phase {
            Phase::Closed => Ok(false),
            Phase::Probe => {
                // From here the driver has something to undo: `detach` runs once per probe
                // (a restarted device closed before it probed again was detached already).
                dev.detached = false;
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.probe(ctx),
                    Drv::Back(d) => d.probe(ctx),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        let next = match &dev.drv {
                            Some(Drv::Front(d)) if !d.waits_for_init_wait() => Phase::Initialise,
                            Some(Drv::Front(_)) => Phase::AwaitPeer,
                            _ => {
                                switch_state(&mut self.xs, dev, XenbusState::InitWait)?;
                                Phase::AwaitPeer
                            }
                        };
                        dev.set_phase(next, now, &cfg);
                        Ok(true)
                    }
                }
            }
            _ if peer_closing && dev.phase != Phase::Closing => self.peer_closed(dev, now),
            Phase::AwaitPeer => {
                let go = match (role, dev.state) {
                    (Role::Front, XenbusState::Initialising) => matches!(
                        other,
                        Some(
                            XenbusState::InitWait
                                | XenbusState::Initialised
                                | XenbusState::Connected
                        )
                    )
                    .then_some(Phase::Initialise),
                    (Role::Front, _) => {
                        (other == Some(XenbusState::Connected)).then_some(Phase::Attach)
                    }
                    (Role::Back, _) => matches!(
                        other,
                        Some(XenbusState::Initialised | XenbusState::Connected)
                    )
                    .then_some(Phase::Attach),
                };
                match go {
                    Some(p) => {
                        dev.set_phase(p, now, &cfg);
                        Ok(true)
                    }
                    None => self.wait(dev, now),
                }
            }
            Phase::Initialise => {
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.initialise(ctx),
                    Drv::Back(_) => Ok(Progress::Done),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        switch_state(&mut self.xs, dev, XenbusState::Initialised)?;
                        dev.set_phase(Phase::AwaitPeer, now, &cfg);
                        Ok(true)
                    }
                }
            }
            Phase::Attach => {
                match dev.drive(&mut self.xs, now, |d, ctx| match d {
                    Drv::Front(d) => d.attach(ctx),
                    Drv::Back(d) => d.attach(ctx),
                })? {
                    Progress::Pending => self.wait(dev, now),
                    Progress::Done => {
                        switch_state(&mut self.xs, dev, XenbusState::Connected)?;
                        dev.set_phase(Phase::Connected, now, &cfg);
                        self.events.push_back(BusEvent::Connected {
                            nodename: dev.info.nodename.clone(),
                        });
                        Ok(true)
                    }
                }
            }
            Phase::Connected => Ok(false),
            Phase::Closing => {
                let done = match role {
                    // A front waits for the backend to close (or go); a stale Closed will do.
                    Role::Front => other.is_none_or(XenbusState::is_closing),
                    // A back waits for the frontend to be Closed (or gone).
                    Role::Back => other.is_none() || other == Some(XenbusState::Closed),
                };
                if done {
                    dev.detach(&mut self.xs, now);
                    switch_state(&mut self.xs, dev, XenbusState::Closed)?;
                    self.closed(dev, now)
                } else {
                    dev.timed_out(now)?;
                    Ok(false)
                }
            }
        }
    }

    /// Waiting: fail if the phase's deadline passed.
    pub(super) fn wait(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        dev.pending = matches!(dev.phase, Phase::Probe | Phase::Initialise | Phase::Attach);
        dev.timed_out(now)?;
        Ok(false)
    }

    /// The other end is Closing or Closed while we are not closing.
    pub(super) fn peer_closed(
        &mut self,
        dev: &mut Device,
        now: Duration,
    ) -> Result<bool, DriverError> {
        dev.detach(&mut self.xs, now);
        match (dev.info.role, dev.other) {
            // A frontend whose backend closes goes Closed (Linux `xenbus_frontend_closed()`).
            (Role::Front, _) | (Role::Back, Some(XenbusState::Closed)) => {
                switch_state(&mut self.xs, dev, XenbusState::Closed)?;
                self.closed(dev, now)
            }
            // A backend whose frontend is Closing follows to Closing and waits for Closed
            // (Linux blkback `frontend_changed()`).
            _ => {
                switch_state(&mut self.xs, dev, XenbusState::Closing)?;
                dev.set_phase(Phase::Closing, now, &self.cfg);
                Ok(true)
            }
        }
    }

    pub(super) fn closed(&mut self, dev: &mut Device, now: Duration) -> Result<bool, DriverError> {
        dev.set_phase(Phase::Closed, now, &self.cfg);
        dev.reconnectable = dev.info.role == Role::Back && self.online_is(dev, b"1");
        if !dev.reconnectable {
            self.unwatch(dev);
        }
        self.events.push_back(BusEvent::Closed {
            nodename: dev.info.nodename.clone(),
            error: None,
        });
        self.schedule_removal(dev, now);
        Ok(false)
    }

    /// A backend in Closed whose `online` is 0: the toolstack is removing the device, and in
    /// a driver domain the backend directory is ours to remove. libxl in dom0 removes only
    /// the frontend's and its own nodes and waits `LIBXL_DESTROY_TIMEOUT` (10 s) for the
    /// backend path to go ("timed out while waiting for ... to be removed" otherwise); `xl
    /// devd` removes it on backend state 6 with `online` = 0, with its parents as far as they
    /// are empty and ours to remove (libxl_device.c `backend_watch_callback`,
    /// `libxl__device_destroy`: "The driver domain is in charge of removing what it can from
    /// the backend path"). In dom0 libxl removes it itself (and may create the next device
    /// at the same path at once), so a dom0 backend leaves it.
    ///
    /// Here: note the time; [`remove_backend_dir`](Self::remove_backend_dir) runs
    /// [`BACKEND_REMOVE_DELAY`] later.
    pub(super) fn schedule_removal(&mut self, dev: &mut Device, now: Duration) {
        if dev.info.role == Role::Back
            && self.domid != 0
            && dev.phase == Phase::Closed
            && self.online_is(dev, b"0")
        {
            self.unwatch(dev);
            dev.remove_at = Some(now.saturating_add(BACKEND_REMOVE_DELAY));
        }
    }

    /// Whether the device's `online` node reads `value` (a backend's: the toolstack's wish).
    fn online_is(&mut self, dev: &Device, value: &[u8]) -> bool {
        matches!(self.xs.try_read(&dev.info.key("online")), Ok(Some(v)) if v == value)
    }

    /// Remove a closed backend's directory ([`schedule_removal`](Self::schedule_removal)),
    /// with the parents that became empty and are ours to remove.
    pub(super) fn remove_backend_dir(&mut self, dev: &mut Device) {
        dev.remove_at = None;
        // Still the directory of this removal (a new device there would have `online` = 1).
        if !self.online_is(dev, b"0") {
            return;
        }
        if self.xs.rm(&dev.info.path).is_err() {
            return;
        }
        // The parents up to (not including) our `backend` directory, while empty; libxl
        // owns them in a driver domain (`(n0,r<us>)`), so this usually stops at the first.
        let stop = format!("{}/backend", self.home);
        let mut p = dev.info.path.clone();
        while let Some(i) = p.rfind('/') {
            p.truncate(i);
            if p.len() <= stop.len() {
                break;
            }
            match self.xs.directory(&p) {
                Ok(children) if children.is_empty() => {}
                _ => break,
            }
            if self.xs.rm(&p).is_err() {
                break;
            }
        }
    }

    /// Start a closed device's handshake again with the same driver (its `detach` ran).
    pub(super) fn restart(&mut self, dev: &mut Device, now: Duration) {
        dev.reconnectable = false;
        dev.restarted = true;
        // `detached` stays set until the driver is probed again (`step_once`).
        dev.error = None;
        dev.other = None;
        dev.dirty = true;
        dev.set_phase(Phase::Probe, now, &self.cfg);
        if !dev.watching
            && matches!(
                self.xs.watch(&dev.info.otherend, TOKEN_OTHEREND),
                Ok(()) | Err(XsClientError::Xs(xen_store::XsError::Eexist))
            )
        {
            dev.watching = true;
        }
    }

    /// Start a frontend that closed in order again: write Initialising and run the
    /// handshake anew with the same driver (a backend closed in order with `online` = 1
    /// follows, as Linux blkback's "prepare for reconnect"). Returns whether it did: the
    /// device must be a frontend in Closed without an error, and the bus not shutting down
    /// ([`close_all`](Self::close_all)).
    pub fn reconnect(&mut self, nodename: &str, now: Duration) -> bool {
        let Some(mut dev) = self.devices.remove(nodename) else {
            return false;
        };
        let ok = !self.closing_all
            && dev.info.role == Role::Front
            && dev.phase == Phase::Closed
            && dev.error.is_none()
            && switch_state(&mut self.xs, &mut dev, XenbusState::Initialising).is_ok();
        if ok {
            self.restart(&mut dev, now);
        }
        self.devices.insert(nodename.to_string(), dev);
        ok
    }

    /// After a real resume of this domain (`xl restore`, the far end of a migration): it is
    /// domain `domid` now (a restore creates a new domain), its XenStore connection is a new
    /// one — take it up first ([`RingTransport::resumed`] and [`Client::reset`]) — and the
    /// toolstack wrote its devices anew (frontends Initialising, new backend directories).
    /// Every driver is detached (one that keeps work across a reconnect keeps it: blkfront's
    /// requests parked by `Blkfront::suspended`), our paths move to the new home, and each
    /// frontend runs its handshake again, with the same driver, against the backend its
    /// nodes now name; one whose nodes are gone or name a backend `xen_bus::path` rejects
    /// fails (Closed, error published). Backends are dropped: a toolstack that re-created
    /// them has them adopted afresh by the rescan. Class watches are registered again and
    /// every class directory is read on the next poll. Linux: `xenbus_dev_resume` for each
    /// device, after `xs_resume`.
    ///
    /// [`RingTransport::resumed`]: xen_store::transport::RingTransport::resumed
    /// [`Client::reset`]: xen_store::client::Client::reset
    pub fn resumed(&mut self, domid: DomId, now: Duration) -> Result<(), XsClientError> {
        self.domid = domid;
        self.home = path::home(domid);
        for (class, role) in self
            .front
            .keys()
            .map(|c| (c.clone(), Role::Front))
            .chain(self.back.keys().map(|c| (c.clone(), Role::Back)))
            .collect::<Vec<_>>()
        {
            let (dir, token) = match role {
                Role::Front => ("device", TOKEN_FRONT),
                Role::Back => ("backend", TOKEN_BACK),
            };
            // EEXIST: the connection kept it (a resume as the same domain: a simulator's, or a
            // caller that got `cancelled` wrong); it stays.
            match self
                .xs
                .watch(&format!("{}/{dir}/{class}", self.home), token)
            {
                Ok(()) | Err(XsClientError::Xs(xen_store::XsError::Eexist)) => {}
                Err(e) => return Err(e),
            }
            self.rescan.insert((role, class));
        }
        let devices = core::mem::take(&mut self.devices);
        for (key, mut dev) in devices {
            dev.detach(&mut self.xs, now);
            // The old connection's watches went with it.
            dev.watching = false;
            if dev.info.role == Role::Back {
                continue;
            }
            dev.info.frontend_id = domid;
            dev.info.path = format!("{}/{key}", self.home);
            // What the toolstack wrote is our state now (Initialising after a restore).
            dev.state = XenbusState::Initialising;
            match self.read_details(&mut dev.info) {
                Ok(()) => {
                    // Our state node must say Initialising whatever the restore left there.
                    dev.state = XenbusState::Unknown;
                    if let Err(e) = switch_state(&mut self.xs, &mut dev, XenbusState::Initialising)
                    {
                        self.fail(&mut dev, e, now);
                    } else {
                        self.restart(&mut dev, now);
                    }
                }
                Err(e) => self.fail(&mut dev, e, now),
            }
            self.devices.insert(key, dev);
        }
        Ok(())
    }

    pub(super) fn unwatch(&mut self, dev: &mut Device) {
        if dev.watching {
            dev.watching = false;
            let _ = self.xs.unwatch(&dev.info.otherend, TOKEN_OTHEREND);
        }
    }

    /// Linux's `xenbus_dev_fatal()`: publish `<errno> <message>` in
    /// `error/<nodename>/error` of our home, move to Closing; then (unlike Linux, which leaves
    /// the rest to the other end's reaction) disconnect and move on to Closed, so that a dead
    /// peer cannot keep the device half-closed. Writes that fail (our nodes gone, permissions
    /// revoked) are skipped; the device ends Closed on our side in any case.
    pub(super) fn fail(&mut self, dev: &mut Device, e: DriverError, now: Duration) {
        if dev.phase == Phase::Closed {
            return;
        }
        let node = path::error_node(&self.home, &dev.info.nodename);
        let _ = self.xs.write(&node, e.published().as_bytes());
        dev.error = Some(e.clone());
        let _ = switch_state(&mut self.xs, dev, XenbusState::Closing);
        dev.detach(&mut self.xs, now);
        let _ = switch_state(&mut self.xs, dev, XenbusState::Closed);
        dev.set_phase(Phase::Closed, now, &self.cfg);
        self.unwatch(dev);
        self.events.push_back(BusEvent::Closed {
            nodename: dev.info.nodename.clone(),
            error: Some(e),
        });
        self.schedule_removal(dev, now);
    }
}
