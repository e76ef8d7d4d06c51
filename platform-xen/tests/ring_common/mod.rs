//! Shared helpers for the ring integration tests: page-aligned memory standing in for granted
//! pages, and two entry shapes (a small one and blkif's 112-byte request / 16-byte response).
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt::Debug;
use std::mem::offset_of;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use xen_platform::abi::Pod;
use xen_platform::ring::{RingIdx, SringHeader};
use xen_platform::PAGE_SIZE;

/// Page-aligned, zeroed memory of whole pages.
pub struct Shm {
    pub ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the memory is plain bytes owned by this value; the tests share it between threads
// only through the rings, which access it with atomics and volatile copies.
unsafe impl Send for Shm {}
// SAFETY: as above; `&Shm` only hands out the pointer and atomic views of the indexes.
unsafe impl Sync for Shm {}

impl Shm {
    pub fn pages(n: usize) -> Self {
        let layout = Layout::from_size_align(n * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: n >= 1 in every test, so the size is not zero.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("out of memory");
        Shm { ptr, layout }
    }

    pub fn bytes(&self) -> usize {
        self.layout.size()
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is a field offset of SringHeader: in bounds and 4-byte aligned.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    pub fn req_prod(&self) -> RingIdx {
        self.index(offset_of!(SringHeader, req_prod))
            .load(Ordering::SeqCst)
    }
    pub fn rsp_prod(&self) -> RingIdx {
        self.index(offset_of!(SringHeader, rsp_prod))
            .load(Ordering::SeqCst)
    }
    pub fn req_event(&self) -> RingIdx {
        self.index(offset_of!(SringHeader, req_event))
            .load(Ordering::SeqCst)
    }
    pub fn rsp_event(&self) -> RingIdx {
        self.index(offset_of!(SringHeader, rsp_event))
            .load(Ordering::SeqCst)
    }

    /// The shared ring as `SHARED_RING_INIT` leaves it, shifted to index `start` (a ring that
    /// was in use up to `start`, all requests answered, both ends asking for the next event).
    pub fn init_at(&self, start: RingIdx) {
        for (off, v) in [
            (offset_of!(SringHeader, req_prod), start),
            (offset_of!(SringHeader, rsp_prod), start),
            (offset_of!(SringHeader, req_event), start.wrapping_add(1)),
            (offset_of!(SringHeader, rsp_event), start.wrapping_add(1)),
        ] {
            self.index(off).store(v, Ordering::SeqCst);
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: allocated in Shm::pages with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A request/response pair whose payload encodes a sequence number, with a check that the
/// whole entry arrived intact.
pub trait Proto {
    type Req: Pod + Debug + PartialEq + Send;
    type Rsp: Pod + Debug + PartialEq + Send;
    const NAME: &'static str;
    fn req(seq: u64) -> Self::Req;
    fn rsp(seq: u64) -> Self::Rsp;
    /// The sequence number of a request, if every field is consistent with it.
    fn req_seq(r: &Self::Req) -> Option<u64>;
    fn rsp_seq(r: &Self::Rsp) -> Option<u64>;
}

/// 8-byte request, 8-byte response: many entries per page.
pub struct Small;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallReq {
    pub seq: u32,
    pub check: u32,
}
// SAFETY: repr(C) integers, no padding.
unsafe impl Pod for SmallReq {}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallRsp {
    pub seq: u32,
    pub check: u32,
}
// SAFETY: repr(C) integers, no padding.
unsafe impl Pod for SmallRsp {}

impl Proto for Small {
    type Req = SmallReq;
    type Rsp = SmallRsp;
    const NAME: &'static str = "small";
    fn req(seq: u64) -> SmallReq {
        SmallReq {
            seq: seq as u32,
            check: !(seq as u32),
        }
    }
    fn rsp(seq: u64) -> SmallRsp {
        SmallRsp {
            seq: seq as u32,
            check: (seq as u32).rotate_left(7),
        }
    }
    fn req_seq(r: &SmallReq) -> Option<u64> {
        (r.check == !r.seq).then_some(u64::from(r.seq))
    }
    fn rsp_seq(r: &SmallRsp) -> Option<u64> {
        (r.check == r.seq.rotate_left(7)).then_some(u64::from(r.seq))
    }
}

/// blkif-shaped: `blkif_request` (112 bytes) and `blkif_response` (16 bytes).
pub struct Blk;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkSeg {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkReq {
    pub operation: u8,
    pub nr_segments: u8,
    pub handle: u16,
    pub pad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub seg: [BlkSeg; 11],
}
// SAFETY: repr(C) integers (and arrays of a repr(C) integer struct), no implicit padding.
unsafe impl Pod for BlkReq {}
const _: () = assert!(size_of::<BlkReq>() == 112);

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRsp {
    pub id: u64,
    pub operation: u8,
    pub pad0: u8,
    pub status: i16,
    pub pad1: u32,
}
// SAFETY: repr(C) integers, no implicit padding.
unsafe impl Pod for BlkRsp {}
const _: () = assert!(size_of::<BlkRsp>() == 16);

impl Proto for Blk {
    type Req = BlkReq;
    type Rsp = BlkRsp;
    const NAME: &'static str = "blkif";
    fn req(seq: u64) -> BlkReq {
        let mut seg = [BlkSeg {
            gref: 0,
            first_sect: 0,
            last_sect: 7,
            pad: 0,
        }; 11];
        for (i, s) in seg.iter_mut().enumerate() {
            s.gref = (seq as u32).wrapping_mul(11).wrapping_add(i as u32);
            s.first_sect = (seq as u8).wrapping_add(i as u8) & 7;
        }
        BlkReq {
            operation: (seq & 1) as u8,
            nr_segments: 11,
            handle: 0x51,
            pad: 0,
            id: seq,
            sector_number: seq.wrapping_mul(88),
            seg,
        }
    }
    fn rsp(seq: u64) -> BlkRsp {
        BlkRsp {
            id: seq,
            operation: (seq & 1) as u8,
            pad0: 0,
            status: 0,
            pad1: 0,
        }
    }
    fn req_seq(r: &BlkReq) -> Option<u64> {
        (*r == Self::req(r.id)).then_some(r.id)
    }
    fn rsp_seq(r: &BlkRsp) -> Option<u64> {
        (*r == Self::rsp(r.id)).then_some(r.id)
    }
}
