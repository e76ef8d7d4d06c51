//! [`StorageDevice`]: a [`Storage`] of this domain as a [`BlockDevice`].
//!
//! What an application does with a disk from a backend it can do with a `MemDisk` (or a
//! `Slice` of one, or on a host a `FileDisk`): the same requests, completions, errors and
//! units, with no ring, grant or XenStore in between. So an application's disk code is
//! testable on its own, and an image can run on a RAM disk.
//!
//! Buffers are heap pages (nothing is granted). Ops go to the storage as they come; a read's
//! bytes are copied into the request's buffer at completion, a write's out of it at submit.
//! Requests are checked at submit as blkfront checks them (read-only, range, whole blocks),
//! and refused the same way.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use core::time::Duration;

use super::{BlkError, BlockDevice, Buffer, Completion, Rejected, Request};
use crate::storage::{check_op, Busy, Op, Storage};

/// The most bytes [`StorageDevice::max_request_bytes`] reports: as blkfront's largest
/// request (an indirect one of 256 segments).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A request at the storage: the application's tag and its buffer.
struct InFlight {
    tag: u64,
    buf: Option<Buffer>,
    /// Part of a blocking [`BlockDevice::run`], not reported by `poll`.
    internal: bool,
}

/// A [`Storage`] as a [`BlockDevice`]. See the module docs.
pub struct StorageDevice<S: Storage> {
    disk: S,
    /// By storage tag (never reused).
    in_flight: BTreeMap<u64, InFlight>,
    next: u64,
    /// Completions not yet reported by `poll`.
    done: VecDeque<(bool, Completion)>,
}

impl<S: Storage> StorageDevice<S> {
    /// `disk` as a block device.
    pub fn new(disk: S) -> StorageDevice<S> {
        StorageDevice {
            disk,
            in_flight: BTreeMap::new(),
            next: 0,
            done: VecDeque::new(),
        }
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.disk
    }

    /// The storage back (requests still in flight are dropped with their buffers).
    pub fn into_storage(self) -> S {
        self.disk
    }

    fn start(&mut self, tag: u64, req: Request, internal: bool) -> Result<(), Rejected> {
        let (op, buf) = match req {
            Request::Read { sector, buf } => (
                Op::Read {
                    sector,
                    buf: vec![0; buf.len()],
                },
                Some(buf),
            ),
            Request::Write { sector, buf } => (
                Op::Write {
                    sector,
                    buf: buf.as_slice().to_vec(),
                },
                Some(buf),
            ),
            Request::Flush => (Op::Flush, None),
            Request::Discard {
                sector,
                count,
                secure,
            } => (
                Op::Discard {
                    sector,
                    count,
                    secure,
                },
                None,
            ),
        };
        // Refused at submit, as blkfront refuses: an empty buffer, then what every storage
        // must refuse (read-only, range, whole blocks, unsupported discard).
        let checked = if buf.as_ref().is_some_and(Buffer::is_empty) {
            Err(BlkError::BadBuffer)
        } else {
            check_op(
                &op,
                self.disk.sectors(),
                self.disk.sector_size(),
                self.disk.read_only(),
                self.disk.features(),
            )
        };
        if let Err(error) = checked {
            return Err(Rejected { error, buf });
        }
        let stag = self.next;
        match self.disk.submit(stag, op) {
            Ok(()) => {
                self.next += 1;
                self.in_flight.insert(stag, InFlight { tag, buf, internal });
                Ok(())
            }
            Err(Busy(_)) => Err(Rejected {
                error: BlkError::Busy,
                buf,
            }),
        }
    }

    /// Take the storage's completions into `done`.
    fn collect(&mut self) {
        let (in_flight, done) = (&mut self.in_flight, &mut self.done);
        self.disk.poll_completions(&mut |c| {
            let Some(mut f) = in_flight.remove(&c.tag) else {
                return;
            };
            if let (Ok(()), Some(b), Some(data)) = (&c.result, f.buf.as_mut(), c.buf.as_ref()) {
                if data.len() == b.len() {
                    b.as_mut_slice().copy_from_slice(data);
                }
            }
            done.push_back((
                f.internal,
                Completion {
                    tag: f.tag,
                    result: c.result,
                    buf: f.buf,
                },
            ));
        });
    }
}

impl<S: Storage> BlockDevice for StorageDevice<S> {
    fn sector_size(&self) -> u32 {
        self.disk.sector_size()
    }

    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    fn max_request_bytes(&self) -> usize {
        MAX_REQUEST_BYTES
    }

    fn alloc_buffer(&mut self, bytes: usize) -> Result<Buffer, BlkError> {
        Ok(Buffer::heap(bytes))
    }

    fn free_buffer(&mut self, buf: Buffer) -> Result<(), BlkError> {
        drop(buf);
        Ok(())
    }

    fn submit(&mut self, tag: u64, req: Request) -> Result<(), Rejected> {
        self.start(tag, req, false)
    }

    fn poll(&mut self, f: &mut dyn FnMut(Completion)) -> Result<usize, BlkError> {
        self.collect();
        let mut n = 0;
        while let Some((internal, c)) = self.done.pop_front() {
            if !internal {
                f(c);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Returns at once: a storage of this domain completes its ops at submit or on threads
    /// of its own; poll again.
    fn wait(&mut self, _timeout: Duration) -> Result<(), BlkError> {
        Ok(())
    }

    fn run(&mut self, req: Request) -> Result<Option<Buffer>, BlkError> {
        self.start(u64::MAX, req, true).map_err(|r| r.error)?;
        loop {
            self.collect();
            if let Some(i) = self.done.iter().position(|(internal, _)| *internal) {
                let (_, c) = self.done.remove(i).expect("index found");
                return c.result.map(|()| c.buf);
            }
            if self.in_flight.values().all(|f| !f.internal) {
                // The storage dropped it (never: every submitted op completes once).
                return Err(BlkError::Failed);
            }
            core::hint::spin_loop();
        }
    }
}
