//! `xl shutdown` / `reboot` / `destroy`: the control request, its acknowledgement, the teardown.

use super::*;

impl Toolstack {
    /// `libxl__domain_pvcontrol`: write `cmd` to `control/shutdown` and wait up to
    /// [`Timeouts::control_ack`] for the guest to acknowledge (the node empty or removed).
    /// On timeout: [`Error::GuestDidntAcknowledge`] (libxl: "guest didn't acknowledge
    /// control request: -9"); the node keeps `cmd`.
    pub fn pvcontrol(&self, domid: DomId, cmd: &str) -> Result<()> {
        if self.hv.domain(domid).is_none() {
            return Err(Error::NoSuchDomain(domid));
        }
        let path = format!("{}/control/shutdown", dom_path(domid));
        lock(&self.xs)
            .write(&path, cmd.as_bytes())
            .map_err(Error::xs("write", path.clone()))?;
        let acked = self.wait_for(&[&path], self.timeouts().control_ack, |xs| {
            Ok(xs.try_read(&path)?.is_none_or(|v| v.is_empty()))
        })?;
        if acked {
            Ok(())
        } else {
            Err(Error::GuestDidntAcknowledge {
                domid,
                cmd: cmd.to_string(),
                rc: ERROR_TIMEDOUT,
            })
        }
    }

    /// `xl shutdown -w`: [`pvcontrol`](Self::pvcontrol) `poweroff`, then wait up to
    /// [`Timeouts::shutdown`] for the domain to shut down with reason poweroff.
    pub fn shutdown(&self, domid: DomId) -> Result<()> {
        self.control(domid, "poweroff", ShutdownReason::Poweroff)
    }

    /// `xl reboot -w`: [`pvcontrol`](Self::pvcontrol) `reboot`, then wait for the domain to
    /// shut down with reason reboot (it is not re-created).
    pub fn reboot(&self, domid: DomId) -> Result<()> {
        self.control(domid, "reboot", ShutdownReason::Reboot)
    }

    fn control(&self, domid: DomId, cmd: &str, expected: ShutdownReason) -> Result<()> {
        let dom = self.hv.domain(domid).ok_or(Error::NoSuchDomain(domid))?;
        self.pvcontrol(domid, cmd)?;
        let got = dom.wait_shutdown(Some(self.timeouts().shutdown));
        if got == Some(expected) {
            Ok(())
        } else {
            Err(Error::ShutdownTimeout {
                domid,
                expected,
                got,
            })
        }
    }

    /// `xl destroy`: remove every device of the domain by force (backend `online=0`, no
    /// wait; the frontend, libxl and backend nodes removed as [`remove_device_with`]
    /// does), remove `/vm/<uuid>`, `/local/domain/<domid>` and `/libxl/<domid>`, then destroy
    /// the simulated domain and let xenstored release it (its remaining nodes go,
    /// `@releaseDomain` fires) before returning.
    ///
    /// [`remove_device_with`]: Self::remove_device_with
    pub fn destroy(&self, domid: DomId) -> Result<()> {
        if domid == 0 {
            return Err(Error::Sim(xen_sim::Error::Invalid));
        }
        if self.hv.domain(domid).is_none() {
            return Err(Error::NoSuchDomain(domid));
        }
        for d in self.devices(domid)? {
            let online = format!("{}/online", d.backend_path());
            {
                let mut xs = lock(&self.xs);
                if let Ok(Some(_)) = xs.try_read(&online) {
                    let _ = xs.write(&online, b"0");
                }
            }
            self.destroy_device_nodes(&d, true)?;
        }
        let dom = dom_path(domid);
        {
            let mut xs = lock(&self.xs);
            let vm = xs
                .try_read(&format!("{dom}/vm"))
                .map_err(Error::xs("read", format!("{dom}/vm")))?;
            let mut paths = Vec::new();
            if let Some(vm) = vm.and_then(|v| String::from_utf8(v).ok()) {
                if vm.starts_with("/vm/") {
                    paths.push(vm);
                }
            }
            paths.push(dom.clone());
            paths.push(format!("/libxl/{domid}"));
            for p in paths {
                match xs.rm(&p) {
                    Ok(()) | Err(XsClientError::Xs(XsError::Enoent)) => {}
                    Err(e) => return Err(Error::xs("rm", p)(e)),
                }
            }
        }
        self.xenstored().destroy_domain(domid)?;
        Ok(())
    }
}
