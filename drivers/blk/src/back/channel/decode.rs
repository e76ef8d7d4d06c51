//! The decode half of a channel: each request read once from the ring into a local copy,
//! checked (operation, segment count and bounds, sector range, alignment, read-only),
//! resolved through persistent grants or copied through short-lived mappings, and handed
//! to the storage (or answered at once, in place).

use super::*;

impl<H: PlatformRef> Channel<H> {
    pub(super) fn dispatch(&mut self, req: &BlkifRequest) {
        let (id, op) = (req.id, req.operation);
        let l = self.limits;
        match op {
            BLKIF_OP_READ | BLKIF_OP_WRITE => {
                let n = usize::from(req.nr_segments);
                // `get`: at most BLKIF_MAX_SEGMENTS_PER_REQUEST.
                let segs = match req.seg.get(..n) {
                    Some(segs) if n != 0 && n as u32 <= l.max_segments => segs,
                    _ => return self.refuse(id, op, BLKIF_RSP_ERROR),
                };
                self.rw(id, op, op == BLKIF_OP_READ, req.sector_number, segs, 0);
            }
            BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
                let offered = if op == BLKIF_OP_FLUSH_DISKCACHE {
                    l.flush
                } else {
                    l.barrier
                };
                if !offered {
                    return self.refuse(id, op, BLKIF_RSP_EOPNOTSUPP);
                }
                let n = usize::from(req.nr_segments);
                let segs = match req.seg.get(..n) {
                    Some(segs) if n as u32 <= l.max_segments => segs,
                    _ => return self.refuse(id, op, BLKIF_RSP_ERROR),
                };
                let flags = if op == BLKIF_OP_WRITE_BARRIER {
                    DRAIN | FLUSH_AFTER
                } else {
                    FLUSH_AFTER
                };
                if n == 0 {
                    // A flush (or barrier) without data: blkif.h lets nr_segments be 0.
                    if l.read_only {
                        return self.refuse(id, op, BLKIF_RSP_ERROR);
                    }
                    let tag = self.new_tag();
                    self.pending.insert(
                        tag,
                        Pending {
                            id,
                            rsp_op: op,
                            segs: Vec::new(),
                            flush_after: false,
                            is_read: false,
                            barrier: flags & DRAIN != 0,
                            bytes: 0,
                            parent: None,
                        },
                    );
                    if flags & DRAIN != 0 {
                        self.barrier_in_flight = true;
                    }
                    self.start(tag, Op::Flush, flags & DRAIN != 0);
                } else {
                    self.rw(id, op, false, req.sector_number, segs, flags);
                }
            }
            BLKIF_OP_DISCARD => {
                let d: BlkifRequestDiscard = cast(req);
                if !l.discard {
                    return self.refuse(id, op, BLKIF_RSP_EOPNOTSUPP);
                }
                if l.read_only {
                    return self.refuse(id, op, BLKIF_RSP_ERROR);
                }
                let in_range = d
                    .sector_number
                    .checked_add(d.nr_sectors)
                    .is_some_and(|end| end <= l.sectors);
                if !in_range {
                    return self.refuse(id, op, BLKIF_RSP_ERROR);
                }
                // BLKIF_DISCARD_SECURE is "ignored if discard-secure=0" (blkif.h).
                let secure = d.flag & BLKIF_DISCARD_SECURE != 0 && l.secure_discard;
                let tag = self.new_tag();
                self.pending.insert(
                    tag,
                    Pending {
                        id,
                        rsp_op: op,
                        segs: Vec::new(),
                        flush_after: false,
                        is_read: false,
                        barrier: false,
                        bytes: 0,
                        parent: None,
                    },
                );
                let op = Op::Discard {
                    sector: d.sector_number,
                    count: d.nr_sectors,
                    secure,
                };
                self.start(tag, op, false);
            }
            BLKIF_OP_INDIRECT if l.indirect => self.indirect(req),
            // BLKIF_OP_RESERVED_1, INDIRECT when not offered, and anything unknown.
            _ => self.refuse(id, op, BLKIF_RSP_EOPNOTSUPP),
        }
    }

    pub(super) fn indirect(&mut self, req: &BlkifRequest) {
        let ind: BlkifRequestIndirect = cast(req);
        let id = ind.id;
        // Linux's blkback answers with the inner operation (blkback.c `dispatch_rw_block_io`:
        // `req_operation = ... indirect_op`), and Linux's blkfront refuses anything else
        // ("response has wrong operation", blkif_interrupt, since 2021), so the response
        // carries `indirect_op`, not BLKIF_OP_INDIRECT as blkif.h's "copied from request" reads.
        let rsp_op = ind.indirect_op;
        if !matches!(ind.indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE) {
            // Linux answers "Invalid indirect operation" with the inner op too.
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        }
        let n = usize::from(ind.nr_segments);
        if n == 0 || n > BLKIF_MAX_INDIRECT_SEGMENTS || n as u32 > self.limits.max_segments {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        }
        // The indirect pages: their segments copied out once — through the persistent
        // mappings when the frontend reuses its indirect grants, else mapped read-only for the
        // copy and unmapped.
        let npages = indirect_pages(n);
        let mut pages = [Seg::page(0); BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
        // Both hold for n ≤ BLKIF_MAX_INDIRECT_SEGMENTS (checked above).
        let (Some(grefs), Some(pages), Some(raw_len)) = (
            ind.indirect_grefs.get(..npages),
            pages.get_mut(..npages),
            n.checked_mul(size_of::<BlkifRequestSegment>()),
        ) else {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        };
        for (p, &g) in pages.iter_mut().zip(grefs) {
            p.gref = g;
        }
        let mut raw = core::mem::take(&mut self.raw);
        raw.clear();
        raw.resize(raw_len, 0);
        if self.resolve(pages) {
            SegCursor::new(self.persistent.as_ref(), &self.segs).read_into(&mut raw);
        } else {
            let mut pages = match SegPages::map(self.p.get(), self.fe, grefs, true) {
                Ok(m) => m,
                Err(_) => {
                    self.raw = raw;
                    return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
                }
            };
            let mut ok = true;
            for (i, chunk) in raw.chunks_mut(PAGE_SIZE).enumerate() {
                ok &= pages.read(i, 0, chunk);
            }
            pages.unmap(self.p.get());
            if !ok {
                self.raw = raw;
                return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
            }
        }
        let mut wire = core::mem::take(&mut self.wire);
        wire.clear();
        const { assert!(size_of::<BlkifRequestSegment>() == 8) };
        let (segs, _) = raw.as_chunks::<8>();
        wire.extend(segs.iter().map(|&[g0, g1, g2, g3, first, last, p0, p1]| {
            BlkifRequestSegment {
                gref: u32::from_le_bytes([g0, g1, g2, g3]),
                first_sect: first,
                last_sect: last,
                _pad0: [p0, p1],
            }
        }));
        self.raw = raw;
        let read = ind.indirect_op == BLKIF_OP_READ;
        self.rw(id, rsp_op, read, ind.sector_number, &wire, 0);
        self.wire = wire;
    }

    /// [`resolve_segs`] of `segs` into `self.segs`.
    pub(super) fn resolve(&mut self, segs: &[Seg]) -> bool {
        resolve_segs(
            self.persistent.as_mut(),
            self.p.get(),
            self.fe,
            segs,
            &mut self.segs,
            &mut self.missing,
        )
    }

    fn new_tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        t
    }

    /// A read or write of `segs` (already bounded in number) at `sector`.
    pub(super) fn rw(
        &mut self,
        id: u64,
        rsp_op: u8,
        read: bool,
        sector: u64,
        segs: &[BlkifRequestSegment],
        flags: u8,
    ) {
        let l = self.limits;
        if !read && l.read_only {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        }
        self.local.clear();
        let mut total: Option<u64> = Some(0);
        for s in segs {
            // `None` unless first_sect <= last_sect < SECTORS_PER_PAGE.
            let Some(seg) = Seg::new(s.gref, s.first_sect, s.last_sect) else {
                total = None;
                break;
            };
            total = total.and_then(|t| t.checked_add(seg.sectors()));
            self.local.push(seg);
        }
        // Bytes (as `usize`) and the end sector, `None` on any overflow.
        let checked = total.and_then(|total| {
            let len = usize::try_from(total.checked_mul(SECTOR)?).ok()?;
            Some((total, len, sector.checked_add(total)?))
        });
        let per_block = u64::from(l.sector_size.max(SECTOR as u32)) / SECTOR;
        // per_block is a power of two (checked at probe) and ≥ 1 (the `max`).
        let (Some((total, len, end)), Some(block_mask)) = (checked, per_block.checked_sub(1))
        else {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        };
        if end > l.sectors || (sector | total) & block_mask != 0 {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        }
        if flags == 0 && len > PART_BYTES {
            return self.split(id, rsp_op, read, sector, block_mask);
        }
        self.rw_local(id, rsp_op, read, sector, len, flags, None);
    }

    /// Queue the checked segments of `self.local` as parts of at most [`PART_BYTES`], each
    /// ending on a logical block (`block_mask`: its sectors less one; a part may only be
    /// longer when segments of odd sizes leave no such end before).
    fn split(&mut self, id: u64, rsp_op: u8, read: bool, sector: u64, block_mask: u64) {
        let key = self.next_parent;
        self.next_parent = self.next_parent.wrapping_add(1);
        let segs = core::mem::take(&mut self.local);
        // `None` cannot happen: the parts' sectors add up to the request's, checked in `rw`.
        let Some(parts) = split_parts(segs, key, read, sector, block_mask) else {
            return self.refuse(id, rsp_op, BLKIF_RSP_ERROR);
        };
        let n = parts.len();
        self.parts.extend(parts);
        self.stats.split = self.stats.split.wrapping_add(1);
        self.stats.parts = self.stats.parts.wrapping_add(n as u64);
        self.parents.insert(
            key,
            Parent {
                id,
                rsp_op,
                left: n,
                status: BLKIF_RSP_OKAY,
            },
        );
    }

    /// A checked read or write of the segments in `self.local` (`len` bytes at `sector`):
    /// through persistent grants in place, or with a buffer handed to the storage. `parent`:
    /// a part of a split request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rw_local(
        &mut self,
        id: u64,
        rsp_op: u8,
        read: bool,
        sector: u64,
        len: usize,
        flags: u8,
        parent: Option<u64>,
    ) {
        let persistent = resolve_segs(
            self.persistent.as_mut(),
            self.p.get(),
            self.fe,
            &self.local,
            &mut self.segs,
            &mut self.missing,
        );
        if persistent && flags == 0 && self.storage.in_place() {
            // Straight between the frontend's pages and the storage's bytes: one copy, no
            // buffer, answered now.
            let mut cur = SegCursor::new(self.persistent.as_ref(), &self.segs);
            let r = if read {
                self.storage.read_in_place(sector, len, &mut |src| {
                    cur.write_from(src);
                })
            } else {
                self.storage.write_in_place(sector, len, &mut |dst| {
                    cur.read_into(dst);
                })
            };
            self.stats.in_place = self.stats.in_place.wrapping_add(1);
            self.unpublished = self.unpublished.saturating_add(len);
            let status = match r {
                Ok(()) => BLKIF_RSP_OKAY,
                Err(BlkError::Unsupported) => BLKIF_RSP_EOPNOTSUPP,
                Err(_) => BLKIF_RSP_ERROR,
            };
            return self.answer(id, rsp_op, status, parent);
        }
        let mut buf = vec![0u8; len];
        if persistent && !read {
            SegCursor::new(self.persistent.as_ref(), &self.segs).read_into(&mut buf);
        } else if !read {
            // Copied once, before the storage sees it; a grant not given (or not to us) is
            // refused here. A read's pages are mapped writable only at completion: a grant
            // that is not writable fails then, and is answered with BLKIF_RSP_ERROR too.
            if !gather(self.p.get(), self.fe, &self.local, &mut buf) {
                self.stats.refused = self.stats.refused.wrapping_add(1);
                return self.answer(id, rsp_op, BLKIF_RSP_ERROR, parent);
            }
        }
        // A read keeps its segments for the copy at completion.
        let segs = if read {
            core::mem::take(&mut self.local)
        } else {
            Vec::new()
        };
        let drain = flags & DRAIN != 0;
        let tag = self.new_tag();
        self.pending.insert(
            tag,
            Pending {
                id,
                rsp_op,
                segs,
                flush_after: flags & FLUSH_AFTER != 0,
                is_read: read,
                barrier: drain,
                bytes: len,
                parent,
            },
        );
        if drain {
            self.barrier_in_flight = true;
        }
        // Bounded by MAX_BUFFERED plus one request (`may_take`).
        self.buffered = self.buffered.saturating_add(len);
        let op = if read {
            Op::Read { sector, buf }
        } else {
            Op::Write { sector, buf }
        };
        self.start(tag, op, drain);
    }
}

/// The parts of [`Channel::split`]: consecutive runs of `segs` of at most [`PART_BYTES`]
/// (see there), starting at `sector`; `None` if a sector number overflows.
fn split_parts(
    segs: Vec<Seg>,
    parent: u64,
    read: bool,
    sector: u64,
    block_mask: u64,
) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    let mut at = sector;
    let mut cur: Vec<Seg> = Vec::new();
    let mut cur_sectors = 0u64;
    for s in segs {
        let ss = s.sectors();
        // Saturated, the comparison still holds.
        let full = cur_sectors.saturating_add(ss).saturating_mul(SECTOR) > PART_BYTES as u64;
        if full && !cur.is_empty() && cur_sectors & block_mask == 0 {
            parts.push(Part {
                parent,
                read,
                sector: at,
                segs: core::mem::take(&mut cur),
            });
            at = at.checked_add(cur_sectors)?;
            cur_sectors = 0;
        }
        cur.push(s);
        cur_sectors = cur_sectors.checked_add(ss)?;
    }
    parts.push(Part {
        parent,
        read,
        sector: at,
        segs: cur,
    });
    Some(parts)
}

/// Resolve every segment of `segs` through the persistent grants into `out` (consecutive pages
/// of one mapping joined into runs), mapping the grants seen for the first time (`missing` is
/// scratch); false (and `out` meaningless) when persistent grants are off or a segment cannot
/// be kept mapped.
fn resolve_segs(
    pers: Option<&mut Persistent>,
    p: &(impl GrantMapper + ?Sized),
    fe: DomId,
    segs: &[Seg],
    out: &mut Vec<PeerSeg>,
    missing: &mut Vec<GrantRef>,
) -> bool {
    out.clear();
    let Some(pers) = pers else {
        return false;
    };
    missing.clear();
    for s in segs {
        if pers.page(s.gref).is_none() && !missing.contains(&s.gref) {
            missing.push(s.gref);
        }
    }
    if !missing.is_empty() && !pers.map_new(p, fe, missing) {
        return false;
    }
    for s in segs {
        let Some(seg) = pers
            .page(s.gref)
            .and_then(|page| PeerSeg::new(page, s.offset(), s.bytes()))
        else {
            return false;
        };
        let joined = out.last_mut().is_some_and(|last| last.extend(&seg));
        if !joined {
            out.push(seg);
        }
    }
    true
}

/// Copy the segments' bytes out of the frontend's pages into `buf`, in order: up to 16 pages
/// mapped (read-only) at a time with one `map_multi`, copied, unmapped with one
/// `unmap_multi`, so a request never holds more than 16 mappings (a real platform maps foreign
/// pages into a small window) and no mapping outlives the copy.
fn gather(p: &(impl GrantMapper + ?Sized), fe: DomId, segs: &[Seg], buf: &mut [u8]) -> bool {
    // What is left of `buf` to fill.
    let mut rest = buf;
    for chunk in segs.chunks(MAX_MULTI_MAP) {
        let refs: Vec<GrantRef> = chunk.iter().map(|s| s.gref).collect();
        let Ok(mut pages) = SegPages::map(p, fe, &refs, true) else {
            return false;
        };
        let mut ok = true;
        for (i, s) in chunk.iter().enumerate() {
            let copied = match core::mem::take(&mut rest).split_at_mut_checked(s.bytes()) {
                Some((dst, tail)) => {
                    rest = tail;
                    pages.read(i, s.offset(), dst)
                }
                None => false,
            };
            if !copied {
                ok = false;
                break;
            }
        }
        pages.unmap(p);
        if !ok {
            return false;
        }
    }
    true
}

/// Copy `buf` into the segments of the frontend's pages, in order, 16 pages (mapped writable)
/// at a time, as [`gather`].
pub(super) fn scatter(
    p: &(impl GrantMapper + ?Sized),
    fe: DomId,
    segs: &[Seg],
    buf: &[u8],
) -> bool {
    // What is left of `buf` to copy.
    let mut rest = buf;
    for chunk in segs.chunks(MAX_MULTI_MAP) {
        let refs: Vec<GrantRef> = chunk.iter().map(|s| s.gref).collect();
        let Ok(mut pages) = SegPages::map(p, fe, &refs, false) else {
            return false;
        };
        let mut ok = true;
        for (i, s) in chunk.iter().enumerate() {
            match rest.split_at_checked(s.bytes()) {
                Some((src, tail)) if pages.write(i, s.offset(), src) => rest = tail,
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        pages.unmap(p);
        if !ok {
            return false;
        }
    }
    true
}
