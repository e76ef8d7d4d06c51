//! Completion: responses checked and matched to their shadow entries, grants ended in
//! batches (or quarantined while the backend still maps them), operations finished, and the
//! device failed or shut down.

use super::*;

impl<H: PlatformRef> DataPath<H> {
    /// Take every response, end their grants in one batch, complete their operations, and
    /// issue what is queued. A misbehaving backend fails the device.
    pub fn progress(&mut self) {
        self.retry_quarantine();
        if !self.connected {
            return;
        }
        let mut finished: Vec<(u32, i16)> = Vec::new();
        let mut batch: Vec<GrantRef> = Vec::new();
        let mut bad: Option<&'static str> = None;
        loop {
            let rsp = match self.ring.take_response() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if self.mode == WaitMode::Event && self.ring.final_check_for_responses() {
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    bad = Some("response producer overflow");
                    break;
                }
            };
            let Some(sh) = usize::try_from(rsp.id)
                .ok()
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
        let sh = &mut self.shadow[id as usize];
        let refs = core::mem::take(&mut sh.refs);
        let opi = sh.op;
        let (data, ind) = refs.split_at(sh.data_refs.min(refs.len()));
        if ind.iter().any(|r| failed.contains(r)) {
            // The id stays retired with its indirect pages in quarantine; the device fails
            // (below), so retired ids cannot drain the pool.
            sh.retired = true;
            let stuck: Vec<GrantRef> = ind.iter().copied().filter(|r| failed.contains(r)).collect();
            self.quarantine.push((stuck, None));
            if self.failure.is_none() {
                self.failure = Some("the backend kept an indirect page mapped after answering");
            }
        } else {
            self.free_ids.push(id);
        }
        let data_pages = core::mem::take(&mut sh.data_pages);
        let mut stuck: Vec<GrantRef> = Vec::new();
        let Some(op) = self.ops.get_mut(opi).and_then(Option::as_mut) else {
            return;
        };
        let epoch = self.epoch;
        for (i, &r) in data.iter().enumerate() {
            if !failed.contains(&r) {
                continue;
            }
            // With persistent grants the backend keeps what it could map read-write (blkif.h:
            // it "will still try to map those grants persistently"), e.g. a read's pages
            // granted per request beyond our cap: keep the grant as a persistent one of the
            // buffer, as Linux's blkif_completion does, rather than call that misbehaviour.
            let slot = op
                .buf
                .as_mut()
                .filter(|_| self.persist_cap > 0)
                .and_then(|b| b.persist.as_mut())
                .filter(|ps| ps.epoch == epoch)
                .and_then(|ps| ps.refs.get_mut(*data_pages.get(i)? as usize))
                .filter(|slot| slot.is_none());
            match slot {
                Some(slot) => {
                    *slot = Some(r);
                    self.persistent.push(r);
                }
                None => stuck.push(r),
            }
        }
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
        if let Some(mut orig) = op.orig.take() {
            if let Some(bounce) = buffer.take() {
                if op.kind == Kind::Read && op.result.is_ok() {
                    orig.as_mut_slice().copy_from_slice(bounce.as_slice());
                }
                let _ = self.free_buffer(bounce);
            }
            buffer = Some(orig);
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

    /// Disconnect (idempotent): every outstanding request completes with `err`, grants end,
    /// the port closes, the ring and indirect pages are freed (kept while still mapped).
    pub fn shutdown(&mut self, err: BlkError) {
        if !self.connected {
            self.retry_quarantine();
            return;
        }
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
        for opi in 0..self.ops.len() {
            if let Some(op) = self.ops[opi].as_mut() {
                op.result = Err(err);
                op.parts = op.next_part;
            }
        }
        for id in in_flight {
            self.complete_part(id, BLKIF_RSP_ERROR, &failed);
        }
        for opi in 0..self.ops.len() {
            if self.ops[opi].is_some() {
                self.finish(opi);
            }
        }
        self.queue.clear();
        if let Some(port) = self.port.take() {
            let _ = self.p().close(port);
        }
        let mut failed = Vec::new();
        let refs = core::mem::take(&mut self.ring_refs);
        self.end_refs(&refs, &mut failed);
        let run = self.ring_run.take();
        if failed.is_empty() {
            if let Some(run) = run {
                let _ = self.p().free(run);
            }
        } else {
            self.quarantine.push((failed, run));
        }
        // Persistent grants: a backend that disconnected has unmapped them; those it still
        // maps wait in quarantine with their pages (freed once ended) — spare buffers' and
        // indirect pages' with their runs, the others' (buffers the application holds: their
        // pages are its own) alone.
        let mut spare_refs: Vec<GrantRef> = Vec::new();
        for b in core::mem::take(&mut self.spare) {
            let refs: Vec<GrantRef> = b
                .persist
                .iter()
                .flat_map(|ps| ps.refs.iter().flatten().copied())
                .collect();
            spare_refs.extend_from_slice(&refs);
            self.retire(refs, b.into_run());
        }
        spare_refs.sort_unstable();
        let others: Vec<GrantRef> = core::mem::take(&mut self.persistent)
            .into_iter()
            .filter(|r| spare_refs.binary_search(r).is_err())
            .collect();
        self.retire(others, None);
        for i in 0..self.shadow.len() {
            let refs = core::mem::take(&mut self.shadow[i].indirect_refs);
            let Some(run) = self.shadow[i].indirect.take() else {
                continue;
            };
            if !refs.is_empty() {
                // Persistent indirect grants end with their pages.
                self.retire(refs, Some(run));
            } else if self.shadow[i].retired {
                // Its grant is in quarantine: leak the page rather than reuse it.
                let _leaked = run; // never freed: not ours to reuse
            } else {
                self.free_run(run);
            }
        }
        self.retry_quarantine();
    }
}
