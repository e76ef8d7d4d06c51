//! Our xenstored ([`crate::xenstored::Xenstored`]) as a conformance [`Peer`]: dom0 over its
//! Unix socket, domUs over the rings of simulated domains.
//!
//! Each [`OurXenstored`] has a simulator of its own (dom0, where the daemon runs, plus the
//! domains the cases ask for, with exactly their domids), a daemon in that dom0, and a Unix
//! socket in a fresh temporary directory; dropping it stops the daemon and removes the
//! directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xen_sim::{Domain, Hypervisor};
use xen_store::client::{Client, ClientConfig, Transport};
use xen_store::server::Quotas;
use xen_store::DomId;

use crate::conformance::{Limits, Peer, PeerClient};
use crate::xenstored::{SimGuest, Xenstored};
use crate::UnixTransport;

/// How long a client request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The Store quotas for the suite's [`Limits`] (the other quotas keep xenstored's defaults).
pub fn quotas(limits: Limits) -> Quotas {
    Quotas {
        nodes: limits.nodes,
        watches: limits.watches,
        transactions: limits.transactions,
        node_size: limits.node_size,
        ..Quotas::DEFAULT
    }
}

/// Our xenstored in a simulator of its own. See the [module docs](self).
#[derive(Debug)]
pub struct OurXenstored {
    /// Taken (stopped) first on drop, while its socket file still exists.
    xsd: Option<Xenstored>,
    hv: Arc<Hypervisor>,
    _dom0: Domain,
    dir: PathBuf,
    limits: Limits,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl OurXenstored {
    /// Start a daemon enforcing `limits`.
    pub fn start(limits: Limits) -> std::io::Result<OurXenstored> {
        let hv = Hypervisor::new();
        let dom0 = hv.create_domain("Domain-0");
        let xsd = Xenstored::start_sim(&hv, quotas(limits))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Short: socket paths must stay under 108 bytes.
        let dir = std::env::temp_dir().join(format!("oxsd-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if let Err(e) = xsd.serve_socket(dir.join("socket")) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(OurXenstored {
            xsd: Some(xsd),
            hv,
            _dom0: dom0,
            dir,
            limits,
        })
    }

    /// [`start`](Self::start), panicking on failure (for tests and benches).
    pub fn for_test(limits: Limits) -> OurXenstored {
        Self::start(limits).unwrap_or_else(|e| panic!("start our xenstored: {e}"))
    }

    /// The daemon.
    pub fn xenstored(&self) -> &Xenstored {
        match &self.xsd {
            Some(x) => x,
            None => unreachable!("the daemon is only taken by drop"),
        }
    }

    /// The simulator.
    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// The dom0 socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// The directory holding the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new dom0 connection over the socket.
    pub fn dom0_client(&self) -> Client<UnixTransport> {
        let t = UnixTransport::connect(self.socket())
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket().display()));
        Client::with_config(t, client_config())
    }

    /// Create simulated domain `domid`, build its xenstore page and channel as the toolstack
    /// does, introduce it with `XS_INTRODUCE` from dom0 over the socket, and connect to it as
    /// the guest over its ring.
    pub fn try_domu(&self, domid: DomId) -> Result<Client<crate::OwnedRing<Domain>>, String> {
        let guest = self
            .hv
            .create_domain_with_id(domid, &format!("guest{domid}"))
            .map_err(|e| format!("create dom{domid}: {e}"))?;
        let g = SimGuest::build(&guest).map_err(|e| format!("build dom{domid}: {e}"))?;
        let mut d0 = self.dom0_client();
        d0.introduce(domid, g.frame(), g.port())
            .map_err(|e| format!("XS_INTRODUCE {domid}: {e}"))?;
        let mut c = g.client().map_err(|e| format!("ring of dom{domid}: {e}"))?;
        c.set_timeout(REQUEST_TIMEOUT);
        Ok(c)
    }
}

impl Drop for OurXenstored {
    fn drop(&mut self) {
        // The daemon stops (threads joined, rings unmapped, socket file removed) first.
        drop(self.xsd.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: REQUEST_TIMEOUT,
        ..ClientConfig::default()
    }
}

impl Peer for OurXenstored {
    fn name(&self) -> &str {
        "our xenstored"
    }

    fn dom0(&self) -> PeerClient {
        let c = self.dom0_client();
        let cfg = *c.config();
        Client::with_config(
            Box::new(c.into_transport()) as Box<dyn Transport + Send>,
            cfg,
        )
    }

    fn domu(&self, domid: DomId) -> PeerClient {
        let c = self
            .try_domu(domid)
            .unwrap_or_else(|e| panic!("domU {domid}: {e}"));
        let cfg = *c.config();
        Client::with_config(
            Box::new(c.into_transport()) as Box<dyn Transport + Send>,
            cfg,
        )
    }

    fn kill_domain(&self, domid: DomId) {
        self.hv
            .destroy_domain(domid)
            .unwrap_or_else(|e| panic!("destroy dom{domid}: {e}"));
        // What VIRQ_DOM_EXC is to xenstored.
        self.xenstored().kick();
    }

    fn limits(&self) -> Limits {
        self.limits
    }
}
