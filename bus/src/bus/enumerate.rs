//! Finding devices: watch events routed to their devices, class directories enumerated,
//! new devices in Initialising adopted (their details read and checked), closed ones that
//! the toolstack removed forgotten.

use super::*;

impl<T: Transport> Bus<T> {
    /// A watch event under one of our class directories.
    pub(super) fn route_own(&mut self, abs: &str) {
        let Some(rel) = abs
            .strip_prefix(self.home.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let (role, class, dev) = match parts.as_slice() {
            ["device", class, rest @ ..] => (
                Role::Front,
                *class,
                rest.first().map(|id| front_key(class, id)),
            ),
            ["backend", class, rest @ ..] => (
                Role::Back,
                *class,
                match rest {
                    [fe, id, ..] => Some(format!("backend/{class}/{fe}/{id}")),
                    _ => None,
                },
            ),
            _ => return,
        };
        let registered = match role {
            Role::Front => self.front.contains_key(class),
            Role::Back => self.back.contains_key(class),
        };
        if !registered {
            return;
        }
        match dev.and_then(|k| self.devices.get_mut(&k)) {
            Some(d) if d.phase != Phase::Closed => d.dirty = true,
            // A device we do not have yet, a closed one (removed or started again by the
            // toolstack), or a change above the devices: look again.
            _ => {
                self.rescan.insert((role, class.to_string()));
            }
        }
    }

    /// Enumerate `class`, adopting devices in Initialising and forgetting closed ones whose
    /// nodes the toolstack removed.
    pub(super) fn scan(
        &mut self,
        role: Role,
        class: &str,
        now: Duration,
    ) -> Result<(), XsClientError> {
        let mut found: Vec<(String, Option<DomId>, String)> = Vec::new();
        match role {
            Role::Front => {
                for id in self.list(&format!("{}/device/{class}", self.home))? {
                    found.push((front_key(class, &id), None, id));
                }
            }
            Role::Back => {
                for fe in self.list(&format!("{}/backend/{class}", self.home))? {
                    let Some(fe_id) = path::parse_domid(fe.as_bytes()) else {
                        continue;
                    };
                    for id in self.list(&format!("{}/backend/{class}/{fe}", self.home))? {
                        found.push((path::back_nodename(class, fe_id, &id), Some(fe_id), id));
                    }
                }
            }
        }
        // Devices of this class that are no longer listed: a closed one is forgotten, a live
        // one finds out on its next step (its own node is gone).
        let listed: BTreeSet<&str> = found.iter().map(|(k, _, _)| k.as_str()).collect();
        let gone: Vec<String> = self
            .devices
            .iter()
            .filter(|(k, d)| {
                d.info.role == role && d.info.class == class && !listed.contains(k.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let closed = self
                .devices
                .get(&k)
                .is_some_and(|d| d.phase == Phase::Closed);
            if closed {
                if let Some(mut d) = self.devices.remove(&k) {
                    self.unwatch(&mut d);
                }
            } else if let Some(d) = self.devices.get_mut(&k) {
                d.dirty = true;
            }
        }
        for (key, fe, id) in found {
            self.consider(role, class, fe, &id, key, now)?;
        }
        Ok(())
    }

    /// `XS_DIRECTORY`, nothing if the node is missing or unreadable.
    pub(super) fn list(&mut self, p: &str) -> Result<Vec<String>, XsClientError> {
        match self.xs.directory(p) {
            Ok(v) => Ok(v),
            Err(e) if e.is_fatal() => Err(e),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// A device node seen by enumeration: adopt it if it is new and in Initialising (as
    /// Linux's `xenbus_probe_node()` probes only devices in `XenbusStateInitialising`).
    pub(super) fn consider(
        &mut self,
        role: Role,
        class: &str,
        fe: Option<DomId>,
        id: &str,
        key: String,
        now: Duration,
    ) -> Result<(), XsClientError> {
        if !path::is_valid_name(id) {
            return Ok(());
        }
        let abs = format!("{}/{key}", self.home);
        if let Some(d) = self.devices.get_mut(&key) {
            if d.phase != Phase::Closed {
                d.dirty = true;
                return Ok(());
            }
            // A closed backend the toolstack is removing (`online` = 0): remove its
            // directory, as `xl devd` does in a driver domain.
            if d.info.role == Role::Back && d.remove_at.is_none() {
                let mut d = self.devices.remove(&key).expect("just found");
                self.schedule_removal(&mut d, now);
                self.devices.insert(key.clone(), d);
            }
            // A closed device whose toolstack started it again: begin afresh.
            match read_state(&mut self.xs, &abs) {
                Ok(Some(XenbusState::Initialising)) if !self.closing_all => {
                    self.devices.remove(&key);
                }
                _ => return Ok(()),
            }
        }
        if self.closing_all {
            // Shutting down: nothing new is started.
            return Ok(());
        }
        match read_state(&mut self.xs, &abs) {
            Ok(Some(XenbusState::Initialising)) => {}
            _ => {
                if let Some(e) = self.xs.failure() {
                    return Err(e.clone());
                }
                return Ok(());
            }
        }
        let mut info = DeviceInfo {
            role,
            class: class.to_string(),
            id: id.to_string(),
            frontend_id: fe.unwrap_or(self.domid),
            backend_id: if role == Role::Back { self.domid } else { 0 },
            nodename: key.clone(),
            path: abs.clone(),
            otherend: String::new(),
            otherend_id: 0,
        };
        let details = self.read_details(&mut info);
        let mut dev = Device {
            info,
            drv: None,
            phase: Phase::Probe,
            state: XenbusState::Initialising,
            other: None,
            deadline: None,
            dirty: true,
            next_resync: now,
            error: None,
            watching: false,
            detached: false,
            close_requested: false,
            toolstack_closing: false,
            pending: false,
            reconnectable: false,
            remove_at: None,
            restarted: false,
        };
        dev.set_phase(Phase::Probe, now, &self.cfg);
        self.events.push_back(BusEvent::Adopted {
            nodename: key.clone(),
        });
        match details {
            Err(e) => {
                dev.detached = true; // no driver was made
                self.fail(&mut dev, e, now);
            }
            Ok(()) => {
                dev.drv = match role {
                    Role::Front => self.front.get_mut(class).map(|f| Drv::Front(f(&dev.info))),
                    Role::Back => self.back.get_mut(class).map(|f| Drv::Back(f(&dev.info))),
                };
                match self.xs.watch(&dev.info.otherend, TOKEN_OTHEREND) {
                    Ok(()) => dev.watching = true,
                    Err(e) if e.is_fatal() => return Err(e),
                    // Without the watch the periodic resync still sees the other end.
                    Err(_) => {}
                }
            }
        }
        self.devices.insert(key, dev);
        Ok(())
    }

    /// Read and check the other end's details (Linux `xenbus_read_otherend_details()`,
    /// plus the path check of [`path`]).
    pub(super) fn read_details(&mut self, info: &mut DeviceInfo) -> Result<(), DriverError> {
        let (pk, ik) = match info.role {
            Role::Front => ("backend", "backend-id"),
            Role::Back => ("frontend", "frontend-id"),
        };
        let mut get = |k: &str| -> Result<Vec<u8>, DriverError> {
            let p = info.key(k);
            match self.xs.try_read(&p) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(DriverError::new(
                    errno::ENOENT,
                    format!("reading other end details: {p} missing"),
                )),
                Err(e) => Err(DriverError::xs(&format!("reading {p}"), &e)),
            }
        };
        let oe = get(pk)?;
        let oe_id = get(ik)?;
        let bad = |e: path::DetailsError| {
            DriverError::new(
                errno::EINVAL,
                format!(
                    "other end {:?} (id {:?}) rejected: {e}",
                    String::from_utf8_lossy(&oe),
                    String::from_utf8_lossy(&oe_id)
                ),
            )
        };
        match info.role {
            Role::Front => {
                let be =
                    path::check_backend_details(self.domid, &info.id, &oe, &oe_id).map_err(bad)?;
                info.backend_id = be;
                info.otherend_id = be;
            }
            Role::Back => {
                path::check_frontend_details(info.frontend_id, &info.class, &info.id, &oe, &oe_id)
                    .map_err(bad)?;
                info.otherend_id = info.frontend_id;
            }
        }
        info.otherend = String::from_utf8_lossy(&oe).into_owned();
        Ok(())
    }
}
