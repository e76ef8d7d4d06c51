//! Compile-in storage for a single-purpose VM, as a bootable image (PVH or 64-bit PV, see
//! `blk-app.cfg`): attach the first vbd through blkfront, log what was negotiated, run
//! [`xenolith_apps::disk_check`] on it (the toolstack's pattern, the app's own pattern written,
//! flushed, read back and verified, 4 KiB random reads, a discard when offered), publish the
//! outcome in XenStore, then wait for `xl shutdown` and close the disk in order.
//!
//! XenStore (the domain's home): `data/blk-app` = `ok` or `fail: <reason>`;
//! `data/blk-app-config` = the negotiated parameters; `data/blk-app-perf` =
//! `write-kib-s=.. read-kib-s=.. write-qd1-kib-s=.. read-qd1-kib-s=.. iops-qd1=.. iops-qdN=..`
//! (sequential 1 MiB requests, N in flight then one; 4 KiB random reads); `data/blk-app-discard` =
//! `zeros`, `kept` or `none`.
//!
//! Options on the command line (`extra=`): `mib=N nonce=HEX qd=N ops=N mode=event|polled
//! discard=N dom0=0|1 small=random|seq log=N logat=MIB queues=N` (`queues`: the most
//! blkif queues blkfront asks for when the backend offers `multi-queue-max-queues`; 1 by
//! default).
//!
//! With `log=N` the app goes on after the check with a sequence log
//! ([`xenolith_apps::seqlog`]: N 4 KiB blocks from MiB `logat`, wrapping, `qd` writes then a
//! flush at a time) until `xl shutdown`, and it can be saved: `xl save -c` (the suspend is
//! cancelled, the connection stays) and `xl save` + `xl restore` (a new domain: the XenStore
//! connection, then the bus and blkfront start again, the requests in flight are issued
//! again, and every record acknowledged before the suspend is read back and checked).
//! `data/blk-app-log` = `records R resumes S checkpoints C verified V`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::fmt::Write as _;
use core::time::Duration;

use xenolith::blk::block::SECTOR;
use xenolith::blk::front::{
    BlkDevice, Blkfront, BlockDevice, DeviceState, WaitMode, DEFAULT_LIMITS,
};
use xenolith::blk::negotiate::{FlushMode, FrontLimits, MAX_QUEUES};
use xenolith::bus::{Bus, BusConfig};
use xenolith::control::{Control, Event, NothingToQuiesce, Request};
use xenolith::platform::{Clock, Scheduler, ShutdownReason};
use xenolith::rt::Xen;
use xenolith::store::client::Store;
use xenolith_apps::disk_check::{disk_check, DiskCheck};
use xenolith_apps::seqlog::{SeqLog, Step, RECORD_BYTES};
use xenolith_apps::start::{open_store, resume_store, wait_until, StoreSession};

/// Called by the runtime (xen-rt) once the platform and the heap are up.
#[no_mangle]
fn xen_main(xen: &'static Xen) -> ! {
    let mut out = xen;
    let _ = writeln!(out, "blk-app: booting, cmdline '{}'", xen.cmdline());
    let reason = match run(xen) {
        Ok(()) => ShutdownReason::Poweroff,
        Err(e) => {
            let _ = writeln!(out, "blk-app: {e}");
            ShutdownReason::Crash
        }
    };
    let _ = xen.shutdown(reason);
    loop {
        xen.yield_now();
    }
}

/// The options of the command line.
struct Options {
    check: DiskCheck,
    mode: WaitMode,
    /// Records of the sequence log written after the check (0: none).
    log_records: u64,
    /// Where the log starts, in MiB.
    log_at_mib: u64,
    /// Most queues (rings) per disk.
    queues: u32,
}

fn options(cmdline: &str) -> Result<Options, String> {
    let mut check = DiskCheck::default();
    let mut mode = WaitMode::Event;
    let (mut log_records, mut log_at_mib) = (0, 16);
    let mut queues = 1;
    for word in cmdline.split_ascii_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue; // not ours
        };
        let num = || {
            v.parse::<u64>()
                .map_err(|_| format!("option {k}: '{v}' is not a number"))
        };
        match k {
            "mib" => check.bytes = num()? << 20,
            "nonce" => {
                check.nonce = u32::from_str_radix(v, 16)
                    .map_err(|_| format!("option nonce: '{v}' is not hex"))?
            }
            "qd" => check.depth = num()?.clamp(1, 256) as usize,
            "ops" => check.small_ops = num()?.min(1 << 24) as u32,
            "discard" => check.discard_bytes = num()? << 20,
            "dom0" => check.dom0_bytes = if num()? == 0 { 0 } else { 1 << 20 },
            "small" => {
                check.small_sequential = match v {
                    "seq" => true,
                    "random" => false,
                    _ => return Err(format!("option small: '{v}' (seq or random)")),
                }
            }
            "log" => log_records = num()?,
            "logat" => log_at_mib = num()?,
            "queues" => queues = num()?.clamp(1, u64::from(MAX_QUEUES)) as u32,
            "mode" => {
                mode = match v {
                    "event" => WaitMode::Event,
                    "polled" => WaitMode::Polled,
                    _ => return Err(format!("option mode: '{v}' (event or polled)")),
                }
            }
            _ => {}
        }
    }
    Ok(Options {
        check,
        mode,
        log_records,
        log_at_mib,
        queues,
    })
}

fn run(xen: &'static Xen) -> Result<(), String> {
    let mut out = xen;
    let (ring, xs_port) = xen.take_store_ring().ok_or("no xenstore ring")?;
    let StoreSession {
        client: xs,
        domid,
        name,
        ..
    } = open_store(xen, ring, xs_port)?;
    let _ = writeln!(out, "blk-app: domid {domid}, name {name}");

    let mut bus = Bus::with_config(
        xs,
        domid,
        BusConfig {
            handshake_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_millis(500),
            ..BusConfig::default()
        },
    );
    let mut ctl = Control::new(|req: Request| {
        let mut out = xen;
        let _ = writeln!(out, "blk-app: {} requested", req.as_str());
    })
    .with_deferred_shutdown()
    .with_suspend(NothingToQuiesce);
    ctl.start(bus.client())
        .map_err(|e| format!("control start: {e:?}"))?;

    let opts = options(xen.cmdline());
    let outcome = match &opts {
        Ok(opts) => check_disk(xen, &mut bus, xs_port, opts),
        Err(e) => Err(e.clone()),
    };
    let status = match &outcome {
        Ok(_) => String::from("ok"),
        Err(e) => format!("fail: {e}"),
    };
    let _ = writeln!(out, "blk-app: data/blk-app = {status}");
    bus.client()
        .write_str("data/blk-app", &status)
        .map_err(|e| format!("write data/blk-app: {e:?}"))?;
    // With log=N: the sequence log runs until xl shutdown, through saves and restores.
    // blkfront (registered on the bus) is kept whatever happens: after a resume it must let
    // go of its rings without closing ports that may be the new domain's.
    let front = outcome.as_ref().ok().map(|(f, _)| f.clone());
    let mut run = match (outcome, opts) {
        (Ok((front, dev)), Ok(o)) if o.log_records > 0 => {
            let start = (o.log_at_mib << 20) / SECTOR;
            let room = dev.sectors().saturating_sub(start) / (RECORD_BYTES as u64 / SECTOR);
            let _ = writeln!(
                out,
                "blk-app: sequence log: {} blocks of 4 KiB from MiB {} (wrapping), {} in flight",
                o.log_records.min(room),
                o.log_at_mib,
                o.check.depth
            );
            Some(LogRun::new(
                front,
                dev,
                SeqLog::new(start, o.log_records.min(room), o.check.depth as u64),
            ))
        }
        _ => None,
    };

    let _ = writeln!(out, "blk-app: waiting for xl shutdown");
    let mut xs_port = xs_port;
    let mut last_report = xen.now();
    loop {
        let _ = bus.poll(xen.now());
        if let Some(f) = &front {
            f.service(&mut bus);
        }
        while let Some(ev) = ctl
            .poll(bus.client(), xen)
            .map_err(|e| format!("control: {e:?}"))?
        {
            match ev {
                Event::ShutdownPending { request, .. } => {
                    // The log's last word: no record is written after this.
                    if let Some(r) = &run {
                        let report = r.report();
                        let _ = writeln!(out, "blk-app: sequence log at shutdown: {report}");
                        let _ = bus.client().write_str("data/blk-app-log", &report);
                    }
                    // Close the disk in order (Closing -> Closed) before SCHEDOP_shutdown.
                    let s = bus.shutdown(xen, Duration::from_secs(10), |p| {
                        let _ = wait_until(xen, &[xs_port], p.next_deadline);
                    });
                    let _ = writeln!(out, "blk-app: {}: devices closed: {s:?}", request.as_str());
                    ctl.finish_shutdown(xen)
                        .map_err(|e| format!("shutdown: {e:?}"))?;
                    return Ok(()); // not reached on Xen
                }
                Event::Resumed { cancelled, error } => {
                    let _ = writeln!(
                        out,
                        "blk-app: resumed (cancelled: {cancelled}, error: {error:?})"
                    );
                    if !cancelled {
                        // A new domain: its XenStore connection, then its devices.
                        if let Some(f) = &front {
                            f.suspended();
                        }
                        let (_, p) = xen.store().ok_or("no xenstore after the resume")?;
                        resume_store(bus.client(), p);
                        xs_port = p;
                        let domid: u16 = bus
                            .client()
                            .read_string("domid")
                            .map_err(|e| format!("read domid after the resume: {e:?}"))?
                            .parse()
                            .map_err(|_| "domid after the resume is not a number")?;
                        bus.resumed(domid, xen.now())
                            .map_err(|e| format!("bus after the resume: {e:?}"))?;
                        let _ = writeln!(out, "blk-app: now domain {domid}; xenstore port {p}");
                    }
                    if let Some(r) = &mut run {
                        r.resumed(cancelled, xen.now());
                    }
                }
                _ => {}
            }
        }
        let Some(r) = &mut run else {
            wait_until(xen, &[xs_port], Some(xen.now() + Duration::from_secs(10)))?;
            continue;
        };
        let mut log = xen;
        r.step(xen.now(), &mut |line| {
            let _ = writeln!(log, "blk-app: {line}");
        })?;
        if xen.now().saturating_sub(last_report) >= Duration::from_secs(1) {
            last_report = xen.now();
            let _ = bus.client().write_str("data/blk-app-log", &r.report());
        }
        if r.writing() {
            let _ = r.dev.wait(Duration::from_millis(20));
        } else {
            wait_until(xen, &[xs_port], Some(xen.now() + Duration::from_millis(50)))?;
        }
    }
}

/// The sequence log across suspends: the writer, and what each resume verified.
struct LogRun {
    front: Blkfront<&'static Xen>,
    dev: BlkDevice<&'static Xen>,
    log: SeqLog,
    resumes: u32,
    checkpoints: u32,
    /// After a resume: when it happened and what was acknowledged then (to verify).
    pending_check: Option<(Duration, u64)>,
    verified: u64,
    error: Option<String>,
}

impl LogRun {
    fn new(front: Blkfront<&'static Xen>, dev: BlkDevice<&'static Xen>, log: SeqLog) -> Self {
        LogRun {
            front,
            dev,
            log,
            resumes: 0,
            checkpoints: 0,
            pending_check: None,
            verified: 0,
            error: None,
        }
    }

    fn writing(&self) -> bool {
        self.error.is_none()
            && self.front.state(self.dev.nodename()) == Some(DeviceState::Connected)
    }

    fn resumed(&mut self, cancelled: bool, now: Duration) {
        if cancelled {
            self.checkpoints += 1;
        } else {
            self.resumes += 1;
        }
        self.pending_check = Some((now, self.log.acked()));
    }

    /// `records R resumes S checkpoints C verified V` (+ ` error: ...`).
    fn report(&self) -> String {
        let mut s = format!(
            "records {} resumes {} checkpoints {} verified {}",
            self.log.acked(),
            self.resumes,
            self.checkpoints,
            self.verified
        );
        if let Some(e) = &self.error {
            s.push_str(" error: ");
            s.push_str(e);
        }
        s
    }

    fn step(&mut self, now: Duration, say: &mut dyn FnMut(&str)) -> Result<(), String> {
        if self.error.is_some() {
            return Ok(());
        }
        let connected = self.front.state(self.dev.nodename()) == Some(DeviceState::Connected);
        if let Some((t, acked)) = self.pending_check {
            if !connected {
                return Ok(()); // reconnecting: submits queue, nothing to verify yet
            }
            // Connected again: what was acknowledged before the suspend must be there.
            self.pending_check = None;
            let again = now.saturating_sub(t);
            let reissued = self.dev.reissued();
            match self.log.verify(&mut self.dev, acked) {
                Ok(()) => {
                    self.verified = acked;
                    say(&format!(
                        "resume: I/O going again {} ms after the resume; {reissued} requests re-issued so far; records 0..{acked} verified",
                        again.as_millis()
                    ));
                }
                Err(e) => {
                    say(&e);
                    self.error = Some(e);
                    return Ok(());
                }
            }
        }
        for _ in 0..64 {
            match self.log.step(&mut self.dev) {
                Ok(Step::Progress) => {}
                Ok(Step::Waiting) => break,
                Err(e) => {
                    say(&e);
                    self.error = Some(e);
                    break;
                }
            }
        }
        Ok(())
    }
}

fn check_disk<T: xenolith::store::client::Transport>(
    xen: &'static Xen,
    bus: &mut Bus<T>,
    xs_port: u32,
    opts: &Options,
) -> Result<(Blkfront<&'static Xen>, BlkDevice<&'static Xen>), String> {
    let mut out = xen;
    let front = Blkfront::new(xen)
        .with_mode(opts.mode)
        .with_limits(FrontLimits {
            max_queues: opts.queues,
            ..DEFAULT_LIMITS
        });
    front
        .register(bus)
        .map_err(|e| format!("registering blkfront: {e:?}"))?;
    let t0 = xen.now();
    let mut dev = front
        .first_disk(bus, Duration::from_secs(60), &mut || {
            let _ = wait_until(xen, &[xs_port], Some(xen.now() + Duration::from_millis(20)));
        })
        .map_err(|e| format!("no disk connected: {e}"))?;
    let attach_ms = xen.now().saturating_sub(t0).as_millis();
    let cfg = dev
        .config()
        .ok_or("disk connected without a configuration")?;
    let discard = match &cfg.discard {
        Some(d) => format!(
            "yes (granularity {}, alignment {}, secure {})",
            d.granularity, d.alignment, d.secure as u8
        ),
        None => String::from("no"),
    };
    let flush = match cfg.flush {
        FlushMode::FlushCache => "flush-diskcache",
        FlushMode::Barrier => "write-barrier",
        FlushMode::None => "none (write-through)",
    };
    let summary = format!(
        "queues={} ring-pages={} max-requests={} segments={} indirect={} persistent={} flush={} discard={} sector-size={} physical-sector-size={} sectors512={} bytes={} readonly={} mode={:?}",
        cfg.queues,
        cfg.ring_pages(),
        cfg.max_requests,
        cfg.max_segments,
        cfg.indirect as u8,
        cfg.persistent as u8,
        flush,
        discard,
        cfg.sector_size,
        cfg.physical_sector_size,
        cfg.sectors,
        dev.sectors() * xenolith::blk::block::SECTOR,
        cfg.readonly as u8,
        opts.mode,
    );
    let _ = writeln!(
        out,
        "blk-app: {} connected after {attach_ms} ms: {summary}",
        dev.nodename()
    );
    let _ = bus.client().write_str("data/blk-app-config", &summary);

    let now = || xen.now();
    let report = disk_check(
        &mut dev,
        &opts.check,
        cfg.discard.is_some(),
        cfg.discard.as_ref().is_some_and(|d| d.secure),
        &now,
        &mut |line| {
            let mut out = xen;
            let _ = writeln!(out, "blk-app: {line}");
        },
    )?;
    let perf = format!(
        "write-kib-s={} read-kib-s={} write-qd1-kib-s={} read-qd1-kib-s={} iops-qd1={} iops-qd{}={} mib={}",
        report.write_kib_s,
        report.read_kib_s,
        report.write_qd1_kib_s,
        report.read_qd1_kib_s,
        report.iops_qd1,
        opts.check.depth,
        report.iops_queued,
        opts.check.bytes >> 20
    );
    let _ = writeln!(out, "blk-app: {perf}");
    let _ = bus.client().write_str("data/blk-app-perf", &perf);
    let d = match report.discard {
        Some(true) => "zeros",
        Some(false) => "kept",
        None => "none",
    };
    let _ = bus.client().write_str("data/blk-app-discard", d);
    Ok((front, dev))
}
