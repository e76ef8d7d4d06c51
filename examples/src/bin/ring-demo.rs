//! The foundation demo: two domains of the simulator exchange requests over a granted,
//! two-page shared ring, woken by an event channel.
//!
//! The front domain allocates the ring pages, grants them to the back domain and offers an
//! unbound event-channel port; the back domain maps the grants at its own addresses and binds
//! the port. (Until the XenStore layer exists, the grant refs and the port travel over a std
//! channel, standing in for `ring-ref0..N` and `event-channel` in XenStore.) The front pushes
//! requests in bursts; the back answers each with the sum of the request's words; the front
//! checks every answer. Then both sides tear down in order, showing the grant-table rule that a
//! grant cannot be ended while the peer still maps it.
//!
//! Exits with status 1 if any response is missing, duplicated, reordered or wrong.

use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use xen_platform::abi::Pod;
use xen_platform::ring::{BackRing, FrontRing};
use xen_platform::{DomId, Error, Events, EvtchnPort, GrantMapper, GrantRef, Grants, Pages};
use xen_sim::{Domain, Hypervisor};

const RING_PAGES: usize = 2;
const REQUESTS: u64 = 10_000;
const BURST: u64 = 48;
const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// A request: an id and four words to add up.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Request {
    id: u64,
    words: [u32; 4],
}

/// A response: the request's id and the sum of its words.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Response {
    id: u64,
    sum: u64,
}

// SAFETY: repr(C), only integer fields, no padding-dependent invariants: any bytes the peer
// writes are a valid value.
unsafe impl Pod for Request {}
// SAFETY: as above.
unsafe impl Pod for Response {}

/// What the front end hands the back end (in XenStore, later).
struct Offer {
    front: DomId,
    refs: Vec<GrantRef>,
    port: EvtchnPort,
}

fn words_of(id: u64) -> [u32; 4] {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    [x as u32, (x >> 32) as u32, id as u32, 7]
}

fn sum_of(w: [u32; 4]) -> u64 {
    w.iter().map(|&x| u64::from(x)).sum()
}

#[derive(Default, Debug)]
struct BackStats {
    requests: u64,
    notifies_sent: u64,
    wakeups: u64,
}

fn back_end(dom: Domain, offers: mpsc::Receiver<Offer>) -> Result<BackStats, Error> {
    let offer = offers.recv().map_err(|_| Error::PeerGone)?;
    let map = dom.map_multi(offer.front, &offer.refs, false)?;
    println!(
        "[back  d{}] mapped grant refs {:?} of d{} at {:p} ({} pages)",
        dom.id(),
        offer.refs,
        offer.front,
        map.addr,
        map.pages
    );
    let port = dom.bind_interdomain(offer.front, offer.port)?;
    dom.clear(port); // a freshly bound port starts pending, as on Xen
    println!(
        "[back  d{}] bound local port {port} to d{} port {}",
        dom.id(),
        offer.front,
        offer.port
    );
    // SAFETY: `map` covers RING_PAGES pages shared with the front end only, and stays mapped
    // until after the ring is dropped at the end of this function.
    let mut ring: BackRing<Request, Response> =
        unsafe { BackRing::new(map.addr, RING_PAGES * xen_platform::PAGE_SIZE)? };

    let mut stats = BackStats::default();
    'serve: loop {
        while let Some(req) = ring.take_request()? {
            if req.id == u64::MAX {
                break 'serve; // the front end's goodbye
            }
            stats.requests += 1;
            let rsp = Response {
                id: req.id,
                sum: sum_of(req.words),
            };
            ring.push_response(rsp).map_err(|_| Error::RingOverflow)?;
        }
        if ring.push_responses_and_check_notify() {
            dom.notify(port)?;
            stats.notifies_sent += 1;
        }
        if ring.final_check_for_requests() {
            continue;
        }
        dom.wait(&[port], WAIT)?;
        dom.clear(port);
        stats.wakeups += 1;
    }
    // `ring` is not used past this point: the pages can go.
    dom.unmap_multi(map)?;
    dom.close(port)?;
    println!(
        "[back  d{}] unmapped the ring and closed port {port}",
        dom.id()
    );
    Ok(stats)
}

fn run() -> Result<bool, Error> {
    let hv = Hypervisor::new();
    let dom0 = hv.create_domain("Domain-0");
    let front = hv.create_domain("front");
    let back = hv.create_domain("back");
    println!(
        "simulator: d{} {:?}, d{} {:?}, d{} {:?}",
        dom0.id(),
        dom0.name(),
        front.id(),
        front.name(),
        back.id(),
        back.name()
    );

    let (tx, rx) = mpsc::channel();
    let back_dom = back.clone();
    let server = thread::spawn(move || back_end(back_dom, rx));

    // Front end: pages, grants, port.
    let run = front.alloc(RING_PAGES)?;
    let mut refs = Vec::new();
    for i in 0..RING_PAGES {
        let frame = front.frame(run.page(i))?;
        refs.push(front.grant(back.id(), frame, false)?);
    }
    let port = front.alloc_unbound(back.id())?;
    println!(
        "[front d{}] allocated {} ring pages at {:p}, granted them to d{} as refs {:?}, offered port {port}",
        front.id(),
        RING_PAGES,
        run.addr,
        back.id(),
        refs
    );
    // SAFETY: `run` is RING_PAGES pages shared with the back end only, freed after the ring
    // is dropped below.
    let mut ring: FrontRing<Request, Response> = unsafe { FrontRing::new(run.addr, run.len())? };
    println!(
        "[front d{}] ring holds {} entries of {} bytes",
        front.id(),
        ring.size(),
        xen_platform::ring::entry_size::<Request, Response>()
    );
    tx.send(Offer {
        front: front.id(),
        refs: refs.clone(),
        port,
    })
    .map_err(|_| Error::PeerGone)?;

    let (mut sent, mut next_expected, mut notifies, mut suppressed, mut bad) =
        (0u64, 0u64, 0, 0, 0);
    while next_expected < REQUESTS {
        let mut burst = 0;
        while sent < REQUESTS && burst < BURST && !ring.is_full() {
            let req = Request {
                id: sent,
                words: words_of(sent),
            };
            ring.push_request(req).map_err(|_| Error::RingOverflow)?;
            sent += 1;
            burst += 1;
        }
        if burst > 0 {
            if ring.push_requests_and_check_notify() {
                front.notify(port)?;
                notifies += 1;
            } else {
                suppressed += 1;
            }
        }
        while let Some(rsp) = ring.take_response()? {
            if rsp.id != next_expected || rsp.sum != sum_of(words_of(rsp.id)) {
                bad += 1;
            }
            next_expected = rsp.id.wrapping_add(1);
        }
        if next_expected == REQUESTS || (sent < REQUESTS && !ring.is_full()) {
            continue; // done, or more requests can go out without waiting
        }
        if !ring.final_check_for_responses() {
            front.wait(&[port], WAIT)?;
            front.clear(port);
        }
    }
    println!(
        "[front d{}] {} requests answered, {} wrong; {} bursts notified the back end, {} needed no notify",
        front.id(),
        next_expected,
        bad,
        notifies,
        suppressed
    );

    // Goodbye, then tear down in order.
    ring.push_request(Request {
        id: u64::MAX,
        words: [0; 4],
    })
    .map_err(|_| Error::RingOverflow)?;
    if ring.push_requests_and_check_notify() {
        front.notify(port)?;
    }
    let stats = server.join().expect("back end thread panicked")?;
    println!(
        "[back  d{}] served {} requests, sent {} notifies, woke {} times",
        back.id(),
        stats.requests,
        stats.notifies_sent,
        stats.wakeups
    );
    // `ring` is not used past this point: the grants can end.
    for r in &refs {
        front.end(*r)?;
    }
    println!(
        "[front d{}] ended grants {:?} (the back end had unmapped them)",
        front.id(),
        refs
    );
    front.close(port)?;
    front.free(run)?;

    // The rule the simulator enforces: a grant the peer still maps cannot be ended.
    let page = front.alloc(1)?;
    let gref = front.grant(back.id(), front.frame(page.addr)?, true)?;
    let m = back.map(front.id(), gref, true)?;
    let busy = front.end(gref);
    let write_attempt = back.map(front.id(), gref, false);
    back.unmap(m)?;
    let after = front.end(gref);
    println!(
        "[rules] end while mapped: {busy:?}; writable map of a read-only grant: {:?}; end after unmap: {after:?}",
        write_attempt.as_ref().map(|_| ())
    );
    front.free(page)?;

    let ok = bad == 0
        && next_expected == REQUESTS
        && stats.requests == REQUESTS
        && busy == Err(Error::Busy)
        && write_attempt.is_err()
        && after.is_ok();
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("ring demo: OK");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("ring demo: FAILED (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("ring demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}
