//! Building ring requests: grants (per request or persistent), indirect descriptor pages,
//! discard and flush, from a queued operation of the [`DataPath`].

use super::*;

/// Segment descriptors in one indirect page (blkif.h: `BLKIF_SEGS_PER_INDIRECT_FRAME`).
const SEGS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / core::mem::size_of::<BlkifRequestSegment>();

impl<H: PlatformRef> DataPath<H> {
    /// Build the ring request for the next part of op `opi` under id `id`.
    pub(super) fn build(&mut self, opi: usize, id: u32) -> Result<BlkifRequest, BuildErr> {
        let op = self.ops[opi].as_mut().expect("queued op exists");
        let kind = op.kind;
        let sector512 = op.sector512;
        let sh = &mut self.shadow[id as usize];
        let req = match kind {
            Kind::Flush(o) => BlkifRequest {
                operation: o,
                nr_segments: 0,
                handle: self.handle,
                id: u64::from(id),
                sector_number: 0,
                ..BlkifRequest::default()
            },
            Kind::Discard { count512, secure } => as_ring_request(&BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                flag: if secure {
                    crate::abi::BLKIF_DISCARD_SECURE
                } else {
                    0
                },
                handle: self.handle,
                _pad0: [0; 4],
                id: u64::from(id),
                sector_number: sector512,
                nr_sectors: count512,
            }),
            Kind::Read | Kind::Write => {
                // The buffer is taken out of its op while its segments are made (they need
                // `&mut self`), and put back whatever happens.
                let buf = op.buf.take().ok_or(BuildErr::Op(BlkError::BadBuffer))?;
                let made = self.build_rw(opi, id, kind, &buf);
                if let Some(op) = self.ops[opi].as_mut() {
                    op.buf = Some(buf);
                }
                return made;
            }
        };
        sh.in_use = true;
        sh.op = opi;
        sh.operation = wire_op(kind);
        sh.data_refs = 0;
        Ok(req)
    }

    /// A read or write part: its data segments (bounce pages or the buffer's own pages), then
    /// a direct or an indirect request.
    fn build_rw(
        &mut self,
        opi: usize,
        id: u32,
        kind: Kind,
        buf: &Buffer,
    ) -> Result<BlkifRequest, BuildErr> {
        let op = self.ops[opi].as_ref().expect("queued op exists");
        let per = self.cfg.max_request_bytes().max(PAGE_SIZE);
        let off = op.next_part as usize * per;
        let len = buf.len().saturating_sub(off).min(per);
        let nseg = len.div_ceil(PAGE_SIZE);
        let sector = op.sector512 + (off / WIRE_SECTOR) as u64;
        let persistent = self.cfg.persistent;
        // Which segments go through a bounce page (see `BouncePool`): all of them with
        // persistent grants or an untrusted backend, else only one shorter than a page.
        // Enough pages must be at hand for all of them, or the part waits for completions to
        // give some back.
        let bounce_all = persistent || !self.trusted;
        let seg_len = |i: usize| (len - i * PAGE_SIZE).min(PAGE_SIZE);
        let descriptor_pages = if nseg > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            indirect_pages(nseg)
        } else {
            0
        };
        let need = descriptor_pages
            + (0..nseg)
                .filter(|&i| bounce_all || seg_len(i) < PAGE_SIZE)
                .count();
        if need > self.bounce.available() {
            return Err(BuildErr::Later(Error::NoSpace));
        }
        // The backend only reads our page for a write: grant it read-only (Linux blkfront:
        // `rq_data_dir(req) == WRITE` as the readonly flag) — unless persistent grants were
        // negotiated: then blkif.h note 8 wants *every* grant read-write, kept or not, and
        // Linux blkback maps them all read-write (seen in the lab: read-only grants made its
        // writes fail).
        let readonly = kind == Kind::Write && !persistent;
        // Grants made for this request only (ended when the response comes), then the
        // segments.
        let mut refs = Vec::new();
        let mut segs: Vec<Seg> = Vec::with_capacity(nseg);
        for i in 0..nseg {
            let (at, bytes) = (off + i * PAGE_SIZE, seg_len(i));
            let made = if bounce_all || bytes < PAGE_SIZE {
                self.bounce_segment(buf, kind == Kind::Write, at, bytes, readonly)
            } else {
                self.direct_segment(buf, at, readonly)
            };
            match made {
                Ok(seg) => {
                    if seg.bounce.is_none() || !persistent {
                        refs.push(seg.gref);
                    }
                    segs.push(seg);
                }
                Err(e) => {
                    self.abandon(&refs, &segs, &[]);
                    return Err(e);
                }
            }
        }
        let wire: Vec<BlkifRequestSegment> = segs
            .iter()
            .map(|s| BlkifRequestSegment {
                gref: s.gref,
                first_sect: 0,
                last_sect: (s.len / WIRE_SECTOR - 1) as u8,
                _pad0: [0; 2],
            })
            .collect();
        let data_refs = refs.len();
        let mut indirect = Vec::new();
        let operation = wire_op(kind);
        let req = if nseg <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            let mut r = BlkifRequest {
                operation,
                nr_segments: nseg as u8,
                handle: self.handle,
                id: u64::from(id),
                sector_number: sector,
                ..BlkifRequest::default()
            };
            r.seg[..nseg].copy_from_slice(&wire);
            r
        } else {
            match self.indirect(id, operation, sector, &wire, &mut refs, &mut indirect) {
                Ok(r) => r,
                Err(e) => {
                    self.abandon(&refs, &segs, &indirect);
                    return Err(e);
                }
            }
        };
        let sh = &mut self.shadow[id as usize];
        sh.in_use = true;
        sh.op = opi;
        // The operation a response must carry: for an indirect request its `indirect_op`, as
        // Linux blkback answers and Linux blkfront checks (`blkif_interrupt`, "xen/blkfront:
        // don't trust the backend response data", 2021).
        sh.operation = operation;
        sh.refs = refs;
        sh.data_refs = data_refs;
        sh.segs = segs;
        sh.indirect = indirect;
        Ok(req)
    }

    /// A segment on the buffer's own page at `at`, granted for this request only.
    fn direct_segment(&self, buf: &Buffer, at: usize, readonly: bool) -> Result<Seg, BuildErr> {
        let page = buf
            .as_slice()
            .get(at..at + PAGE_SIZE)
            .ok_or(BuildErr::Op(BlkError::BadBuffer))?;
        let p = self.p();
        let frame = p
            .frame(NonNull::from(page).cast())
            .map_err(|e| BuildErr::Op(BlkError::Platform(e)))?;
        let gref = p
            .grant(self.backend, frame, readonly)
            .map_err(BuildErr::Later)?;
        Ok(Seg {
            bounce: None,
            at,
            len: PAGE_SIZE,
            gref,
        })
    }

    /// A segment through a bounce page: `bytes` of the buffer at `at` copied into it for a
    /// write; the rest of the page zeroed, so it shows the backend nothing but this request's
    /// bytes and zeros.
    fn bounce_segment(
        &mut self,
        buf: &Buffer,
        write: bool,
        at: usize,
        bytes: usize,
        readonly: bool,
    ) -> Result<Seg, BuildErr> {
        let data = buf
            .as_slice()
            .get(at..at + bytes)
            .ok_or(BuildErr::Op(BlkError::BadBuffer))?;
        let b = self.bounce_take()?;
        let page = self.bounce.pages[b as usize]
            .as_ref()
            .expect("a free bounce page exists");
        let dst = page.run.addr.as_ptr();
        // SAFETY: `dst` is a page of ours (`PageRun` of one page, kept while in the pool). It
        // carries no request now (it was free), so the backend has no business with it; with
        // persistent grants a hostile backend still maps it and may write it at any time,
        // which can only change bytes it is given anyway: we write plain bytes with raw
        // copies and never form a reference to the page.
        unsafe {
            if write {
                core::ptr::copy_nonoverlapping(data.as_ptr(), dst, bytes);
            }
            core::ptr::write_bytes(dst.add(bytes), 0, PAGE_SIZE - bytes);
        }
        let gref = match page.gref {
            Some(g) => g,
            None => {
                let p = self.p();
                match p
                    .frame(page.run.addr)
                    .and_then(|f| p.grant(self.backend, f, readonly))
                {
                    Ok(g) => g,
                    Err(e) => {
                        self.bounce.free.push(b);
                        return Err(BuildErr::Later(e));
                    }
                }
            }
        };
        Ok(Seg {
            bounce: Some(b),
            at,
            len: bytes,
            gref,
        })
    }

    /// A free bounce page: the last one given back, else a new one while under the cap (with
    /// its persistent grant when those were negotiated).
    fn bounce_take(&mut self) -> Result<u32, BuildErr> {
        if let Some(b) = self.bounce.free.pop() {
            return Ok(b);
        }
        if self.bounce.live >= self.bounce.cap {
            return Err(BuildErr::Later(Error::NoSpace));
        }
        let p = self.p();
        let run = p.alloc(1).map_err(BuildErr::Later)?;
        let gref = if self.cfg.persistent {
            match p
                .frame(run.addr)
                .and_then(|f| p.grant(self.backend, f, false))
            {
                Ok(g) => Some(g),
                Err(e) => {
                    let _ = p.free(run);
                    return Err(BuildErr::Later(e));
                }
            }
        } else {
            None
        };
        self.bounce.pages.push(Some(BouncePage { run, gref }));
        self.bounce.live += 1;
        Ok((self.bounce.pages.len() - 1) as u32)
    }

    /// Undo the grants and bounce pages of a part that could not be built.
    fn abandon(&mut self, refs: &[GrantRef], segs: &[Seg], indirect: &[(u32, GrantRef)]) {
        let mut failed = Vec::new();
        self.end_refs(refs, &mut failed);
        let pages = segs
            .iter()
            .filter_map(|s| Some((s.bounce?, s.gref)))
            .chain(indirect.iter().copied());
        for (b, g) in pages.collect::<Vec<_>>() {
            self.bounce_return(b, failed.contains(&g).then_some(g));
        }
    }

    /// Bounce page `b` carries nothing now: back to the free list — or, when the backend did
    /// not let go of its per-request grant `stuck`, to quarantine, never to be used again.
    pub(super) fn bounce_return(&mut self, b: u32, stuck: Option<GrantRef>) {
        match stuck {
            None => self.bounce.free.push(b),
            Some(g) => {
                let page = self.bounce.pages.get_mut(b as usize).and_then(Option::take);
                if let Some(page) = page {
                    self.bounce.live -= 1;
                    self.quarantine.push((vec![g], Some(page.run)));
                }
            }
        }
    }

    /// An indirect request for `segs` (`BLKIF_OP_INDIRECT`, `indirect_op` = `operation`): the
    /// segment descriptors go in bounce pages, granted read-only for this request (their
    /// grants appended to `refs`), or with the pages' persistent read-write grants (blkif.h
    /// note 8). The pages are recorded in `indirect`.
    fn indirect(
        &mut self,
        id: u32,
        operation: u8,
        sector: u64,
        segs: &[BlkifRequestSegment],
        refs: &mut Vec<GrantRef>,
        indirect: &mut Vec<(u32, GrantRef)>,
    ) -> Result<BlkifRequest, BuildErr> {
        let nseg = segs.len();
        let pages = indirect_pages(nseg);
        if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST {
            return Err(BuildErr::Op(BlkError::OutOfRange));
        }
        let mut grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        for (i, chunk) in segs.chunks(SEGS_PER_INDIRECT_PAGE).enumerate() {
            let b = self.bounce_take()?;
            let page = self.bounce.pages[b as usize]
                .as_ref()
                .expect("a free bounce page exists");
            let dst = page.run.addr.as_ptr();
            // SAFETY: a page of ours carrying no request now (as in `bounce_segment`); `chunk`
            // holds at most 512 descriptors of 8 bytes: inside the page. Plain bytes written
            // with raw copies, no reference to the page formed.
            unsafe {
                for (k, d) in chunk.iter().enumerate() {
                    let mut e = [0u8; 8];
                    e[..4].copy_from_slice(&d.gref.to_ne_bytes());
                    e[4] = d.first_sect;
                    e[5] = d.last_sect;
                    core::ptr::copy_nonoverlapping(e.as_ptr(), dst.add(k * 8), 8);
                }
            }
            let gref = match page.gref {
                Some(g) => g,
                None => {
                    let p = self.p();
                    match p
                        .frame(page.run.addr)
                        .and_then(|f| p.grant(self.backend, f, true))
                    {
                        Ok(g) => {
                            refs.push(g);
                            g
                        }
                        Err(e) => {
                            self.bounce.free.push(b);
                            return Err(BuildErr::Later(e));
                        }
                    }
                }
            };
            indirect.push((b, gref));
            grefs[i] = gref;
        }
        Ok(as_ring_request(&BlkifRequestIndirect {
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
        }))
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
