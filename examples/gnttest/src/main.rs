//! A bootable image (PVH or 64-bit PV) that proves grants, grant mapping, grant copy, pages and
//! interdomain event channels on real Xen. Booted twice; the role comes from the domain name:
//!
//! * `gnttest-a-*` (A, the granter): allocates 4 pages (`Pages`), fills a pattern, grants
//!   pages 0–2 read-only and page 3 writable to B; grants [`MANY`] (100) more pages read-only
//!   and publishes their refs as `gnttest/many`; allocates an unbound event channel for B and
//!   publishes `gnttest/offer = "<port> <r0> <r1> <r2> <r3>"` in its home. When B notifies, it
//!   checks B's write and B's grant copy in page 3, shows that `end` fails (`Busy`) and
//!   `Pages::free` refuses while B still maps the pages (the 100 too), tells B to unmap, then
//!   ends all 104 grants with `end_batch` and frees the pages. It waits on 20 more (unbound)
//!   ports than it needs, the real one last, so `Events::wait` is exercised with more than 16
//!   ports.
//! * `gnttest-b-*` (B, the mapper): maps r0 (`map`), r1+r2 (`map_multi`) read-only and checks
//!   the pattern; checks that a writable map of a read-only grant and a `map_multi` with a bad
//!   ref fail; maps r3 writable and writes into it. Then the mapping window (xen-rt's
//!   `MAP_SLOTS` pages): maps the 100 pages of `gnttest/many` at once (`map_multi`, chunks of
//!   16, all held) and checks each one's pattern and `map_slots()`; fills the rest of the
//!   window with more mappings of the same refs (Xen lets a grant be mapped several times),
//!   sees one more map fail with `NoSpace`, and unmaps those. Grant-copies a local page into r3
//!   and r1 into a local page; binds the event channel and notifies; after A's answer unmaps
//!   all and checks `map_slots()` is back to all free, and notifies again.
//!
//! dom0 writes each side's `gnttest/peer` (the other's domid) and gives B read access to A's
//! `gnttest` directory (`xenstore-chmod`); see `gnttest.cfg` and `ci/xen-lab-test`. Both write
//! `data/gnttest = "ok"` or `"fail: <what>"`, then run the control driver until `xl shutdown`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::ptr::NonNull;
use core::time::Duration;

use xenolith::control::{Control, Event, Request};
use xenolith::platform::abi::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use xenolith::platform::{
    Clock, CopyPtr, Error, Events, GrantCopy, GrantMapper, Grants, MultiMapping, PageRun, Pages,
    Platform, Scheduler, ShutdownReason, MAX_MULTI_MAP,
};
use xenolith::rt::gnttab::MAP_SLOTS;
use xenolith::rt::Xen;
use xenolith::store::client::{Client, Store};
use xenolith::store::transport::RingTransport;

type Xs = Client<RingTransport<'static, Xen>>;

const WORDS: usize = PAGE_SIZE / 4;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Pages A grants besides the first 4, which B maps all at once: more than xen-rt's old
/// 32-page mapping window.
const MANY: usize = 100;

/// The pattern word `j` of A's page `i`.
fn pattern(i: usize, j: usize) -> u32 {
    0x5a00_0000 | (i as u32) << 16 | j as u32
}

/// Fill `page` with `f(j)`.
fn fill(page: NonNull<u8>, f: impl Fn(usize) -> u32) {
    for j in 0..WORDS {
        // SAFETY: `page` is a whole page we own or have mapped writable; shared with the peer,
        // hence volatile.
        unsafe { (page.as_ptr() as *mut u32).add(j).write_volatile(f(j)) };
    }
}

/// Write word `j` of `page`.
fn fill_word(page: NonNull<u8>, j: usize, v: u32) {
    assert!(j < WORDS);
    // SAFETY: word j < WORDS of a page we own; shared with the peer, hence volatile.
    unsafe { (page.as_ptr() as *mut u32).add(j).write_volatile(v) };
}

/// Index of the first word of `page[from..to]` that is not `f(j)`.
fn check(page: NonNull<u8>, from: usize, to: usize, f: impl Fn(usize) -> u32) -> Option<usize> {
    (from..to).find(|&j| {
        // SAFETY: a whole page we own or have mapped; shared with the peer, hence volatile.
        let w = unsafe { (page.as_ptr() as *const u32).add(j).read_volatile() };
        w != f(j)
    })
}

fn say(xen: &'static Xen, s: &str) {
    let mut out = xen;
    let _ = writeln!(out, "gnttest {s}");
}

/// Called by the runtime (xen-rt) once the platform and the heap are up.
#[no_mangle]
fn xen_main(xen: &'static Xen) -> ! {
    let reason = match run(xen) {
        Ok(()) => ShutdownReason::Poweroff,
        Err(e) => {
            say(xen, &format!("fatal: {e}"));
            ShutdownReason::Crash
        }
    };
    let _ = xen.shutdown(reason);
    loop {
        xen.yield_now();
    }
}

fn run(xen: &'static Xen) -> Result<(), String> {
    let (ring, port) = xen.take_store_ring().ok_or("no xenstore ring")?;
    let mut transport = RingTransport::new(ring, xen, port);
    transport
        .connect(Duration::from_secs(5))
        .map_err(|e| format!("xenstore connect: {e:?}"))?;
    let mut xs = Client::new(transport);
    let domid = xs
        .read_string("domid")
        .map_err(|e| format!("domid: {e:?}"))?;
    let name = xs.read_string("name").map_err(|e| format!("name: {e:?}"))?;
    say(xen, &format!("domid = {domid}, name = {name}"));

    let result = if name.starts_with("gnttest-a") {
        granter(xen, &mut xs)
    } else if name.starts_with("gnttest-b") {
        mapper(xen, &mut xs)
    } else {
        Err(format!(
            "name {name} is neither gnttest-a-* nor gnttest-b-*"
        ))
    };
    let value = match &result {
        Ok(()) => String::from("ok"),
        Err(e) => format!("fail: {e}"),
    };
    say(xen, &format!("result: data/gnttest = {value}"));
    xs.write_str("data/gnttest", &value)
        .map_err(|e| format!("write data/gnttest: {e:?}"))?;
    let (used, pages) = xen.page_usage();
    let (refs, nr) = xen.grant_usage();
    say(
        xen,
        &format!(
            "pages in use {used}/{pages}, grant refs in use {refs}/{nr}; waiting for xl shutdown"
        ),
    );
    control_loop(xen, &mut xs, port)
}

/// Read `path` until it exists (bounded).
fn read_when_there(xen: &'static Xen, xs: &mut Xs, path: &str) -> Result<String, String> {
    let end = xen.now() + TIMEOUT;
    loop {
        match xs.read_string(path) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_enoent() || e.xs().is_some() => {}
            Err(e) => return Err(format!("read {path}: {e:?}")),
        }
        if xen.now() > end {
            return Err(format!("{path} never appeared"));
        }
        let _ = xen.wait(&[], Some(Duration::from_millis(100)));
    }
}

fn peer(xen: &'static Xen, xs: &mut Xs) -> Result<DomId, String> {
    let p = read_when_there(xen, xs, "gnttest/peer")?;
    p.trim()
        .parse()
        .map_err(|_| format!("bad gnttest/peer {p:?}"))
}

/// Wait for `port` (among `others`, which come first), then clear it.
fn wait_for(xen: &'static Xen, others: &[EvtchnPort], port: EvtchnPort) -> Result<(), String> {
    let mut ports: Vec<EvtchnPort> = others.to_vec();
    ports.push(port);
    match xen.wait(&ports, Some(TIMEOUT)) {
        Ok(p) if p == port => {
            xen.clear(p);
            Ok(())
        }
        Ok(p) => Err(format!("wait: port {p} pending, expected {port}")),
        Err(e) => Err(format!("wait on port {port} ({} ports): {e}", ports.len())),
    }
}

/// Wait on `port` until `cond()` holds: an event is only a hint (Xen itself sets a freshly
/// bound port pending: event_channel.c `evtchn_bind_interdomain`, "conservatively always
/// setting a notification on the local port").
fn wait_until(
    xen: &'static Xen,
    port: EvtchnPort,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let end = xen.now() + TIMEOUT;
    while !cond() {
        if xen.now() > end {
            return Err(format!("nothing on port {port} within {TIMEOUT:?}"));
        }
        match xen.wait(&[port], Some(Duration::from_millis(500))) {
            Ok(p) => {
                xen.clear(p);
            }
            Err(Error::Timeout) => {}
            Err(e) => return Err(format!("wait on port {port}: {e}")),
        }
    }
    Ok(())
}

/// What A writes into word 0 of page 3 once it has checked B's bytes: "unmap now".
const GO: u32 = 0xa0a0_600d;

fn expect_err<T>(what: &str, r: Result<T, Error>, want: Error) -> Result<(), String> {
    match r {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!("{what}: {e:?}, expected {want:?}")),
        Ok(_) => Err(format!("{what}: succeeded, expected {want:?}")),
    }
}

fn granter(xen: &'static Xen, xs: &mut Xs) -> Result<(), String> {
    let peer = peer(xen, xs)?;
    say(xen, &format!("A: peer B is domain {peer}"));
    // A 4 MiB run: beyond a PV guest's bootstrap region (xen-rt maps the rest of RAM).
    let big = xen
        .alloc(1024)
        .map_err(|e| format!("Pages::alloc(1024): {e}"))?;
    fill(big.page(0), |j| j as u32);
    fill(big.page(1023), |j| !(j as u32));
    if check(big.page(1023), 0, WORDS, |j| !(j as u32)).is_some() {
        return Err(String::from(
            "4 MiB run: last page does not hold what was written",
        ));
    }
    let last = xen
        .frame(big.page(1023))
        .map_err(|e| format!("frame: {e}"))?;
    say(
        xen,
        &format!(
            "A: Pages::alloc(1024) at {:p}..{:p}, last frame {last:#x}, written and read back",
            big.addr,
            // SAFETY: one past the run's end, not dereferenced.
            unsafe { big.addr.add(big.len()) }
        ),
    );
    xen.free(big)
        .map_err(|e| format!("Pages::free(1024): {e}"))?;
    let run = xen.alloc(4).map_err(|e| format!("Pages::alloc(4): {e}"))?;
    // MANY more pages, read-only, each with its pattern (pages 4.. of the pattern).
    let many_run = xen
        .alloc(MANY)
        .map_err(|e| format!("Pages::alloc({MANY}): {e}"))?;
    let mut many = Vec::with_capacity(MANY);
    for i in 0..MANY {
        fill(many_run.page(i), |j| pattern(4 + i, j));
        let frame = xen
            .frame(many_run.page(i))
            .map_err(|e| format!("frame: {e}"))?;
        many.push(
            xen.grant(peer, frame, true)
                .map_err(|e| format!("grant page {} of {MANY}: {e}", i))?,
        );
    }
    let list: Vec<String> = many.iter().map(|r| format!("{r}")).collect();
    xs.write_str("gnttest/many", &list.join(" "))
        .map_err(|e| format!("write gnttest/many: {e:?}"))?;
    say(
        xen,
        &format!(
            "A: {MANY} more pages at {:p} granted read-only as refs {}..{} (gnttest/many)",
            many_run.addr,
            many[0],
            many[MANY - 1]
        ),
    );
    let mut refs = [0 as GrantRef; 4];
    for (i, r) in refs.iter_mut().enumerate() {
        fill(run.page(i), |j| pattern(i, j));
        let frame = xen.frame(run.page(i)).map_err(|e| format!("frame: {e}"))?;
        *r = xen
            .grant(peer, frame, i < 3)
            .map_err(|e| format!("grant page {i}: {e}"))?;
        say(
            xen,
            &format!(
                "A: page {i} at {:p} frame {frame:#x} granted {} as ref {r}",
                run.page(i),
                if i < 3 { "read-only" } else { "writable" }
            ),
        );
    }
    // More than 16 ports in one wait: 20 unbound ones first, the real one last.
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.push(
            xen.alloc_unbound(peer)
                .map_err(|e| format!("alloc_unbound (extra): {e}"))?,
        );
    }
    let port = xen
        .alloc_unbound(peer)
        .map_err(|e| format!("alloc_unbound: {e}"))?;
    let offer = format!("{port} {} {} {} {}", refs[0], refs[1], refs[2], refs[3]);
    xs.write_str("gnttest/offer", &offer)
        .map_err(|e| format!("write gnttest/offer: {e:?}"))?;
    say(
        xen,
        &format!("A: offered gnttest/offer = {offer} (unbound port {port} for {peer})"),
    );

    let t0 = xen.now();
    wait_for(xen, &extra, port)?;
    say(
        xen,
        &format!(
            "A: notified by B on port {port} (waited on {} ports, {} ms)",
            extra.len() + 1,
            (xen.now() - t0).as_millis()
        ),
    );
    let p3 = run.page(3);
    if let Some(j) = check(p3, 0, WORDS / 2, |j| 0xb000_0000 | j as u32) {
        return Err(format!("B's write into page 3 missing at word {j}"));
    }
    if let Some(j) = check(p3, WORDS / 2, WORDS, |j| 0xc000_0000 | j as u32) {
        return Err(format!("B's grant copy into page 3 missing at word {j}"));
    }
    say(
        xen,
        "A: page 3 holds B's write (words 0..512) and B's grant copy (512..1024)",
    );
    expect_err("end(r3) while B maps it", xen.end(refs[3]), Error::Busy)?;
    expect_err("end(r0) while B maps it", xen.end(refs[0]), Error::Busy)?;
    for (k, &r) in many.iter().enumerate() {
        expect_err(
            &format!("end of many[{k}] (ref {r}) while B maps it"),
            xen.end(r),
            Error::Busy,
        )?;
    }
    let alias = PageRun {
        addr: run.addr,
        pages: run.pages,
    };
    expect_err("Pages::free while granted", xen.free(alias), Error::Busy)?;
    let alias = PageRun {
        addr: many_run.addr,
        pages: many_run.pages,
    };
    expect_err(
        &format!("Pages::free of the {MANY} while granted"),
        xen.free(alias),
        Error::Busy,
    )?;
    say(
        xen,
        &format!("A: end(r3), end(r0), end of all {MANY} -> Busy and Pages::free -> Busy while B maps them: ok"),
    );

    fill_word(p3, 0, GO);
    xen.notify(port).map_err(|e| format!("notify: {e}"))?;
    wait_for(xen, &extra, port)?;
    say(xen, "A: B unmapped");
    let mut failed = Vec::new();
    let all: Vec<GrantRef> = refs.iter().chain(&many).copied().collect();
    let n = xen.end_batch(&all, &mut |r, e| failed.push((r, e)));
    if n != 0 {
        return Err(format!("end_batch after unmap: {failed:?}"));
    }
    expect_err("end(r0) again", xen.end(refs[0]), Error::NotFound)?;
    xen.free(run).map_err(|e| format!("Pages::free: {e}"))?;
    xen.free(many_run)
        .map_err(|e| format!("Pages::free({MANY}): {e}"))?;
    say(
        xen,
        &format!("A: end_batch of {} refs ok, Pages::free ok", all.len()),
    );
    for p in extra.into_iter().chain([port]) {
        xen.close(p).map_err(|e| format!("close {p}: {e}"))?;
    }
    say(xen, "A: closed 21 ports");
    Ok(())
}

/// Wait for `path` (see [`read_when_there`]) and parse it as whitespace-separated numbers;
/// the text too. An unparsable word fails with "bad <what> <text>".
fn read_numbers<T: core::str::FromStr>(
    xen: &'static Xen,
    xs: &mut Xs,
    path: &str,
    what: &str,
) -> Result<(String, Vec<T>), String> {
    let text = read_when_there(xen, xs, path)?;
    let nums = text
        .split_whitespace()
        .map(|s| s.parse().map_err(|_| format!("bad {what} {text:?}")))
        .collect::<Result<_, _>>()?;
    Ok((text, nums))
}

fn mapper(xen: &'static Xen, xs: &mut Xs) -> Result<(), String> {
    let peer = peer(xen, xs)?;
    say(xen, &format!("B: peer A is domain {peer}"));
    let path = format!("/local/domain/{peer}/gnttest/offer");
    let (offer, nums) = read_numbers::<u32>(xen, xs, &path, "offer")?;
    let [port, r0, r1, r2, r3] = nums[..] else {
        return Err(format!("bad offer {offer:?}"));
    };
    say(
        xen,
        &format!("B: offer port {port}, refs {r0} {r1} {r2} {r3}"),
    );

    let m0 = xen
        .map(peer, r0, true)
        .map_err(|e| format!("map r0: {e}"))?;
    if let Some(j) = check(m0.addr, 0, WORDS, |j| pattern(0, j)) {
        return Err(format!("r0 pattern wrong at word {j}"));
    }
    say(
        xen,
        &format!("B: map r0 read-only at {:p}: pattern ok", m0.addr),
    );
    // Xen 4.17 answers GNTST_general_error ("Attempt to write-pin a r/o grant entry",
    // common/grant_table.c), which is Error::Invalid.
    expect_err(
        "writable map of a read-only grant",
        xen.map(peer, r0, false),
        Error::Invalid,
    )?;
    // A ref beyond the granter's table (xen-rt sets up 32 frames, 16384 refs; Xen allows at
    // most 64 frames by default): GNTST_bad_gntref. One inside it but never granted: the
    // entry's flags lack GTF_permit_access, GNTST_general_error.
    expect_err(
        "map_multi with a ref beyond the table",
        xen.map_multi(peer, &[r1, 60000], true),
        Error::NotFound,
    )?;
    expect_err(
        "map of a ref never granted",
        xen.map(peer, 4000, true),
        Error::Invalid,
    )?;
    say(xen, "B: writable map of read-only r0 -> Invalid (GNTST_general_error), map_multi [r1, 60000] -> NotFound, ref 4000 never granted -> Invalid: ok");
    let mm = xen
        .map_multi(peer, &[r1, r2], true)
        .map_err(|e| format!("map_multi r1 r2: {e}"))?;
    for i in 0..2 {
        // SAFETY: page i of the 2-page mapping.
        let p = unsafe { mm.addr.add(i * PAGE_SIZE) };
        if let Some(j) = check(p, 0, WORDS, |j| pattern(i + 1, j)) {
            return Err(format!("map_multi page {i} pattern wrong at word {j}"));
        }
    }
    say(
        xen,
        &format!("B: map_multi [r1, r2] at {:p}: both patterns ok", mm.addr),
    );
    let m3 = xen
        .map(peer, r3, false)
        .map_err(|e| format!("map r3: {e}"))?;
    for j in 0..WORDS / 2 {
        // SAFETY: first half of the page A granted writable, mapped writable.
        unsafe {
            (m3.addr.as_ptr() as *mut u32)
                .add(j)
                .write_volatile(0xb000_0000 | j as u32)
        };
    }
    say(xen, "B: map r3 writable, wrote words 0..512");

    let many = many_at_once(xen, xs, peer)?;

    let local = xen.alloc(2).map_err(|e| format!("Pages::alloc(2): {e}"))?;
    fill(local.page(0), |j| 0xc000_0000 | j as u32);
    let f0 = xen
        .frame(local.page(0))
        .map_err(|e| format!("frame: {e}"))?;
    let f1 = xen
        .frame(local.page(1))
        .map_err(|e| format!("frame: {e}"))?;
    let half = (PAGE_SIZE / 2) as u16;
    let ops = [
        // Our page's second half into the second half of A's writable page 3.
        GrantCopy {
            source: CopyPtr::Local {
                frame: f0,
                offset: half,
            },
            dest: CopyPtr::Foreign {
                domid: peer,
                gref: r3,
                offset: half,
            },
            len: half,
        },
        // A's read-only page 1 into our second page.
        GrantCopy {
            source: CopyPtr::Foreign {
                domid: peer,
                gref: r1,
                offset: 0,
            },
            dest: CopyPtr::Local {
                frame: f1,
                offset: 0,
            },
            len: PAGE_SIZE as u16,
        },
        // Into a read-only grant: must fail, alone.
        GrantCopy {
            source: CopyPtr::Local {
                frame: f0,
                offset: 0,
            },
            dest: CopyPtr::Foreign {
                domid: peer,
                gref: r0,
                offset: 0,
            },
            len: 16,
        },
    ];
    let mut status = [Ok(()); 3];
    xen.copy(&ops, &mut status)
        .map_err(|e| format!("GNTTABOP_copy: {e}"))?;
    if status[0].is_err() || status[1].is_err() || status[2].is_ok() {
        return Err(format!(
            "grant copy status {status:?}, expected [Ok, Ok, Err]"
        ));
    }
    if let Some(j) = check(local.page(1), 0, WORDS, |j| pattern(1, j)) {
        return Err(format!("grant copy of r1 wrong at word {j}"));
    }
    say(
        xen,
        &format!(
            "B: grant copy: local -> r3 ok, r1 -> local ok (pattern), -> read-only r0 {:?}: ok",
            status[2]
        ),
    );

    let lport = xen
        .bind_interdomain(peer, port)
        .map_err(|e| format!("bind_interdomain({peer}, {port}): {e}"))?;
    xen.notify(lport).map_err(|e| format!("notify: {e}"))?;
    say(
        xen,
        &format!("B: bound port {port} of A as local port {lport}, notified"),
    );
    let mut wakes = 0;
    wait_until(xen, lport, || {
        wakes += 1;
        check(m3.addr, 0, 1, |_| GO).is_none()
    })?;
    say(
        xen,
        &format!("B: A's go-ahead in page 3 ({} waits before it)", wakes - 1),
    );
    xen.unmap(m0).map_err(|e| format!("unmap r0: {e}"))?;
    xen.unmap_multi(mm)
        .map_err(|e| format!("unmap_multi: {e}"))?;
    xen.unmap(m3).map_err(|e| format!("unmap r3: {e}"))?;
    for m in many {
        xen.unmap_multi(m)
            .map_err(|e| format!("unmap_multi (many): {e}"))?;
    }
    match xen.map_slots() {
        Some((free, total)) if free == total => say(
            xen,
            &format!("B: all unmapped: map_slots() = ({free}, {total}), the whole window free"),
        ),
        other => return Err(format!("map_slots() after unmapping all: {other:?}")),
    }
    xen.free(local).map_err(|e| format!("Pages::free: {e}"))?;
    xen.notify(lport).map_err(|e| format!("notify: {e}"))?;
    xen.close(lport).map_err(|e| format!("close: {e}"))?;
    say(
        xen,
        "B: A answered; unmapped all, notified, closed the port",
    );
    Ok(())
}

/// The mapping window: map A's `MANY` pages at once (held: returned), then fill the rest of
/// the window with more mappings of the same refs, see it full, and unmap those.
fn many_at_once(xen: &'static Xen, xs: &mut Xs, peer: DomId) -> Result<Vec<MultiMapping>, String> {
    let path = format!("/local/domain/{peer}/gnttest/many");
    let (_, many) = read_numbers::<GrantRef>(xen, xs, &path, "gnttest/many")?;
    if many.len() != MANY {
        return Err(format!(
            "gnttest/many has {} refs, expected {MANY}",
            many.len()
        ));
    }
    let (free0, total) = xen
        .map_slots()
        .ok_or("map_slots() = None: no mapping window")?;
    if total != MAP_SLOTS || free0 + 4 != total {
        return Err(format!(
            "map_slots() = ({free0}, {total}) with 4 pages mapped, expected ({}, {MAP_SLOTS})",
            MAP_SLOTS - 4
        ));
    }
    // The MANY pages, all held at once.
    let mut held = Vec::new();
    for (c, chunk) in many.chunks(MAX_MULTI_MAP).enumerate() {
        let m = xen.map_multi(peer, chunk, true).map_err(|e| {
            format!(
                "map_multi of many[{}..] ({} held): {e}",
                c * MAX_MULTI_MAP,
                c * MAX_MULTI_MAP
            )
        })?;
        held.push(m);
    }
    for (c, m) in held.iter().enumerate() {
        for k in 0..m.pages {
            let i = c * MAX_MULTI_MAP + k;
            // SAFETY: page k of a k-page mapping.
            let p = unsafe { m.addr.add(k * PAGE_SIZE) };
            if let Some(j) = check(p, 0, WORDS, |j| pattern(4 + i, j)) {
                return Err(format!(
                    "many[{i}] mapped at {p:p}: pattern wrong at word {j}"
                ));
            }
        }
    }
    let free1 = xen.map_slots().map(|s| s.0);
    if free1 != Some(free0 - MANY) {
        return Err(format!(
            "map_slots() free {free1:?} with {MANY} more mapped, expected {}",
            free0 - MANY
        ));
    }
    let last = &held[held.len() - 1];
    say(
        xen,
        &format!(
            "B: {MANY} pages mapped at once ({} map_multi, {:p}..{:p}), all patterns ok; map_slots() = ({}, {total})",
            held.len(),
            held[0].addr,
            // SAFETY: one past the last mapping's end, not dereferenced.
            unsafe { last.addr.add(last.pages * PAGE_SIZE) },
            free0 - MANY
        ),
    );
    // The rest of the window: the same refs again (several mappings of one grant).
    let mut extra: Vec<MultiMapping> = Vec::new();
    let mut next = 0;
    let mut mapped = 0;
    let (mut lo, mut hi) = (usize::MAX, 0);
    loop {
        let left = free0 - MANY - mapped;
        let n = left.clamp(1, MAX_MULTI_MAP);
        let refs: Vec<GrantRef> = (0..n).map(|k| many[(next + k) % MANY]).collect();
        match xen.map_multi(peer, &refs, true) {
            Ok(m) => {
                for k in 0..n {
                    let i = (next + k) % MANY;
                    // SAFETY: page k of an n-page mapping.
                    let p = unsafe { m.addr.add(k * PAGE_SIZE) };
                    if check(p, 0, 1, |j| pattern(4 + i, j)).is_some()
                        || check(p, WORDS - 1, WORDS, |j| pattern(4 + i, j)).is_some()
                    {
                        return Err(format!("many[{i}] mapped again at {p:p}: pattern wrong"));
                    }
                }
                let a = m.addr.as_ptr() as usize;
                lo = lo.min(a);
                hi = hi.max(a + n * PAGE_SIZE);
                extra.push(m);
                next = (next + n) % MANY;
                mapped += n;
            }
            Err(Error::NoSpace) if n == 1 => break,
            Err(e) => {
                return Err(format!(
                    "map_multi of {n} more ({mapped} extra, {} in all): {e}",
                    4 + MANY + mapped
                ))
            }
        }
    }
    let full = xen.map_slots();
    if mapped != free0 - MANY || full != Some((0, total)) {
        return Err(format!(
            "window full after {mapped} extra mappings ({} in all), map_slots() = {full:?}, expected {} and (0, {total})",
            4 + MANY + mapped,
            free0 - MANY
        ));
    }
    say(
        xen,
        &format!(
            "B: window filled: {mapped} more mappings of the same refs ({} in all, {lo:#x}..{hi:#x}), first and last word of each ok; map_slots() = (0, {total}); one more map -> NoSpace",
            4 + MANY + mapped
        ),
    );
    for m in extra {
        xen.unmap_multi(m)
            .map_err(|e| format!("unmap_multi (extra): {e}"))?;
    }
    let after = xen.map_slots();
    if after != Some((free0 - MANY, total)) {
        return Err(format!(
            "map_slots() {after:?} after unmapping the extra ones, expected ({}, {total})",
            free0 - MANY
        ));
    }
    say(
        xen,
        &format!(
            "B: extra mappings unmapped: map_slots() = ({}, {total}); holding the {MANY}",
            free0 - MANY
        ),
    );
    Ok(held)
}

fn control_loop(xen: &'static Xen, xs: &mut Xs, port: EvtchnPort) -> Result<(), String> {
    let mut ctl = Control::new(move |req: Request| {
        say(xen, &format!("{} requested, shutting down", req.as_str()));
    });
    ctl.start(xs).map_err(|e| format!("control start: {e:?}"))?;
    loop {
        while let Some(ev) = ctl.poll(xs, xen).map_err(|e| format!("control: {e:?}"))? {
            if let Event::Shutdown { .. } = ev {
                return Ok(());
            }
        }
        match xen.wait(&[port], Some(Duration::from_secs(10))) {
            Ok(p) => {
                xen.clear(p);
            }
            Err(Error::Timeout) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// Compile-time check: the real platform implements every platform trait.
const _: fn(&Xen) = |x| {
    fn needs_platform<P: Platform>(_: &P) {}
    needs_platform(x)
};
