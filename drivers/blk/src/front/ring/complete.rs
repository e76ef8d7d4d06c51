//! Completion: responses checked and matched to their shadow entries, grants ended in
//! batches (or quarantined while the backend still maps them), operations finished, and the
//! device failed or shut down.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used
)]

use super::*;

impl<H: PlatformRef> DataPath<H> {
    /// Take every response, end their grants in one batch, complete their operations, and
    /// issue what is queued. A misbehaving backend fails the device.
    pub fn progress(&mut self) {
        self.retry_quarantine();
        if !self.connected {
            self.expire();
            return;
        }
        let mut finished: Vec<(u32, i16)> = Vec::new();
        let mut batch: Vec<GrantRef> = Vec::new();
        let mut bad: Option<&'static str> = None;
        let slots = u64::from(self.slots);
        for queue in &mut self.queues {
            // A response names an id of its own ring's range (ids are per ring, as in Linux
            // blkfront's per-ring shadow): any other is unknown on this ring.
            let base = u64::from(queue.base);
            loop {
                let rsp = match queue.ring.take_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        if self.mode == WaitMode::Event && queue.ring.final_check_for_responses() {
                            continue;
                        }
                        break;
                    }
                    Err(_) => {
                        bad = Some("response producer overflow");
                        break;
                    }
                };
                let mine = rsp.id.checked_sub(base).is_some_and(|off| off < slots);
                let Some(sh) = usize::try_from(rsp.id)
                    .ok()
                    .filter(|_| mine)
                    .and_then(|i| self.shadow.get_mut(i))
                else {
                    bad = Some("response with an unknown id");
                    break;
                };
                if !sh.in_use {
                    bad = Some("response for a request not in flight (duplicate id)");
                    break;
                }
                if rsp.operation != sh.operation {
                    bad = Some("response operation does not match the request");
                    break;
                }
                if !matches!(
                    rsp.status,
                    BLKIF_RSP_OKAY | BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP
                ) {
                    bad = Some("response with an invalid status");
                    break;
                }
                sh.in_use = false;
                batch.extend_from_slice(&sh.refs);
                finished.push((rsp.id as u32, rsp.status));
            }
            if bad.is_some() {
                break;
            }
        }
        // One end_batch per batch of responses (gnttab_end_foreign_access_references).
        let mut failed = Vec::new();
        self.end_refs(&batch, &mut failed);
        for (id, status) in finished {
            self.complete_part(id, status, &failed);
        }
        // A backend that kept a page mapped after answering (XSA-396: never trust it with the
        // memory again) fails the device now, not at the application's next service call.
        if let Some(why) = bad.or(self.failure) {
            self.fail(why);
            return;
        }
        self.issue();
    }

    fn complete_part(&mut self, id: u32, status: i16, failed: &[GrantRef]) {
        // `id` is a shadow entry (checked in `progress`, enumerated in `shutdown`).
        let Some(sh) = self.shadow.get_mut(id as usize) else {
            return;
        };
        let refs = core::mem::take(&mut sh.refs);
        let opi = sh.op;
        let data = refs.get(..sh.data_refs).unwrap_or(&refs);
        let indirect = core::mem::take(&mut sh.indirect);
        let segs = core::mem::take(&mut sh.segs);
        let q = self.queue_of(id);
        if let Some(queue) = self.queues.get_mut(q) {
            queue.free_ids.push(id);
        }
        // Indirect descriptor pages: per-request grants the backend still maps fail the
        // device (below) and their pages stay in quarantine.
        for (b, g) in indirect {
            let kept = !failed.is_empty() && failed.contains(&g) && refs.contains(&g);
            if kept && self.failure.is_none() {
                self.failure = Some("the backend kept an indirect page mapped after answering");
            }
            self.bounce_return(b, kept.then_some(g));
        }
        let persistent = self.cfg.persistent;
        let mut stuck: Vec<GrantRef> = Vec::new();
        for seg in &segs {
            // A grant made for this request that the backend still maps after answering.
            let per_request = seg.bounce.is_none() || !persistent;
            let kept = per_request && failed.contains(&seg.gref) && data.contains(&seg.gref);
            let Some(b) = seg.bounce else {
                if kept {
                    stuck.push(seg.gref);
                }
                continue;
            };
            if kept {
                self.bounce_return(b, Some(seg.gref));
                if self.failure.is_none() {
                    self.failure = Some("the backend kept a granted page mapped after answering");
                }
                continue;
            }
            let read_ok = status == BLKIF_RSP_OKAY
                && self
                    .ops
                    .get(opi)
                    .and_then(Option::as_ref)
                    .is_some_and(|op| op.kind == Kind::Read);
            if read_ok {
                self.bounce_to_buffer(opi, b, seg);
            }
            self.bounce_return(b, None);
        }
        let Some(op) = self.ops.get_mut(opi).and_then(Option::as_mut) else {
            return;
        };
        op.in_flight = op.in_flight.saturating_sub(1);
        if !stuck.is_empty() {
            op.stuck.extend(stuck);
            op.result = Err(BlkError::Failed);
            if self.failure.is_none() {
                self.failure = Some("the backend kept a granted page mapped after answering");
            }
        }
        match status {
            BLKIF_RSP_OKAY => {}
            BLKIF_RSP_EOPNOTSUPP => {
                // Linux blkfront: a flush or barrier answered EOPNOTSUPP turns the feature off.
                if matches!(op.kind, Kind::Flush(_)) {
                    self.cfg.flush = FlushMode::None;
                }
                if op.result.is_ok() {
                    op.result = Err(BlkError::Unsupported);
                }
            }
            _ => {
                if op.result.is_ok() {
                    op.result = Err(BlkError::Io);
                }
            }
        }
        if op.in_flight == 0 && op.next_part >= op.parts {
            self.finish(opi);
        }
    }

    /// Copy a read segment from bounce page `b` into the operation's buffer.
    fn bounce_to_buffer(&mut self, opi: usize, b: u32, seg: &Seg) {
        let Some(src) = self
            .bounce
            .pages
            .get(b as usize)
            .and_then(Option::as_ref)
            .map(|p| p.run.addr)
        else {
            return;
        };
        let dst = self
            .ops
            .get_mut(opi)
            .and_then(Option::as_mut)
            .and_then(|op| op.buf.as_mut())
            .and_then(|buf| {
                let end = seg.at.checked_add(seg.len)?;
                buf.as_mut_slice().get_mut(seg.at..end)
            });
        if let Some(dst) = dst {
            // SAFETY: `src` is a page of ours (kept in the pool) and `seg.len <= PAGE_SIZE`.
            // With persistent grants the backend still maps it and may write it while we copy:
            // the copy reads plain bytes with no reference to the page, and what the
            // application gets is its own memory, which no backend maps.
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr(), seg.len) };
        }
    }

    pub(super) fn finish(&mut self, opi: usize) {
        let Some(mut op) = self.ops.get_mut(opi).and_then(Option::take) else {
            return;
        };
        self.free_ops.push(opi);
        let mut buffer = op.buf.take();
        if !op.stuck.is_empty() {
            let run = buffer.take().and_then(Buffer::into_run);
            self.quarantine.push((core::mem::take(&mut op.stuck), run));
        }
        self.done.push_back(Done {
            internal: op.internal,
            completion: Completion {
                tag: op.tag,
                result: op.result,
                buf: buffer,
            },
        });
    }

    /// End the grants a backend kept mapped, if it let go of them now; free their pages.
    pub fn retry_quarantine(&mut self) {
        if self.quarantine.is_empty() {
            return;
        }
        let q = core::mem::take(&mut self.quarantine);
        for (refs, run) in q {
            self.retire(refs, run);
        }
    }

    /// End `refs`, then free `run`; what cannot be done yet (a grant the backend still maps,
    /// a page still granted under another reference) waits in quarantine.
    fn retire(&mut self, refs: Vec<GrantRef>, run: Option<PageRun>) {
        let mut failed = Vec::new();
        self.end_refs(&refs, &mut failed);
        if !failed.is_empty() {
            self.quarantine.push((failed, run));
            return;
        }
        if let Some(run) = run {
            self.free_run(run);
        }
    }

    /// Give pages back to the platform, or keep them in quarantine while one is still granted.
    pub(super) fn free_run(&mut self, run: PageRun) {
        let (addr, pages) = (run.addr, run.pages);
        if self.p().free(run) == Err(Error::Busy) {
            self.quarantine
                .push((Vec::new(), Some(PageRun { addr, pages })));
        }
    }

    /// The backend misbehaved: fail the device.
    pub fn fail(&mut self, why: &'static str) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
        self.shutdown(BlkError::Failed);
    }

    /// Disconnect (idempotent): every outstanding request — parked ones too — completes with
    /// `err`, grants end, the port closes, the ring and bounce pages are freed (kept while
    /// still mapped).
    pub fn shutdown(&mut self, err: BlkError) {
        if !self.connected && self.parked_until.is_none() {
            self.retry_quarantine();
            return;
        }
        if self.connected {
            for op in self.ops.iter_mut().flatten() {
                op.result = Err(err);
                op.parts = op.next_part;
            }
            self.release_in_flight();
            self.release_ring();
        }
        self.parked_until = None;
        self.fail_ops(err);
    }

    /// The backend went away in order (it is closing, restarting, or the domain is being
    /// suspended): keep every operation not yet completed — queued ones, and those on the
    /// ring, whose grants are ended — to be issued again, whole, on the next connection
    /// ([`take_over`](Self::take_over)), as Linux's `blkif_recover` does; release the ring.
    /// Operations still parked at `until` (the platform's clock) fail. A backend that kept a
    /// page mapped is not waited for: the device fails instead.
    pub fn park(&mut self, until: Duration) {
        if !self.connected {
            return;
        }
        // Nothing finishes while its parts are taken back (`next_part` 0 < `parts`).
        for op in self.ops.iter_mut().flatten() {
            op.next_part = 0;
        }
        self.release_in_flight();
        self.release_ring();
        if self.failure.is_some() {
            self.fail_ops(BlkError::Failed);
            return;
        }
        let mut order: Vec<usize> = (0..self.ops.len())
            .filter(|&i| self.ops.get(i).is_some_and(Option::is_some) && !self.queue.contains(&i))
            .collect();
        order.extend(self.queue.drain(..));
        for op in self.ops.iter_mut().flatten() {
            op.result = Ok(());
            op.in_flight = 0;
        }
        self.queue = order.into();
        self.parked_until = Some(until);
    }

    /// Whether operations wait for the next connection.
    pub fn parked(&self) -> bool {
        self.parked_until.is_some()
    }

    /// Parked operations whose deadline passed fail (`BlkError::Failed`).
    pub fn expire(&mut self) {
        if self.parked_until.is_some_and(|t| self.p().now() >= t) {
            self.shutdown(BlkError::Failed);
        }
    }

    /// Take every part off the ring: end its grants in one batch and give its pages back
    /// (a page the backend keeps mapped goes to quarantine and fails the device).
    fn release_in_flight(&mut self) {
        self.connected = false;
        let mut batch = Vec::new();
        let mut in_flight = Vec::new();
        for (id, sh) in self.shadow.iter_mut().enumerate() {
            if sh.in_use {
                sh.in_use = false;
                batch.extend_from_slice(&sh.refs);
                in_flight.push(id as u32);
            }
        }
        let mut failed = Vec::new();
        self.end_refs(&batch, &mut failed);
        for id in in_flight {
            self.complete_part(id, BLKIF_RSP_ERROR, &failed);
        }
    }

    /// Complete every operation left with `err` (its first error if it had one).
    fn fail_ops(&mut self, err: BlkError) {
        for opi in 0..self.ops.len() {
            if let Some(op) = self.ops.get_mut(opi).and_then(Option::as_mut) {
                if op.result.is_ok() {
                    op.result = Err(err);
                }
                op.parts = op.next_part;
                op.in_flight = 0;
                self.finish(opi);
            }
        }
        self.queue.clear();
        self.retry_quarantine();
    }

    /// Close the port, end the ring's grants and free its pages, release the bounce pool.
    /// This domain resumed as a new one: the event channel's number is not ours any more;
    /// forget it without closing it.
    pub fn forget_port(&mut self) {
        for q in &mut self.queues {
            q.port = None;
        }
    }

    fn release_ring(&mut self) {
        // The rings go first: nothing may look at their pages once they are freed.
        for q in core::mem::take(&mut self.queues) {
            if let Some(port) = q.port {
                let _ = self.p().close(port);
            }
            let mut failed = Vec::new();
            self.end_refs(&q.refs, &mut failed);
            if failed.is_empty() {
                if let Some(run) = q.run {
                    let _ = self.p().free(run);
                }
            } else {
                self.quarantine.push((failed, q.run));
            }
        }
        // Bounce pages: a backend that disconnected has unmapped their persistent grants;
        // those it still maps wait in quarantine with their pages (freed once ended).
        let pool = core::mem::take(&mut self.bounce.pages);
        self.bounce.free.clear();
        self.bounce.live = 0;
        for page in pool.into_iter().flatten() {
            match page.gref {
                Some(g) => self.retire(vec![g], Some(page.run)),
                None => self.free_run(page.run),
            }
        }
        self.retry_quarantine();
    }
}
