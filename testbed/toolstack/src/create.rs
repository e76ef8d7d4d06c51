//! `xl create`: a domain's nodes, its xenstore page and port, as libxl writes them.

use super::*;

impl Toolstack {
    /// `xl create`: a simulated domain `name`, the nodes `libxl__domain_make` and
    /// `libxl__build_post` write (see the crate docs' table), its xenstore page and port
    /// built and introduced to xenstored, and the console nodes. The guest connects with
    /// [`Guest::xs_client`].
    pub fn create_domain(&self, name: &str, config: DomainConfig) -> Result<Guest> {
        self.check_name(name)?;
        let domain = match config.domid {
            Some(id) => self.hv.create_domain_with_id(id, name)?,
            None => self.hv.try_create_domain(name)?,
        };
        match self.build_domain(&domain, name, &config) {
            Ok(g) => Ok(g),
            Err(e) => {
                let _ = self.xenstored().destroy_domain(domain.id());
                Err(e)
            }
        }
    }

    /// `libxl__domain_rename`'s check: no other domain has this name.
    fn check_name(&self, name: &str) -> Result<()> {
        let mut xs = lock(&self.xs);
        let doms = match xs.directory("/local/domain") {
            Ok(d) => d,
            Err(XsClientError::Xs(XsError::Enoent)) => Vec::new(),
            Err(e) => return Err(Error::xs("directory", "/local/domain")(e)),
        };
        for d in doms {
            let p = format!("/local/domain/{d}/name");
            if let Ok(Some(v)) = xs.try_read(&p) {
                if v == name.as_bytes() {
                    return Err(Error::NameInUse(name.to_string()));
                }
            }
        }
        Ok(())
    }

    fn build_domain(&self, domain: &Domain, name: &str, config: &DomainConfig) -> Result<Guest> {
        let n = domain.id();
        let dom = dom_path(n);
        let uuid = config.uuid.clone().unwrap_or_else(|| make_uuid(n));
        let vm = format!("/vm/{uuid}");
        let libxl = format!("/libxl/{n}");
        let ro = perms(&[(Access::None, 0), (Access::Read, n)]);
        let rw = perms(&[(Access::None, n)]);
        let none = perms(&[(Access::None, 0)]);

        // libxl__domain_make.
        let mut ops = vec![
            Op::Rm(dom.clone()),
            Op::Mknod(dom.clone(), ro.clone()),
            Op::Rm(vm.clone()),
            Op::Mknod(vm.clone(), ro.clone()),
            Op::Rm(libxl.clone()),
            Op::Mknod(libxl.clone(), none.clone()),
            Op::Mknod(format!("{libxl}/device"), none.clone()),
            Op::Write(format!("{dom}/vm"), vm.clone()),
            Op::Write(format!("{dom}/name"), name.to_string()),
            Op::Write(
                format!("{dom}/control/platform-feature-multiprocessor-suspend"),
                "1".into(),
            ),
            Op::Write(
                format!("{dom}/control/platform-feature-xs_reset_watches"),
                "1".into(),
            ),
        ];
        for k in [
            "control/shutdown",
            "control/feature-poweroff",
            "control/feature-reboot",
            "control/feature-suspend",
            "control/sysrq",
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
        ] {
            ops.push(Op::Mknod(format!("{dom}/{k}"), rw.clone()));
        }
        if config.driver_domain {
            ops.push(Op::Mknod(format!("{dom}/libxl"), rw.clone()));
            ops.push(Op::Mknod(format!("{dom}/device-model"), rw.clone()));
        }
        ops.push(Op::Mknod(
            format!("{dom}/device/suspend/event-channel"),
            rw.clone(),
        ));
        ops.push(Op::Write(format!("{vm}/uuid"), uuid.clone()));
        ops.push(Op::Write(format!("{vm}/name"), name.to_string()));
        ops.push(Op::Write(format!("{libxl}/type"), "pv".into()));
        self.transact("libxl__domain_make", &ops)?;

        // The domain builder: the xenstore page, its reserved grant and unbound port.
        let store = SimGuest::build(domain)?;

        // libxl__build_post.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{}.{:02}", d.as_secs(), d.subsec_millis() / 10))
            .unwrap_or_else(|_| "0.00".into());
        let target = config
            .target_memory_kib
            .saturating_sub(config.video_memory_kib);
        let mut ops = vec![
            Op::Write(
                format!("{dom}/memory/static-max"),
                config.max_memory_kib.to_string(),
            ),
            Op::Write(format!("{dom}/memory/target"), target.to_string()),
            Op::Write(
                format!("{dom}/memory/videoram"),
                config.video_memory_kib.to_string(),
            ),
            Op::Write(format!("{dom}/domid"), n.to_string()),
            Op::Write(format!("{dom}/store/port"), store.port().to_string()),
            Op::Write(format!("{dom}/store/ring-ref"), store.frame().to_string()),
        ];
        for i in 0..config.vcpus.max(1) {
            ops.push(Op::Write(
                format!("{dom}/cpu/{i}/availability"),
                "online".into(),
            ));
        }
        ops.push(Op::Write(format!("{vm}/start_time"), start));
        self.transact("libxl__build_post", &ops)?;

        // xs_introduce_domain.
        self.xenstored()
            .introduce_domain(n, store.port())
            .map_err(|e| Error::xs("introduce", dom.clone())(XsClientError::Xs(e)))?;

        // The primary console (libxl__device_console_add): dom0's, readable by the guest.
        self.transact(
            "console",
            &[
                Op::Write(format!("{dom}/console/backend-id"), "0".into()),
                Op::Write(format!("{dom}/console/limit"), "1048576".into()),
                Op::Write(format!("{dom}/console/type"), "xenconsoled".into()),
                Op::Write(format!("{dom}/console/output"), "pty".into()),
                Op::Write(format!("{dom}/console/tty"), String::new()),
            ],
        )?;

        let (store_port, store_frame) = (store.port(), store.frame());
        Ok(Guest {
            domain: domain.clone(),
            uuid,
            store_port,
            store_frame,
            ring: Mutex::new(Some(store.transport()?)),
        })
    }
}
