//! A [`Storage`] backed by a blkfront device: a storage domain serves, through blkback, a disk it
//! received itself (a backend in any domain, as FreeBSD's blkback rewrite made possible), or a window of it with [`Slice`].
//!
//! Each storage op becomes one [`BlockDevice`] request on a page-aligned buffer the frontend
//! grants: a write copies the op's bytes into it before submitting, a read copies them out at
//! completion. Ops run concurrently up to the device's queue; when it is full `submit` gives the
//! op back ([`Busy`]) and blkback retries later. The device's event channel is reported through
//! [`Storage::ports`] so an event-driven storage domain wakes on its responses.
//!
//! [`Slice`]: crate::storage::Slice

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use xen_platform::EvtchnPort;

use crate::front::{BlkDevice, BlkError, BlockDevice, PlatformRef, Request};
use crate::storage::{check_op, Busy, Completion, Features, Op, Storage};

/// Bytes of I/O buffers a [`FrontStorage`] holds in flight by default (page-rounded). Each op
/// takes its own pages from the platform for as long as it runs; unbounded, a guest's burst
/// (mke2fs, 8 × 1 MiB writes) took every free page of a 16 MiB storage domain in the lab,
/// and its next heap allocation aborted it. Past the budget, ops wait ([`Busy`]) for
/// completions; one op alone is always let through, whatever its size.
pub const DEFAULT_BUFFER_BUDGET: usize = 2 << 20;

/// What one in-flight op remembers.
struct Pending {
    tag: u64,
    op: Op,
}

/// A blkfront device as a [`Storage`].
pub struct FrontStorage<H: PlatformRef> {
    dev: BlkDevice<H>,
    /// Index = the device tag; `None` = free slot.
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    /// Completions not yet handed to `poll_completions` (errors found at submit time).
    ready: VecDeque<Completion>,
    in_flight: usize,
    /// Page-rounded bytes of the buffers of the ops in flight, and their cap.
    buffered: usize,
    budget: usize,
}

/// The pages an op's buffer takes (0 for flush and discard).
fn buffer_bytes(op: &Op) -> usize {
    match op {
        Op::Read { buf, .. } | Op::Write { buf, .. } => {
            buf.len().div_ceil(xen_platform::PAGE_SIZE).max(1) * xen_platform::PAGE_SIZE
        }
        _ => 0,
    }
}

impl<H: PlatformRef> FrontStorage<H> {
    /// Serve `dev` (a connected blkfront device).
    pub fn new(dev: BlkDevice<H>) -> FrontStorage<H> {
        FrontStorage {
            dev,
            slots: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            buffered: 0,
            budget: DEFAULT_BUFFER_BUDGET,
        }
    }

    /// Hold at most `bytes` of buffers in flight (see [`DEFAULT_BUFFER_BUDGET`]).
    pub fn with_buffer_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// The device.
    pub fn device(&self) -> &BlkDevice<H> {
        &self.dev
    }

    fn slot(&mut self, p: Pending) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(p);
                i
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() - 1
            }
        }
    }
}

impl<H: PlatformRef> Storage for FrontStorage<H> {
    fn sector_size(&self) -> u32 {
        self.dev.sector_size()
    }

    fn sectors(&self) -> u64 {
        self.dev.sectors()
    }

    fn read_only(&self) -> bool {
        self.dev.read_only()
    }

    fn features(&self) -> Features {
        let cfg = self.dev.config();
        Features {
            flush: cfg
                .as_ref()
                .is_some_and(|c| c.flush != crate::negotiate::FlushMode::None),
            discard: cfg.as_ref().is_some_and(|c| c.discard.is_some()),
            secure_discard: cfg
                .as_ref()
                .and_then(|c| c.discard)
                .is_some_and(|d| d.secure),
            discard_granularity: cfg
                .as_ref()
                .and_then(|c| c.discard)
                .map_or(0, |d| d.granularity),
        }
    }

    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        if let Err(e) = check_op(
            &op,
            self.sectors(),
            self.sector_size(),
            self.read_only(),
            self.features(),
        ) {
            self.ready.push_back(Completion::of(tag, op, Err(e)));
            return Ok(());
        }
        let bytes = buffer_bytes(&op);
        if self.in_flight > 0 && self.buffered + bytes > self.budget {
            return Err(Busy(op));
        }
        let req = match &op {
            Op::Read { sector, buf } | Op::Write { sector, buf } => {
                let mut b = match self.dev.alloc_buffer(buf.len()) {
                    Ok(b) => b,
                    // Out of I/O memory: try again when something completed.
                    Err(BlkError::Platform(_)) | Err(BlkError::Busy) if self.in_flight > 0 => {
                        return Err(Busy(op))
                    }
                    Err(e) => {
                        self.ready.push_back(Completion::of(tag, op, Err(e)));
                        return Ok(());
                    }
                };
                let sector = *sector;
                if let Op::Write { buf: data, .. } = &op {
                    b.as_mut_slice().copy_from_slice(data);
                    Request::Write { sector, buf: b }
                } else {
                    Request::Read { sector, buf: b }
                }
            }
            Op::Flush => Request::Flush,
            Op::Discard {
                sector,
                count,
                secure,
            } => Request::Discard {
                sector: *sector,
                count: *count,
                secure: *secure,
            },
        };
        let slot = self.slot(Pending { tag, op });
        match self.dev.submit(slot as u64, req) {
            Ok(()) => {
                self.in_flight += 1;
                self.buffered += bytes;
                Ok(())
            }
            Err(rej) => {
                if let Some(b) = rej.buf {
                    let _ = self.dev.free_buffer(b);
                }
                let p = self.slots[slot].take().expect("slot just filled");
                self.free.push(slot);
                if rej.error == BlkError::Busy {
                    Err(Busy(p.op))
                } else {
                    self.ready
                        .push_back(Completion::of(p.tag, p.op, Err(rej.error)));
                    Ok(())
                }
            }
        }
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.ready.pop_front() {
            done(c);
            n += 1;
        }
        let mut finished = Vec::new();
        // A failed device reports every outstanding request as failed through `poll` too.
        let _ = self.dev.poll(&mut |c| finished.push(c));
        for c in finished {
            let slot = c.tag as usize;
            let Some(p) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            self.in_flight -= 1;
            self.buffered -= buffer_bytes(&p.op);
            let Pending { tag, mut op } = p;
            let status = c.result;
            if let (Ok(()), Op::Read { buf, .. }, Some(b)) = (&status, &mut op, &c.buf) {
                let n = buf.len();
                buf.copy_from_slice(&b.as_slice()[..n]);
            }
            if let Some(b) = c.buf {
                let _ = self.dev.free_buffer(b);
            }
            done(Completion::of(tag, op, status));
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight + self.ready.len()
    }

    fn ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        for p in self.dev.ports() {
            out(p);
        }
    }
}
