//! Building ring requests: grants (per request or persistent), indirect descriptor pages,
//! discard and flush, from a queued operation of the [`DataPath`].

use super::*;

impl<H: PlatformRef> DataPath<H> {
    /// Build the ring request for the next part of op `opi` under id `id`.
    pub(super) fn build(&mut self, opi: usize, id: u32) -> Result<BlkifRequest, BuildErr> {
        let op = self.ops[opi].as_mut().expect("queued op exists");
        let kind = op.kind;
        let operation = wire_op(kind);
        let sh = &mut self.shadow[id as usize];
        match kind {
            Kind::Flush(o) => {
                sh.in_use = true;
                sh.op = opi;
                sh.operation = o;
                sh.data_refs = 0;
                Ok(BlkifRequest {
                    operation: o,
                    nr_segments: 0,
                    handle: self.handle,
                    id: u64::from(id),
                    sector_number: 0,
                    ..BlkifRequest::default()
                })
            }
            Kind::Discard { count512, secure } => {
                sh.in_use = true;
                sh.op = opi;
                sh.operation = BLKIF_OP_DISCARD;
                sh.data_refs = 0;
                let d = BlkifRequestDiscard {
                    operation: BLKIF_OP_DISCARD,
                    flag: if secure {
                        crate::abi::BLKIF_DISCARD_SECURE
                    } else {
                        0
                    },
                    handle: self.handle,
                    _pad0: [0; 4],
                    id: u64::from(id),
                    sector_number: op.sector512,
                    nr_sectors: count512,
                };
                Ok(as_ring_request(&d))
            }
            Kind::Read | Kind::Write => {
                let buf = op.buf.as_mut().ok_or(BuildErr::Op(BlkError::BadBuffer))?;
                let per = self.cfg.max_request_bytes().max(PAGE_SIZE);
                let off = op.next_part as usize * per;
                let len = buf.len().saturating_sub(off).min(per);
                let nseg = len.div_ceil(PAGE_SIZE);
                let base = buf.addr();
                let sector = op.sector512 + (off / WIRE_SECTOR) as u64;
                // The backend only reads our buffer for a write: grant it read-only
                // (Linux blkfront: `rq_data_dir(req) == WRITE` as the readonly flag) — unless
                // persistent grants were negotiated: then blkif.h note 8 wants *every* grant
                // read-write, kept or not, and Linux blkback maps them all read-write (seen in
                // the lab: past our cap of kept pages, read-only grants made its writes fail).
                let readonly = kind == Kind::Write && self.persist_cap == 0;
                // Per-request grants, ended when the response comes (persistent ones are not),
                // and the buffer page of each.
                let mut refs = Vec::new();
                let mut pages = Vec::new();
                let mut segs = Vec::with_capacity(nseg);
                let plat = self.plat.clone();
                let p = plat.get();
                let backend = self.backend;
                let undo = |refs: &Vec<GrantRef>| {
                    p.end_batch(refs, &mut |_, _| {});
                };
                // Persistent grants: only for our own pages (a caller's memory from
                // `Buffer::from_raw` may be gone after the request; ours is kept granted).
                let epoch = self.epoch;
                let persistent = self.persist_cap > 0 && buf.owned();
                if persistent && buf.persist.as_ref().is_none_or(|ps| ps.epoch != epoch) {
                    buf.persist = Some(Persist {
                        epoch,
                        refs: vec![None; buf.capacity() / PAGE_SIZE],
                    });
                }
                for i in 0..nseg {
                    let at = off + i * PAGE_SIZE;
                    let kept = buf
                        .persist
                        .as_ref()
                        .filter(|_| persistent)
                        .and_then(|ps| ps.refs.get(at / PAGE_SIZE).copied().flatten());
                    let gref = match kept {
                        Some(r) => r,
                        None => {
                            // SAFETY: `at < buf.len() <= capacity`: inside the buffer's memory.
                            let addr = unsafe { NonNull::new_unchecked(base.as_ptr().add(at)) };
                            let frame = match p.frame(addr) {
                                Ok(f) => f,
                                Err(e) => {
                                    undo(&refs);
                                    return Err(BuildErr::Op(BlkError::Platform(e)));
                                }
                            };
                            let keep = persistent && self.persistent.len() < self.persist_cap;
                            match p.grant(backend, frame, readonly) {
                                Ok(r) if keep => {
                                    self.persistent.push(r);
                                    if let Some(slot) = buf
                                        .persist
                                        .as_mut()
                                        .and_then(|ps| ps.refs.get_mut(at / PAGE_SIZE))
                                    {
                                        *slot = Some(r);
                                    }
                                    r
                                }
                                Ok(r) => {
                                    refs.push(r);
                                    pages.push((at / PAGE_SIZE) as u32);
                                    r
                                }
                                Err(e) => {
                                    undo(&refs);
                                    return Err(BuildErr::Later(e));
                                }
                            }
                        }
                    };
                    let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
                    segs.push(BlkifRequestSegment {
                        gref,
                        first_sect: 0,
                        last_sect: (bytes / WIRE_SECTOR - 1) as u8,
                        _pad0: [0; 2],
                    });
                }
                let data_refs = refs.len();
                let req = if nseg <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
                    let mut r = BlkifRequest {
                        operation,
                        nr_segments: nseg as u8,
                        handle: self.handle,
                        id: u64::from(id),
                        sector_number: sector,
                        ..BlkifRequest::default()
                    };
                    r.seg[..nseg].copy_from_slice(&segs);
                    r
                } else {
                    // BLKIF_OP_INDIRECT: the segments go in indirect pages, granted read-only.
                    let pages = indirect_pages(nseg);
                    if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
                        undo(&refs);
                        return Err(BuildErr::Op(BlkError::OutOfRange));
                    }
                    if sh.indirect.is_none() {
                        let want = indirect_pages(self.cfg.max_segments as usize).max(1);
                        match p.alloc(want) {
                            Ok(run) => sh.indirect = Some(run),
                            Err(e) => {
                                undo(&refs);
                                return Err(BuildErr::Later(e));
                            }
                        }
                    }
                    let run = sh.indirect.as_ref().expect("allocated above");
                    if run.pages < pages {
                        undo(&refs);
                        return Err(BuildErr::Op(BlkError::OutOfRange));
                    }
                    // SAFETY: the run is `run.len()` bytes of our own pages; this id is free,
                    // so no grant of them is live (a page the backend kept mapped retired
                    // its id) and nothing else references them.
                    let mem =
                        unsafe { core::slice::from_raw_parts_mut(run.addr.as_ptr(), run.len()) };
                    for (i, s) in segs.iter().enumerate() {
                        let e = &mut mem[i * 8..i * 8 + 8];
                        e[..4].copy_from_slice(&s.gref.to_ne_bytes());
                        e[4] = s.first_sect;
                        e[5] = s.last_sect;
                        e[6] = 0;
                        e[7] = 0;
                    }
                    let mut grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                    if self.persist_cap > 0 {
                        // Persistent: the id's indirect pages are granted (read-write, note
                        // 8) once for the connection; the backend maps them once.
                        while sh.indirect_refs.len() < pages {
                            let i = sh.indirect_refs.len();
                            let granted = p
                                .frame(run.page(i))
                                .and_then(|f| p.grant(backend, f, false));
                            match granted {
                                Ok(r) => sh.indirect_refs.push(r),
                                Err(e) => {
                                    undo(&refs);
                                    return Err(BuildErr::Later(e));
                                }
                            }
                        }
                        grefs[..pages].copy_from_slice(&sh.indirect_refs[..pages]);
                    }
                    for (i, g) in grefs
                        .iter_mut()
                        .enumerate()
                        .take(pages)
                        .skip(sh.indirect_refs.len())
                    {
                        let frame = match p.frame(run.page(i)) {
                            Ok(f) => f,
                            Err(e) => {
                                undo(&refs);
                                return Err(BuildErr::Op(BlkError::Platform(e)));
                            }
                        };
                        match p.grant(backend, frame, true) {
                            Ok(r) => {
                                refs.push(r);
                                *g = r;
                            }
                            Err(e) => {
                                undo(&refs);
                                return Err(BuildErr::Later(e));
                            }
                        }
                    }
                    as_ring_request(&BlkifRequestIndirect {
                        operation: BLKIF_OP_INDIRECT,
                        indirect_op: operation,
                        nr_segments: nseg as u16,
                        _pad0: [0; 4],
                        id: u64::from(id),
                        sector_number: sector,
                        handle: self.handle,
                        _pad1: [0; 2],
                        indirect_grefs: grefs,
                        _pad2: [0; 4],
                    })
                };
                sh.in_use = true;
                sh.op = opi;
                // The operation a response must carry: for an indirect request its
                // `indirect_op`, as Linux blkback answers and Linux blkfront checks
                // (`blkif_interrupt`, "xen/blkfront: don't trust the backend response data",
                // 2021).
                sh.operation = operation;
                sh.refs = refs;
                sh.data_refs = data_refs;
                sh.data_pages = pages;
                Ok(req)
            }
        }
    }
}

fn wire_op(kind: Kind) -> u8 {
    match kind {
        Kind::Read => BLKIF_OP_READ,
        Kind::Write => BLKIF_OP_WRITE,
        Kind::Flush(op) => op,
        Kind::Discard { .. } => BLKIF_OP_DISCARD,
    }
}

/// Put a discard or indirect request in a ring slot: blkif.h's ring holds
/// `union { blkif_request; blkif_request_discard; blkif_request_indirect; }` under the type of
/// the first member, so the other two are carried in its bytes.
fn as_ring_request<T: xen_platform::abi::Pod>(v: &T) -> BlkifRequest {
    const { assert!(core::mem::size_of::<T>() <= core::mem::size_of::<BlkifRequest>()) };
    let mut out = BlkifRequest::default();
    // SAFETY: both types are Pod (every byte pattern valid, no padding bytes), `T` is no
    // larger than `BlkifRequest` (asserted above), and the regions are distinct locals.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (v as *const T).cast::<u8>(),
            (&mut out as *mut BlkifRequest).cast::<u8>(),
            core::mem::size_of::<T>(),
        );
    }
    out
}
