//! Devices: `xl block-attach` / `block-detach`, the backend and frontend nodes and their removal.

use super::*;

/// A device's identity: class (`vbd`, or any name), frontend and backend domains, devid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Device {
    /// The device class (`vbd`, `vif`, or a test's own): the frontend's `device/<class>`.
    pub class: String,
    /// The backend's class, `backend/<backend_class>`: the same as `class` except where libxl
    /// picks another (a vbd with `backendtype=qdisk` is served from `backend/qdisk`, as seen
    /// on real Xen 4.17).
    pub backend_class: String,
    /// The frontend domain.
    pub frontend: DomId,
    /// The backend domain.
    pub backend: DomId,
    /// The device id (a vbd's virtual-device number).
    pub devid: u32,
}

impl Device {
    /// `/local/domain/<fe>/device/<class>/<devid>`.
    pub fn frontend_path(&self) -> String {
        format!(
            "{}/device/{}/{}",
            dom_path(self.frontend),
            self.class,
            self.devid
        )
    }

    /// `/local/domain/<be>/backend/<backend_class>/<fe>/<devid>`.
    pub fn backend_path(&self) -> String {
        format!(
            "{}/backend/{}/{}/{}",
            dom_path(self.backend),
            self.backend_class,
            self.frontend,
            self.devid
        )
    }

    /// libxl's copy: `/libxl/<fe>/device/<class>/<devid>`.
    pub fn libxl_path(&self) -> String {
        format!(
            "/libxl/{}/device/{}/{}",
            self.frontend, self.class, self.devid
        )
    }
}

/// The `<type>` of a backend path `/local/domain/<be>/backend/<type>/<fe>/<devid>`.
fn backend_class_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/local/domain/")?;
    let mut parts = rest.split('/');
    parts.next()?;
    (parts.next()? == "backend").then_some(())?;
    parts.next().map(str::to_string)
}

/// A generic device for [`Toolstack::add_device`]: the identity plus the keys libxl's
/// caller passes to `libxl__device_generic_add`. `backend` (frontend side) and `frontend`
/// (backend side) are added by the toolstack, first, as libxl does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Who and what.
    pub device: Device,
    /// Frontend keys, in order (after `backend`).
    pub frontend_keys: Vec<(String, String)>,
    /// Backend keys, in order (after `frontend`); libxl keeps a copy of these.
    pub backend_keys: Vec<(String, String)>,
}

impl DeviceSpec {
    /// A device of class `class` with the keys every libxl device has: frontend
    /// `backend-id`, `state=1`; backend `frontend-id`, `online=1`, `state=1`.
    pub fn new(class: &str, frontend: DomId, backend: DomId, devid: u32) -> DeviceSpec {
        DeviceSpec {
            device: Device {
                class: class.to_string(),
                backend_class: class.to_string(),
                frontend,
                backend,
                devid,
            },
            frontend_keys: vec![
                ("backend-id".into(), backend.to_string()),
                ("state".into(), state::INITIALISING.to_string()),
            ],
            backend_keys: vec![
                ("frontend-id".into(), frontend.to_string()),
                ("online".into(), "1".into()),
                ("state".into(), state::INITIALISING.to_string()),
            ],
        }
    }

    /// Add (or replace) a frontend key.
    pub fn frontend_key(mut self, key: &str, value: &str) -> DeviceSpec {
        set_key(&mut self.frontend_keys, key, value);
        self
    }

    /// Add (or replace) a backend key.
    pub fn backend_key(mut self, key: &str, value: &str) -> DeviceSpec {
        set_key(&mut self.backend_keys, key, value);
        self
    }
}

fn set_key(keys: &mut Vec<(String, String)>, key: &str, value: &str) {
    match keys.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.to_string(),
        None => keys.push((key.to_string(), value.to_string())),
    }
}

/// A disk as `xl create`'s `disk=` / `xl block-attach` describe it
/// (`format=raw, vdev=xvda, access=rw, backendtype=phy, target=/root/disk.img`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vbd {
    /// The frontend domain.
    pub frontend: DomId,
    /// The backend domain (`backend=`; 0 or a driver domain).
    pub backend: DomId,
    /// `vdev=` (`xvda`, `d1p2`, `51712` ...): the backend's `dev`; its number is the devid.
    pub vdev: String,
    /// `target=`: the backend's `params`.
    pub target: String,
    /// `access=rw` (`mode=w`, the default) or `ro` (`mode=r`).
    pub writable: bool,
    /// `backendtype=` (`phy` default; `tap`, `qdisk`): the backend's `type`.
    pub backendtype: String,
    /// `script=` (default `/etc/xen/scripts/block`).
    pub script: String,
    /// `devtype=cdrom` (`device-type=cdrom`, `removable=1`) instead of a disk.
    pub cdrom: bool,
    /// `discard` (default on): `discard-enable`.
    pub discard: bool,
    /// `trusted` (default 1).
    pub trusted: bool,
    /// The frontend `protocol` libxl writes for PV guests (default `x86_64-abi`; `None`:
    /// not written, as for PVH/HVM).
    pub protocol: Option<String>,
}

impl Vbd {
    /// A read-write `phy` disk `vdev` of domain `frontend`, served by `backend`, backed by
    /// `target`.
    pub fn new(frontend: DomId, backend: DomId, vdev: &str, target: &str) -> Vbd {
        Vbd {
            frontend,
            backend,
            vdev: vdev.to_string(),
            target: target.to_string(),
            writable: true,
            backendtype: "phy".into(),
            script: "/etc/xen/scripts/block".into(),
            cdrom: false,
            discard: true,
            trusted: true,
            protocol: Some("x86_64-abi".into()),
        }
    }

    /// Read-only (`access=ro`, `mode=r`).
    pub fn read_only(mut self) -> Vbd {
        self.writable = false;
        self
    }

    /// The device spec libxl's `device_disk_add` hands to `libxl__device_generic_add`.
    pub fn spec(&self) -> Result<DeviceSpec> {
        let devid = vdev_to_devid(&self.vdev).ok_or_else(|| Error::BadVdev(self.vdev.clone()))?;
        let dtype = if self.cdrom { "cdrom" } else { "disk" };
        let mut fe = vec![
            ("backend-id".to_string(), self.backend.to_string()),
            ("state".into(), state::INITIALISING.to_string()),
            ("virtual-device".into(), devid.to_string()),
            ("device-type".into(), dtype.into()),
            (
                "trusted".into(),
                if self.trusted { "1" } else { "0" }.into(),
            ),
        ];
        if let Some(p) = &self.protocol {
            fe.push(("protocol".into(), p.clone()));
        }
        // libxl (seen on Xen 4.17): a qdisk vbd's backend is under backend/qdisk, its params
        // "aio:<target>" for a raw file, and it has no hotplug script
        let qdisk = self.backendtype == "qdisk";
        let mut be = vec![(
            "params".to_string(),
            if qdisk {
                format!("aio:{}", self.target)
            } else {
                self.target.clone()
            },
        )];
        if !qdisk {
            be.push(("script".into(), self.script.clone()));
        }
        be.extend([
            ("frontend-id".into(), self.frontend.to_string()),
            ("online".into(), "1".into()),
            (
                "removable".into(),
                if self.cdrom { "1" } else { "0" }.into(),
            ),
            ("bootable".into(), "1".into()),
            ("state".into(), state::INITIALISING.to_string()),
            ("dev".into(), self.vdev.clone()),
            ("type".into(), self.backendtype.clone()),
            ("mode".into(), if self.writable { "w" } else { "r" }.into()),
            ("device-type".into(), dtype.into()),
            (
                "discard-enable".into(),
                if self.discard { "1" } else { "0" }.into(),
            ),
            ("specification".into(), "xen".into()),
        ]);
        Ok(DeviceSpec {
            device: Device {
                class: "vbd".into(),
                backend_class: if qdisk { "qdisk" } else { "vbd" }.into(),
                frontend: self.frontend,
                backend: self.backend,
                devid,
            },
            frontend_keys: fe,
            backend_keys: be,
        })
    }
}

/// How [`Toolstack::remove_device_with`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachOptions {
    /// How long to wait for Closed.
    pub timeout: Duration,
    /// On timeout, remove the nodes anyway (and still report the error) — what libxl does
    /// after its forced retry. Without it the nodes stay for inspection.
    pub force: bool,
    /// Remove the backend directory of a driver-domain backend too, as a stand-in for a
    /// driver domain that does not. Real libxl in dom0 leaves it to the driver domain
    /// (`xl devd`; our bus does it: `libxl__device_destroy` removes the backend path only in
    /// the backend's own domain) and waits `timeout` for it to go. Default `false`, as
    /// libxl: the lab showed real libxl timing out on a storage domain that did not.
    pub remove_driver_domain_backend: bool,
}

impl Toolstack {
    /// `xl block-attach` (and `xl create`'s `disk=`): [`Toolstack::add_device`] with the
    /// keys of [`Vbd::spec`]. Returns the device (its devid is the vdev's number).
    pub fn add_vbd(&self, vbd: &Vbd) -> Result<Device> {
        self.add_device(&vbd.spec()?)
    }

    /// `libxl__device_generic_add` in one transaction: the frontend directory (removed
    /// first) `(n<fe>,r<be>)` with `backend` and the frontend keys, the backend directory
    /// (removed first) `(n<be>,r<fe>)` with `frontend` and the backend keys, and libxl's
    /// copy of the backend keys under `/libxl/<fe>/device/...`. Parents created on the way
    /// inherit their parent's permissions (see the crate docs). Does not wait for the
    /// backend ([`Toolstack::wait_state`] does).
    pub fn add_device(&self, spec: &DeviceSpec) -> Result<Device> {
        let d = &spec.device;
        let (fe, be) = (d.frontend, d.backend);
        let (fp, bp, lp) = (d.frontend_path(), d.backend_path(), d.libxl_path());
        let fperms = perms(&[(Access::None, fe), (Access::Read, be)]);
        let bperms = perms(&[(Access::None, be), (Access::Read, fe)]);
        let mut ops = vec![
            Op::Rm(fp.clone()),
            Op::Write(fp.clone(), String::new()),
            Op::SetPerms(fp.clone(), fperms),
            Op::Write(format!("{fp}/backend"), bp.clone()),
        ];
        for (k, v) in &spec.frontend_keys {
            ops.push(Op::Write(format!("{fp}/{k}"), v.clone()));
        }
        ops.push(Op::Rm(bp.clone()));
        ops.push(Op::Write(bp.clone(), String::new()));
        ops.push(Op::SetPerms(bp.clone(), bperms));
        ops.push(Op::Write(format!("{bp}/frontend"), fp.clone()));
        for (k, v) in &spec.backend_keys {
            ops.push(Op::Write(format!("{bp}/{k}"), v.clone()));
        }
        for (k, v) in &spec.backend_keys {
            ops.push(Op::Write(format!("{lp}/{k}"), v.clone()));
        }
        self.transact("libxl__device_generic_add", &ops)?;
        Ok(d.clone())
    }

    /// `xl block-attach` as libxl completes it: [`add_vbd`](Self::add_vbd), then
    /// [`attach_wait`](Self::attach_wait).
    pub fn attach_vbd(&self, vbd: &Vbd, timeout: Duration) -> Result<Device> {
        let d = self.add_vbd(vbd)?;
        self.attach_wait(&d, timeout)?;
        Ok(d)
    }

    /// What libxl does after writing a device (`libxl__wait_device_connection`): wait up to
    /// `timeout` (libxl's `LIBXL_INIT_TIMEOUT` is 10 s) for the backend to reach InitWait
    /// (2) — or any later state. For a backend in dom0 libxl then runs the hotplug script;
    /// here that script's result is written: `hotplug-status=connected` in the backend
    /// directory (not `node`/`physical-device`, which name a Linux block device). For a
    /// driver-domain backend dom0 waits for InitWait only ("assuming driver domains").
    /// On timeout: [`Error::DeviceAddTimeout`] and the nodes stay.
    pub fn attach_wait(&self, dev: &Device, timeout: Duration) -> Result<()> {
        let bstate = format!("{}/state", dev.backend_path());
        let mut last = None;
        let ok = self.wait_for(&[&bstate], timeout, |xs| {
            last = read_u32(xs, &bstate)?;
            Ok(last.is_some_and(|s| s >= state::INIT_WAIT))
        })?;
        if !ok {
            return Err(Error::DeviceAddTimeout {
                backend_path: dev.backend_path(),
                backend_state: last,
            });
        }
        if dev.backend == 0 {
            let p = format!("{}/hotplug-status", dev.backend_path());
            lock(&self.xs)
                .write(&p, b"connected")
                .map_err(Error::xs("write", p.clone()))?;
        }
        Ok(())
    }

    /// The devices of frontend domain `fe` (from libxl's `/libxl/<fe>/device`), each with
    /// its backend domain read from the frontend's `backend` key.
    pub fn devices(&self, fe: DomId) -> Result<Vec<Device>> {
        let mut xs = lock(&self.xs);
        let root = format!("/libxl/{fe}/device");
        let classes = match xs.directory(&root) {
            Ok(c) => c,
            Err(XsClientError::Xs(XsError::Enoent)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::xs("directory", root)(e)),
        };
        let mut out = Vec::new();
        for class in classes {
            let p = format!("{root}/{class}");
            let ids = match xs.directory(&p) {
                Ok(i) => i,
                Err(XsClientError::Xs(XsError::Enoent)) => continue,
                Err(e) => return Err(Error::xs("directory", p)(e)),
            };
            for id in ids {
                let Ok(devid) = id.parse::<u32>() else {
                    continue;
                };
                let mut d = Device {
                    class: class.clone(),
                    backend_class: class.clone(),
                    frontend: fe,
                    backend: 0,
                    devid,
                };
                let bkey = format!("{}/backend-id", d.frontend_path());
                if let Ok(Some(v)) = xs.try_read(&bkey) {
                    if let Some(b) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                        d.backend = b;
                    }
                }
                let pkey = format!("{}/backend", d.frontend_path());
                if let Ok(Some(v)) = xs.try_read(&pkey) {
                    if let Some(c) = std::str::from_utf8(&v).ok().and_then(backend_class_of) {
                        d.backend_class = c;
                    }
                }
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The device `class`/`devid` of frontend `fe`, its backend found from the frontend's
    /// `backend` key (`/local/domain/<be>/backend/...`).
    pub fn device(&self, class: &str, fe: DomId, devid: u32) -> Result<Device> {
        let fp = format!("{}/device/{class}/{devid}/backend", dom_path(fe));
        let v = lock(&self.xs)
            .try_read(&fp)
            .map_err(Error::xs("read", fp.clone()))?
            .ok_or_else(|| Error::NoSuchDevice(fp.clone()))?;
        let s = String::from_utf8(v).map_err(|_| Error::NoSuchDevice(fp.clone()))?;
        let be = s
            .strip_prefix("/local/domain/")
            .and_then(|r| r.split('/').next())
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| Error::NoSuchDevice(fp.clone()))?;
        Ok(Device {
            class: class.to_string(),
            backend_class: backend_class_of(&s).unwrap_or_else(|| class.to_string()),
            frontend: fe,
            backend: be,
            devid,
        })
    }

    /// `xl block-detach <fe> <vdev>` with the default [`DetachOptions`] (libxl's timeout
    /// from [`Timeouts::device_remove`], not forced).
    pub fn block_detach(&self, fe: DomId, vdev: &str) -> Result<()> {
        let devid = vdev_to_devid(vdev).ok_or_else(|| Error::BadVdev(vdev.to_string()))?;
        let d = self.device("vbd", fe, devid)?;
        self.remove_device(&d)
    }

    /// [`remove_device_with`](Self::remove_device_with) with the default options.
    pub fn remove_device(&self, dev: &Device) -> Result<()> {
        self.remove_device_with(dev, self.detach_options())
    }

    /// The default [`DetachOptions`]: [`Timeouts::device_remove`], not forced, a driver
    /// domain's backend directory left to the driver domain.
    pub fn detach_options(&self) -> DetachOptions {
        DetachOptions {
            timeout: self.timeouts().device_remove,
            force: false,
            remove_driver_domain_backend: false,
        }
    }

    /// `libxl__initiate_device_generic_remove`: unless the backend is gone, write backend
    /// `online=0` and, unless it is already Closed, `state=5` (Closing), in one
    /// transaction; wait up to `opts.timeout` for the backend and the frontend to reach
    /// Closed (6; a missing `state` counts as closed — libxl itself waits for the backend
    /// only). A driver domain's backend: wait up to `opts.timeout` more for the driver
    /// domain to remove the backend directory (libxl's `device_hotplug`, "removal of
    /// backend path"). Then `libxl__device_destroy`: remove the frontend directory,
    /// libxl's copy and a dom0 backend's directory, each with its parents that became
    /// empty (`libxl__xs_path_cleanup`).
    ///
    /// On timeout: [`Error::DeviceRemoveTimeout`] (`unable to remove device with path
    /// <backend>`); with `opts.force` the nodes are removed first, otherwise they stay.
    /// A driver domain that leaves its backend directory: [`Error::BackendNotRemoved`], the
    /// other nodes removed.
    pub fn remove_device_with(&self, dev: &Device, opts: DetachOptions) -> Result<()> {
        let (fp, bp) = (dev.frontend_path(), dev.backend_path());
        let (fstate, bstate) = (format!("{fp}/state"), format!("{bp}/state"));
        let closed = |v: Option<u32>| v.is_none_or(|s| s == state::CLOSED);
        let start = {
            let mut xs = lock(&self.xs);
            xs.transact(|tx| {
                let Some(be) = read_u32(tx, &bstate)? else {
                    return Ok(false); // "backend already removed, cleanup frontend only"
                };
                tx.write(&format!("{bp}/online"), b"0")?;
                if be == state::CLOSED {
                    return Ok(false);
                }
                tx.write(&bstate, state::CLOSING.to_string().as_bytes())?;
                Ok(true)
            })
            .map_err(Error::xs("transaction", bp.clone()))?
        };
        if start {
            let mut last = (None, None);
            let ok = self.wait_for(&[&fstate, &bstate], opts.timeout, |xs| {
                let f = read_u32(xs, &fstate)?;
                let b = read_u32(xs, &bstate)?;
                last = (f, b);
                Ok(closed(f) && closed(b))
            })?;
            if !ok {
                if opts.force {
                    self.destroy_device_nodes(dev, opts.remove_driver_domain_backend)?;
                }
                return Err(Error::DeviceRemoveTimeout {
                    backend_path: bp,
                    frontend_state: last.0,
                    backend_state: last.1,
                    cleaned_up: opts.force,
                });
            }
        }
        if dev.backend != 0 && !opts.remove_driver_domain_backend {
            let gone = self.wait_for(&[&bp], opts.timeout, |xs| Ok(xs.try_read(&bp)?.is_none()))?;
            if !gone {
                self.destroy_device_nodes(dev, false)?;
                return Err(Error::BackendNotRemoved { backend_path: bp });
            }
        }
        self.destroy_device_nodes(dev, opts.remove_driver_domain_backend)
    }

    /// `libxl__device_destroy`: in one transaction, remove the frontend directory, libxl's
    /// copy and the backend directory, each with the parents that became empty.
    pub(crate) fn destroy_device_nodes(&self, dev: &Device, remove_dd_backend: bool) -> Result<()> {
        let (fp, bp, lp) = (dev.frontend_path(), dev.backend_path(), dev.libxl_path());
        let with_be = dev.backend == 0 || remove_dd_backend;
        let mut xs = lock(&self.xs);
        xs.transact(|tx| {
            path_cleanup(tx, &fp)?;
            path_cleanup(tx, &lp)?;
            if with_be {
                path_cleanup(tx, &bp)?;
            }
            Ok(())
        })
        .map_err(Error::xs("transaction", fp.clone()))
    }

    /// Wait up to `timeout` until `state` of the device's frontend (`frontend == true`) or
    /// backend is `want`. Returns the state seen last (`Ok(Some(want))` when reached).
    pub fn wait_state(
        &self,
        dev: &Device,
        frontend: bool,
        want: u32,
        timeout: Duration,
    ) -> Result<Option<u32>> {
        let p = if frontend {
            dev.frontend_path()
        } else {
            dev.backend_path()
        } + "/state";
        let mut last = None;
        self.wait_for(&[&p], timeout, |xs| {
            last = read_u32(xs, &p)?;
            Ok(last == Some(want))
        })?;
        Ok(last)
    }

    /// Wait up to `timeout` until `done` (run on a dom0 connection of the wait's own) is true:
    /// the nodes in `watch` are watched, and `done` is run at first, on every event and at
    /// least every 50 ms. `Ok(false)` on timeout.
    pub fn wait_for(
        &self,
        watch: &[&str],
        timeout: Duration,
        mut done: impl FnMut(&mut Dom0Client) -> std::result::Result<bool, XsClientError>,
    ) -> Result<bool> {
        let mut xs = self.dom0_client()?;
        for (i, p) in watch.iter().enumerate() {
            xs.watch(p, &format!("w{i}"))
                .map_err(Error::xs("watch", p.to_string()))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            while xs.take_watch_event(None).is_some() {}
            if done(&mut xs).map_err(Error::xs("wait", watch.join(" ")))? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            xs.next_watch_event(None, (deadline - now).min(POLL))
                .map_err(Error::xs("wait", watch.join(" ")))?;
        }
    }
}
