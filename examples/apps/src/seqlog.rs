//! A log of sequence-numbered records written without pause: the workload of the
//! suspend/resume tests (an image is saved, restored or checkpointed while it runs, with
//! writes in flight, and must lose nothing it had acknowledged).
//!
//! Record `n` is the 4 KiB block `n mod capacity` of the log region (the log wraps around): 128
//! lines of `xenolith log record NNNNNNNNNN.\n` (32 bytes each, `n` in ten decimal digits), so
//! a dom0 script checks the region with `dd` and `uniq`. [`SeqLog::step`] keeps a batch of `depth`
//! record writes in flight, then a flush; a record counts as acknowledged once the flush
//! after it completed, and from then on [`SeqLog::verify`] must find it on the disk.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xen_blk::block::{BlkError, SECTOR};
use xen_blk::front::{BlockDevice, Buffer, Request};

/// Bytes of a record (one 4 KiB block).
pub const RECORD_BYTES: usize = 4096;
/// Bytes of one line of a record.
pub const LINE_BYTES: usize = 32;
/// The tag of the flush that ends a batch (records use their sequence number).
const FLUSH_TAG: u64 = u64::MAX;

/// Record `seq`'s contents into `out` (`RECORD_BYTES` long).
pub fn fill_record(seq: u64, out: &mut [u8]) {
    let line = format!("xenolith log record {:010}.\n", seq % 10_000_000_000);
    for chunk in out.chunks_mut(LINE_BYTES) {
        let n = chunk.len();
        chunk.copy_from_slice(line.as_bytes().get(..n).unwrap_or_default());
    }
}

/// What one [`SeqLog::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A batch was submitted, or completions were taken.
    Progress,
    /// Waiting for completions.
    Waiting,
}

/// The writer: a region of the disk, what is in flight, what is acknowledged.
#[derive(Debug)]
pub struct SeqLog {
    /// First sector of the region (512-byte units).
    start: u64,
    /// Records the region holds.
    capacity: u64,
    depth: u64,
    /// Next record to write.
    next: u64,
    /// Records `0..acked` are written and flushed.
    acked: u64,
    /// Records of the batch in flight: `batch_start..next`; completed ones counted.
    batch_start: u64,
    batch_done: u64,
    flushing: bool,
    /// Records written again because a completion failed (after a reconnect gave up).
    pub failures: u64,
    spare: Vec<Buffer>,
}

impl SeqLog {
    /// A log of `capacity` records from sector `start` on, `depth` writes per batch.
    pub fn new(start: u64, capacity: u64, depth: u64) -> SeqLog {
        SeqLog {
            start,
            capacity,
            depth: depth.max(1),
            next: 0,
            acked: 0,
            batch_start: 0,
            batch_done: 0,
            flushing: false,
            failures: 0,
            spare: Vec::new(),
        }
    }

    /// Records written and flushed (acknowledged): `0..acked()`.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records submitted and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next - self.acked
    }

    /// Where record `seq` goes: block `seq mod capacity` of the region.
    fn sector(&self, seq: u64) -> u64 {
        self.start + (seq % self.capacity.max(1)) * (RECORD_BYTES as u64 / SECTOR)
    }

    fn buffer(&mut self, dev: &mut dyn BlockDevice) -> Result<Buffer, String> {
        match self.spare.pop() {
            Some(b) => Ok(b),
            None => dev
                .alloc_buffer(RECORD_BYTES)
                .map_err(|e| format!("seqlog: buffer: {e}")),
        }
    }

    /// Do what can be done without waiting: take completions; when the batch is written,
    /// flush; when the flush is done, acknowledge the batch and submit the next one.
    pub fn step(&mut self, dev: &mut dyn BlockDevice) -> Result<Step, String> {
        let mut progress = false;
        let mut failed: Option<BlkError> = None;
        let mut flushed = false;
        let mut done = 0;
        let mut back = Vec::new();
        dev.poll(&mut |c| {
            progress = true;
            if let Err(e) = c.result {
                failed = Some(e);
            }
            if c.tag == FLUSH_TAG {
                flushed = true;
            } else {
                done += 1;
            }
            back.extend(c.buf);
        })
        .map_err(|e| format!("seqlog: poll: {e}"))?;
        self.spare.extend(back);
        if let Some(e) = failed {
            self.failures += 1;
            return Err(format!(
                "seqlog: a request of records {}..{} failed: {e}",
                self.batch_start, self.next
            ));
        }
        self.batch_done += done;
        if flushed {
            self.flushing = false;
            self.acked = self.next;
        }
        let batch = self.next - self.batch_start;
        if !self.flushing && batch > 0 && self.batch_done == batch && self.acked < self.next {
            dev.submit(FLUSH_TAG, Request::Flush)
                .map_err(|r| format!("seqlog: flush: {r}"))?;
            self.flushing = true;
            return Ok(Step::Progress);
        }
        if self.acked == self.next {
            self.batch_start = self.next;
            self.batch_done = 0;
            // A batch never writes one block twice.
            let end = self.next + self.depth.min(self.capacity.max(1));
            while self.next < end {
                let mut buf = self.buffer(dev)?;
                fill_record(self.next, buf.as_mut_slice());
                let req = Request::Write {
                    sector: self.sector(self.next),
                    buf,
                };
                dev.submit(self.next, req)
                    .map_err(|r| format!("seqlog: write {}: {r}", self.next))?;
                self.next += 1;
            }
            return Ok(Step::Progress);
        }
        Ok(if progress {
            Step::Progress
        } else {
            Step::Waiting
        })
    }

    /// Read back the records of `0..upto` still in the region and not being overwritten by
    /// a write in flight (those from `next - capacity` on), and check each; the first that
    /// differs is an error naming it.
    pub fn verify(&self, dev: &mut dyn BlockDevice, upto: u64) -> Result<(), String> {
        let mut want = alloc::vec![0u8; RECORD_BYTES];
        let mut got = alloc::vec![0u8; RECORD_BYTES];
        for seq in self.next.saturating_sub(self.capacity)..upto {
            dev.read(self.sector(seq), &mut got)
                .map_err(|e| format!("seqlog: read record {seq}: {e}"))?;
            fill_record(seq, &mut want);
            if got != want {
                let line = String::from_utf8_lossy(got.get(..LINE_BYTES).unwrap_or_default());
                return Err(format!(
                    "seqlog: record {seq} is lost: the disk holds {:?}",
                    line.trim_end()
                ));
            }
        }
        Ok(())
    }
}
