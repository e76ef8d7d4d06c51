//! One storage behind several rings (blkif.h "Multiple hardware queues/rings"): each queue's
//! [`Channel`](super::channel::Channel) gets a [`QueueStorage`], a [`Storage`] that hands its
//! ops to the device's one storage and gets back only its own completions. Queue `q`'s tags
//! carry `q` in their top byte ([`QUEUE_SHIFT`]), so completions are sorted by tag: whichever
//! queue polls first takes every finished op off the storage and files the others' in their
//! inboxes. Ops run in submission order across queues as the storage decides — as on Linux,
//! where each ring's requests go to one block device.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use xen_platform::abi::EvtchnPort;

use crate::storage::{BlkError, Busy, Completion, Features, Op, Storage};

/// Bits of a tag below the queue number.
pub const QUEUE_SHIFT: u32 = 56;
/// Most queues a device serves (the queue number is a tag's top byte).
pub const MAX_QUEUES: u32 = 1 << (64 - QUEUE_SHIFT);

/// The device's storage and each queue's finished ops.
pub(crate) struct Shared {
    storage: Box<dyn Storage>,
    inbox: Vec<VecDeque<Completion>>,
}

impl Shared {
    /// `storage` shared by `queues` rings.
    pub fn new(storage: Box<dyn Storage>, queues: usize) -> Rc<RefCell<Shared>> {
        Rc::new(RefCell::new(Shared {
            storage,
            inbox: (0..queues).map(|_| VecDeque::new()).collect(),
        }))
    }

    /// The storage back, once no queue holds a handle (`None` while one does).
    pub fn into_storage(shared: Rc<RefCell<Shared>>) -> Option<Box<dyn Storage>> {
        Rc::try_unwrap(shared).ok().map(|s| s.into_inner().storage)
    }

    /// Take every finished op off the storage into its queue's inbox (an op of no queue —
    /// a previous connection's — is dropped, as a lone channel drops unknown tags).
    fn pump(&mut self) {
        let Shared { storage, inbox } = self;
        storage.poll_completions(&mut |c| {
            let q = (c.tag >> QUEUE_SHIFT) as usize;
            if let Some(b) = inbox.get_mut(q) {
                b.push_back(c);
            }
        });
    }
}

/// Queue `q`'s view of the shared storage.
pub(crate) struct QueueStorage {
    shared: Rc<RefCell<Shared>>,
    q: usize,
    in_flight: usize,
}

impl QueueStorage {
    /// Queue `q`'s handle; its channel's tags must start at [`first_tag`] of `q`.
    pub fn new(shared: Rc<RefCell<Shared>>, q: usize) -> QueueStorage {
        QueueStorage {
            shared,
            q,
            in_flight: 0,
        }
    }
}

/// The first tag of queue `q` for a connection whose tags start at `next` (its low bits).
pub fn first_tag(q: usize, next: u64) -> u64 {
    ((q as u64) << QUEUE_SHIFT) | (next & ((1 << QUEUE_SHIFT) - 1))
}

impl Storage for QueueStorage {
    fn sector_size(&self) -> u32 {
        self.shared.borrow().storage.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.shared.borrow().storage.physical_sector_size()
    }
    fn sectors(&self) -> u64 {
        self.shared.borrow().storage.sectors()
    }
    fn read_only(&self) -> bool {
        self.shared.borrow().storage.read_only()
    }
    fn features(&self) -> Features {
        self.shared.borrow().storage.features()
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        self.shared.borrow_mut().storage.submit(tag, op)?;
        self.in_flight += 1;
        Ok(())
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut s = self.shared.borrow_mut();
        s.pump();
        let mut n = 0;
        if let Some(b) = s.inbox.get_mut(self.q) {
            while let Some(c) = b.pop_front() {
                self.in_flight = self.in_flight.saturating_sub(1);
                done(c);
                n += 1;
            }
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn ports(&self, out: &mut dyn FnMut(EvtchnPort)) {
        self.shared.borrow().storage.ports(out)
    }
    fn in_place(&self) -> bool {
        self.shared.borrow().storage.in_place()
    }
    fn read_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlkError> {
        self.shared
            .borrow_mut()
            .storage
            .read_in_place(sector, len, f)
    }
    fn write_in_place(
        &mut self,
        sector: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BlkError> {
        self.shared
            .borrow_mut()
            .storage
            .write_in_place(sector, len, f)
    }
}
