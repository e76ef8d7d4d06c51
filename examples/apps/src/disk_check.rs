//! What the `blk-app` image does with its disk, over any [`BlockDevice`]: check a pattern the
//! toolstack wrote before boot, write a pattern of its own over N MiB with many requests in
//! flight, flush, read it back and verify it, measure, and discard a range when the backend
//! offers discard.
//!
//! The patterns are text, so that dom0 can write and check them with busybox `awk`, `dd` and
//! `cmp`: each 512-byte unit `i` of a region (counted in 512-byte units from the start of the
//! disk, whatever the logical sector size) holds `format!("{:<511}\n", label(i))`, where the
//! label is `xenolith dom0 sector <i>` for the toolstack's pattern and
//! `xenolith blk-app <nonce as 8 hex digits> sector <i>` for the app's (dom0's awk:
//! `printf "%-511s\n", sprintf("xenolith blk-app %08x sector %d", nonce, i)`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::time::Duration;

use xen_blk::front::{BlkError, BlockDevice, Buffer, Completion, Request, SECTOR};

/// The pattern's unit: blkif's 512-byte sector.
pub const UNIT: usize = 512;

/// Where and how much.
#[derive(Debug, Clone)]
pub struct DiskCheck {
    /// Bytes at the start of the disk that hold the toolstack's pattern (0: none to check).
    pub dom0_bytes: u64,
    /// Where the app's pattern starts (bytes; a multiple of 1 MiB).
    pub offset: u64,
    /// How much the app writes and verifies (bytes; a multiple of 1 MiB).
    pub bytes: u64,
    /// The app's pattern nonce (so a pattern left by an earlier run does not pass).
    pub nonce: u32,
    /// Bytes per sequential request (split by the device into ring requests).
    pub request_bytes: usize,
    /// Requests in flight for the sequential and the queued 4 KiB phases.
    pub depth: usize,
    /// 4 KiB reads in each of the QD1 and the queued phase.
    pub small_ops: u32,
    /// Bytes to discard after the pattern (0: no discard), when the backend offers it.
    pub discard_bytes: u64,
    /// The 4 KiB reads go through the region in order instead of at random places (what a
    /// `dd bs=4k` in a Linux guest does, for side-by-side numbers).
    pub small_sequential: bool,
}

impl Default for DiskCheck {
    fn default() -> Self {
        DiskCheck {
            dom0_bytes: 1 << 20,
            offset: 1 << 20,
            bytes: 8 << 20,
            nonce: 0,
            request_bytes: 1 << 20,
            depth: 8,
            small_ops: 2000,
            discard_bytes: 1 << 20,
            small_sequential: false,
        }
    }
}

/// What happened. Rates are per second of the platform clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskReport {
    /// Bytes written, flushed, read back and verified.
    pub verified: u64,
    /// Sequential write rate (KiB/s, flush included).
    pub write_kib_s: u64,
    /// Sequential read rate (KiB/s, verification excluded).
    pub read_kib_s: u64,
    /// The same with one request in flight: write (flush included) and read.
    pub write_qd1_kib_s: u64,
    /// See `write_qd1_kib_s`.
    pub read_qd1_kib_s: u64,
    /// 4 KiB random reads, one at a time.
    pub iops_qd1: u64,
    /// 4 KiB random reads, `depth` in flight.
    pub iops_queued: u64,
    /// `None`: no discard (not offered or not asked); `Some(zeros)`: the discard completed,
    /// and whether the range read back as zeros afterwards.
    pub discard: Option<bool>,
}

/// The text of one 512-byte unit.
pub fn pattern_unit(label: &str, out: &mut [u8]) {
    let n = label.len().min(UNIT - 1);
    out[..n].copy_from_slice(&label.as_bytes()[..n]);
    out[n..UNIT - 1].fill(b' ');
    out[UNIT - 1] = b'\n';
}

/// The toolstack's label for unit `i`.
pub fn dom0_label(i: u64) -> String {
    format!("xenolith dom0 sector {i}")
}

/// The app's label for unit `i`.
pub fn app_label(nonce: u32, i: u64) -> String {
    format!("xenolith blk-app {nonce:08x} sector {i}")
}

fn fill(buf: &mut [u8], first_unit: u64, label: &dyn Fn(u64) -> String) {
    for (k, chunk) in buf.chunks_exact_mut(UNIT).enumerate() {
        pattern_unit(&label(first_unit + k as u64), chunk);
    }
}

/// The first unit of `buf` (starting at unit `first_unit`) that differs from the pattern.
fn mismatch(buf: &[u8], first_unit: u64, label: &dyn Fn(u64) -> String) -> Option<u64> {
    let mut want = [0u8; UNIT];
    for (k, chunk) in buf.chunks_exact(UNIT).enumerate() {
        let i = first_unit + k as u64;
        pattern_unit(&label(i), &mut want);
        if chunk != want {
            return Some(i);
        }
    }
    None
}

fn e(what: &str, err: BlkError) -> String {
    format!("{what}: {err}")
}

fn rate(amount: u64, took: Duration) -> u64 {
    let ns = took.as_nanos().max(1);
    (u128::from(amount) * 1_000_000_000 / ns) as u64
}

/// Sequential pass over `[offset, offset + bytes)` with `depth` requests of `request_bytes` in
/// flight; `write` fills each buffer with the app's pattern, a read verifies it. Returns the
/// time from the first submit to the last completion.
fn sequential(
    dev: &mut dyn BlockDevice,
    c: &DiskCheck,
    write: bool,
    now: &dyn Fn() -> Duration,
    wait: Duration,
) -> Result<Duration, String> {
    let label = |i| app_label(c.nonce, i);
    let chunk = c.request_bytes as u64;
    let total = c.bytes.div_ceil(chunk);
    let mut spare: Vec<Buffer> = Vec::new();
    for _ in 0..c.depth.min(total as usize).max(1) {
        spare.push(
            dev.alloc_buffer(c.request_bytes)
                .map_err(|x| e("alloc", x))?,
        );
    }
    let (mut next, mut done) = (0u64, 0u64);
    let mut failure: Option<String> = None;
    let t0 = now();
    let mut verify_time = Duration::ZERO;
    while done < total {
        while next < total && !spare.is_empty() {
            let mut buf = spare.pop().unwrap_or_else(|| unreachable!());
            let at = c.offset + next * chunk;
            let len = chunk.min(c.bytes - next * chunk) as usize;
            buf.set_len(len).map_err(|x| e("set_len", x))?;
            let req = if write {
                fill(buf.as_mut_slice(), at / UNIT as u64, &label);
                Request::Write {
                    sector: at / SECTOR,
                    buf,
                }
            } else {
                Request::Read {
                    sector: at / SECTOR,
                    buf,
                }
            };
            if let Err(r) = dev.submit(next, req) {
                return Err(e("submit", r.error));
            }
            next += 1;
        }
        let mut got = 0;
        let n = dev
            .poll(&mut |cp: Completion| {
                got += 1;
                if let Err(x) = cp.result {
                    failure.get_or_insert(e("sequential I/O", x));
                }
                if let Some(buf) = cp.buf {
                    if !write && failure.is_none() {
                        let v0 = now();
                        let at = c.offset + cp.tag * chunk;
                        if let Some(bad) = mismatch(buf.as_slice(), at / UNIT as u64, &label) {
                            failure = Some(format!(
                                "read back differs in unit {bad} (byte {})",
                                bad * UNIT as u64
                            ));
                        }
                        verify_time += now().saturating_sub(v0);
                    }
                    spare.push(buf);
                }
            })
            .map_err(|x| e("poll", x))?;
        done += n as u64;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        if got == 0 {
            dev.wait(wait).map_err(|x| e("wait", x))?;
        }
    }
    let took = now().saturating_sub(t0).saturating_sub(verify_time);
    for b in spare {
        dev.free_buffer(b).map_err(|x| e("free", x))?;
    }
    Ok(took)
}

/// `ops` 4 KiB reads at pseudo-random (or, `small_sequential`, consecutive) 4 KiB-aligned
/// places of the app's region, `depth` in flight; each is checked against the pattern.
/// Returns the time taken.
fn small_reads(
    dev: &mut dyn BlockDevice,
    c: &DiskCheck,
    depth: usize,
    now: &dyn Fn() -> Duration,
    wait: Duration,
) -> Result<Duration, String> {
    const SMALL: u64 = 4096;
    let slots = c.bytes / SMALL;
    let label = |i| app_label(c.nonce, i);
    let mut rng = 0x2545_f491_u64 ^ u64::from(c.nonce);
    let mut spare: Vec<Buffer> = Vec::new();
    for _ in 0..depth.max(1) {
        spare.push(
            dev.alloc_buffer(SMALL as usize)
                .map_err(|x| e("alloc", x))?,
        );
    }
    let (mut issued, mut done) = (0u32, 0u32);
    let mut failure: Option<String> = None;
    let t0 = now();
    while done < c.small_ops {
        while issued < c.small_ops && !spare.is_empty() {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let slot = if c.small_sequential {
                u64::from(issued)
            } else {
                rng >> 33
            };
            let at = c.offset + (slot % slots.max(1)) * SMALL;
            let buf = spare.pop().unwrap_or_else(|| unreachable!());
            if let Err(r) = dev.submit(
                at,
                Request::Read {
                    sector: at / SECTOR,
                    buf,
                },
            ) {
                return Err(e("submit 4 KiB", r.error));
            }
            issued += 1;
        }
        let mut got = 0;
        let n = dev
            .poll(&mut |cp: Completion| {
                got += 1;
                if let Err(x) = cp.result {
                    failure.get_or_insert(e("4 KiB read", x));
                }
                if let Some(buf) = cp.buf {
                    if failure.is_none() {
                        if let Some(bad) = mismatch(buf.as_slice(), cp.tag / UNIT as u64, &label) {
                            failure = Some(format!("4 KiB read differs in unit {bad}"));
                        }
                    }
                    spare.push(buf);
                }
            })
            .map_err(|x| e("poll", x))?;
        done += n as u32;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        if got == 0 {
            dev.wait(wait).map_err(|x| e("wait", x))?;
        }
    }
    let took = now().saturating_sub(t0);
    for b in spare {
        dev.free_buffer(b).map_err(|x| e("free", x))?;
    }
    Ok(took)
}

/// Run the whole check on `dev`. `discard_offered` and `discard_zeroes` come from the
/// negotiated configuration (`discard_zeroes`: the backend promised that discarded ranges read
/// as zeros, so a non-zero read is an error; otherwise what was read is only reported).
/// `log` gets one line per phase.
pub fn disk_check(
    dev: &mut dyn BlockDevice,
    c: &DiskCheck,
    discard_offered: bool,
    discard_zeroes: bool,
    now: &dyn Fn() -> Duration,
    log: &mut dyn FnMut(&str),
) -> Result<DiskReport, String> {
    let ss = u64::from(dev.sector_size());
    let disk = dev.sectors() * SECTOR;
    let mib = 1u64 << 20;
    if c.bytes == 0
        || !c.bytes.is_multiple_of(mib)
        || !c.offset.is_multiple_of(mib)
        || !c.dom0_bytes.is_multiple_of(ss)
    {
        return Err(String::from("the check's regions must be whole MiB"));
    }
    let end = c.offset + c.bytes + c.discard_bytes;
    if end > disk || c.dom0_bytes > c.offset {
        return Err(format!(
            "disk of {disk} bytes too small for the check (needs {end})"
        ));
    }
    let wait = Duration::from_secs(30);
    let mut report = DiskReport::default();

    // 1. The toolstack's pattern.
    if c.dom0_bytes > 0 {
        let mut buf = alloc::vec![0u8; c.dom0_bytes as usize];
        dev.read(0, &mut buf)
            .map_err(|x| e("read dom0 pattern", x))?;
        if let Some(bad) = mismatch(&buf, 0, &dom0_label) {
            let got = &buf[bad as usize * UNIT..][..40];
            return Err(format!(
                "dom0 pattern differs in unit {bad}: {:?}",
                core::str::from_utf8(got).unwrap_or("<binary>")
            ));
        }
        log(&format!("dom0 pattern verified ({} bytes)", c.dom0_bytes));
    }

    // 2. Write, flush, read back and verify.
    let tw = sequential(dev, c, true, now, wait)?;
    let t0 = now();
    dev.flush().map_err(|x| e("flush", x))?;
    let tw = tw + now().saturating_sub(t0);
    report.write_kib_s = rate(c.bytes / 1024, tw);
    let tr = sequential(dev, c, false, now, wait)?;
    report.read_kib_s = rate(c.bytes / 1024, tr);
    report.verified = c.bytes;
    log(&format!(
        "wrote, flushed, read back and verified {} MiB at byte {} ({} requests of {} KiB in flight): write {} KiB/s, read {} KiB/s",
        c.bytes >> 20,
        c.offset,
        c.depth,
        c.request_bytes >> 10,
        report.write_kib_s,
        report.read_kib_s
    ));

    // The same pattern again, one request at a time (what a simple `dd` does).
    let one = DiskCheck {
        depth: 1,
        ..c.clone()
    };
    let tw1 = sequential(dev, &one, true, now, wait)?;
    let t0 = now();
    dev.flush().map_err(|x| e("flush", x))?;
    report.write_qd1_kib_s = rate(c.bytes / 1024, tw1 + now().saturating_sub(t0));
    let tr1 = sequential(dev, &one, false, now, wait)?;
    report.read_qd1_kib_s = rate(c.bytes / 1024, tr1);
    log(&format!(
        "the same with 1 request in flight: write {} KiB/s, read {} KiB/s",
        report.write_qd1_kib_s, report.read_qd1_kib_s
    ));

    // 3. 4 KiB random reads, QD1 and queued.
    if c.small_ops > 0 {
        let t1 = small_reads(dev, c, 1, now, wait)?;
        report.iops_qd1 = rate(u64::from(c.small_ops), t1);
        let tq = small_reads(dev, c, c.depth, now, wait)?;
        report.iops_queued = rate(u64::from(c.small_ops), tq);
        log(&format!(
            "4 KiB {} reads: {} IOPS at QD1, {} IOPS at QD{}",
            if c.small_sequential {
                "sequential"
            } else {
                "random"
            },
            report.iops_qd1,
            report.iops_queued,
            c.depth
        ));
    }

    // 4. Discard a range after the pattern (written first, so there is something to drop).
    if c.discard_bytes > 0 && discard_offered && !dev.read_only() {
        let at = c.offset + c.bytes;
        let mut data = alloc::vec![0u8; c.discard_bytes as usize];
        fill(&mut data, at / UNIT as u64, &|i| app_label(c.nonce, i));
        dev.write(at / SECTOR, &data)
            .map_err(|x| e("write before discard", x))?;
        dev.discard(at / SECTOR, c.discard_bytes / SECTOR)
            .map_err(|x| e("discard", x))?;
        dev.read(at / SECTOR, &mut data)
            .map_err(|x| e("read after discard", x))?;
        let zeros = data.iter().all(|&b| b == 0);
        if discard_zeroes && !zeros {
            return Err(String::from(
                "a discarded range the backend promised as zeros reads non-zero",
            ));
        }
        report.discard = Some(zeros);
        let mut line = String::new();
        let _ = write!(
            line,
            "discarded {} KiB at byte {at}: reads back as {}",
            c.discard_bytes >> 10,
            if zeros {
                "zeros"
            } else {
                "the old data (allowed: no zeroing promised)"
            }
        );
        log(&line);
    }
    Ok(report)
}
