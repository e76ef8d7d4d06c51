//! What every bootable image does first, and how it sleeps: connect to XenStore over the guest
//! ring, learn who it is, and wait on its event channels until a deadline. The images
//! (examples/hello, blk-app, storage-domain) map the XenStore page themselves — that is the one
//! `unsafe` step, and it stays in the image — and hand the ring to [`open_store`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use xen_bus::store::client::{Client, Store};
use xen_bus::store::transport::RingTransport;
use xen_platform::xs_ring::XsGuestRing;
use xen_platform::{Clock, Error, Events, EvtchnPort};

/// How long an image waits for xenstored to answer its first request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A domain's XenStore session: the client, and what XenStore says the domain is.
pub struct StoreSession<'a, P: Events + Clock + ?Sized> {
    /// The client on the guest ring (relative paths are under `/local/domain/<domid>`).
    pub client: Client<RingTransport<'a, P>>,
    /// The ring's event channel (an image waits on it next to its devices' ports).
    pub port: EvtchnPort,
    /// `domid`.
    pub domid: u16,
    /// `name` (empty when the toolstack wrote none).
    pub name: String,
}

/// Connect to XenStore over `ring` (notified through `port`) and read `domid` and `name`.
pub fn open_store<'a, P: Events + Clock + ?Sized>(
    plat: &'a P,
    ring: XsGuestRing,
    port: EvtchnPort,
) -> Result<StoreSession<'a, P>, String> {
    let mut transport = RingTransport::new(ring, plat, port);
    transport
        .connect(CONNECT_TIMEOUT)
        .map_err(|e| format!("xenstore connect: {e:?}"))?;
    let mut client = Client::new(transport);
    let domid = client
        .read_string("domid")
        .map_err(|e| format!("read domid: {e:?}"))?;
    let domid: u16 = domid
        .parse()
        .map_err(|_| format!("domid {domid:?} is not a number"))?;
    let name = client.read_string("name").unwrap_or_default();
    Ok(StoreSession {
        client,
        port,
        domid,
        name,
    })
}

/// After a real resume (`xen_control::Event::Resumed` with `cancelled` false): the XenStore
/// connection is a new one on the event channel `port` (xen-rt's `Xen::store` after the
/// resume). Take it up and forget what the old one had: the buffered bytes, the requests, the
/// watches (register them again: the control driver does so at its next poll, a bus with
/// `Bus::store_reset`).
pub fn resume_store<P: Events + Clock + ?Sized>(
    client: &mut Client<RingTransport<'_, P>>,
    port: EvtchnPort,
) {
    client.transport_mut().resumed(port);
    client.reset();
}

/// Sleep until an event on one of `ports` or until `deadline` (absolute, platform clock;
/// `None`: no bound), and clear the port that fired. A timeout is not an error.
pub fn wait_until<P: Events + Clock + ?Sized>(
    plat: &P,
    ports: &[EvtchnPort],
    deadline: Option<Duration>,
) -> Result<(), String> {
    let timeout = deadline.map(|d| d.saturating_sub(plat.now()).max(Duration::from_millis(1)));
    match plat.wait(ports, timeout) {
        Ok(p) => {
            plat.clear(p);
            Ok(())
        }
        Err(Error::Timeout) => Ok(()),
        Err(e) => Err(format!("wait: {e}")),
    }
}

/// [`wait_until`] on `first` and `more` (without duplicates), reusing `buf`.
pub fn wait_on<P: Events + Clock + ?Sized>(
    plat: &P,
    buf: &mut Vec<EvtchnPort>,
    first: EvtchnPort,
    more: &[EvtchnPort],
    deadline: Option<Duration>,
) -> Result<(), String> {
    buf.clear();
    buf.push(first);
    buf.extend(more.iter().copied().filter(|&p| p != first));
    wait_until(plat, buf, deadline)
}
