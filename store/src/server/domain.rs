//! Domains as xenstored knows them (`struct domain`, Xen 4.17
//! `tools/xenstore/xenstored_domain.c`).
//!
//! A domain entry exists from the moment the domain exists (the toolstack's
//! [`super::Store::create_domain`], standing for what `xc_domain_getinfo()` reports) until it
//! is destroyed. Its `generation` is the global generation count when the entry was made:
//! a permission entry naming the domain is honoured only on nodes written at or after that
//! generation, so a domid re-used by a new domain does not inherit the rights its previous
//! holder was given (XSA-322: `chk_domain_generation()`, `domain_adjust_node_perms()`).
//! Checked against the real daemon: after domain 5 is destroyed and re-created, a node with
//! ACL `r5` written before stays unreadable to the new domain 5, even after dom0 rewrites the
//! node's value; after a mere `XS_RELEASE` and re-introduction the ACL still works (release
//! does not forget the domain).

use alloc::collections::BTreeMap;

use super::node::{Node, NodePerm};
use super::ConnId;
use crate::{DomId, EvtchnPort};

#[derive(Debug, Clone)]
pub(crate) struct Domain {
    /// Global generation count when xenstored learnt about the domain.
    pub generation: u64,
    /// `XS_INTRODUCE`d and not released.
    pub introduced: bool,
    /// The ring connection while introduced.
    pub conn: Option<ConnId>,
    /// `XS_SET_TARGET`: the domain this one (a device model) acts for.
    pub target: Option<DomId>,
    /// Shut down (an `@releaseDomain` was fired for it) and not yet `XS_RESUME`d.
    pub shutdown: bool,
    /// Nodes owned (`domain->nbentry`).
    pub nbentry: usize,
    /// Bytes accounted for the memory quota (`domain->memory`; see [`super::Quotas::memory`]
    /// for what counts).
    pub memory: usize,
    /// From the last `XS_INTRODUCE`.
    pub mfn: u64,
    /// From the last `XS_INTRODUCE`.
    pub port: EvtchnPort,
}

impl Domain {
    pub fn new(generation: u64) -> Domain {
        Domain {
            generation,
            introduced: false,
            conn: None,
            target: None,
            shutdown: false,
            nbentry: 0,
            memory: 0,
            mfn: 0,
            port: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Domains {
    pub map: BTreeMap<DomId, Domain>,
}

impl Domains {
    /// Does the domain exist (in the hypervisor's view)? Dom0 always does.
    pub fn exists(&self, domid: DomId) -> bool {
        domid == 0 || self.map.contains_key(&domid)
    }

    /// Introduced and connected? Dom0 counts as introduced (`IS_DOMAIN_INTRODUCED 0` is `T`
    /// on the real daemon).
    pub fn introduced(&self, domid: DomId) -> bool {
        domid == 0 || self.map.get(&domid).is_some_and(|d| d.introduced)
    }

    /// `chk_domain_generation()`: may an entry naming `domid` on a node of generation `gen`
    /// be honoured?
    pub fn valid_for(&self, domid: DomId, gen: u64) -> bool {
        domid == 0 || self.map.get(&domid).is_some_and(|d| d.generation <= gen)
    }

    /// `domain_adjust_node_perms()`, run whenever a node is read (and the result persisted
    /// when the node is written back): an owner that no longer exists, or is a later
    /// incarnation of the domid, is replaced by dom0; such ACL entries get the ignore flag.
    pub fn adjust(&self, node: &mut Node) {
        let gen = node.generation;
        let mut entries = node.perms.iter_mut();
        if let Some(owner) = entries.next() {
            if !self.valid_for(owner.domid, gen) {
                owner.domid = 0;
            }
        }
        for e in entries {
            if !e.ignore && !self.valid_for(e.domid, gen) {
                e.ignore = true;
            }
        }
    }

    /// `domain_alloc_permrefs()` for a permission list being set: entries naming a domain
    /// that does not exist get the ignore flag.
    pub fn flag_missing(&self, perms: &mut [NodePerm]) {
        for e in perms.iter_mut() {
            if !self.exists(e.domid) {
                e.ignore = true;
            }
        }
    }

    /// Count one more node owned by `domid` (unknown domains and dom0 are not counted: dom0
    /// has no quota).
    pub fn add_entries(&mut self, domid: DomId, delta: i64) {
        if let Some(d) = self.map.get_mut(&domid) {
            d.nbentry = if delta >= 0 {
                d.nbentry
                    .saturating_add(usize::try_from(delta).unwrap_or(usize::MAX))
            } else {
                d.nbentry
                    .saturating_sub(usize::try_from(delta.unsigned_abs()).unwrap_or(usize::MAX))
            };
        }
    }

    /// Nodes owned by `domid`.
    pub fn nbentry(&self, domid: DomId) -> usize {
        self.map.get(&domid).map_or(0, |d| d.nbentry)
    }

    /// The owner a stored node has once adjusted (what [`Domains::adjust`] makes of entry 0):
    /// the domain its memory and node count are accounted to.
    pub fn effective_owner(&self, node: &Node) -> DomId {
        let o = node.owner();
        if self.valid_for(o, node.generation) {
            o
        } else {
            0
        }
    }

    /// Account `n` more bytes to `domid` (unknown domains and dom0 are not counted).
    pub fn mem_add(&mut self, domid: DomId, n: usize) {
        if let Some(d) = self.map.get_mut(&domid) {
            d.memory = d.memory.saturating_add(n);
        }
    }

    /// Give `n` bytes back.
    pub fn mem_sub(&mut self, domid: DomId, n: usize) {
        if let Some(d) = self.map.get_mut(&domid) {
            d.memory = d.memory.saturating_sub(n);
        }
    }

    /// Bytes accounted to `domid`.
    pub fn memory(&self, domid: DomId) -> usize {
        self.map.get(&domid).map_or(0, |d| d.memory)
    }

    /// `domain_chk_quota()`: would `domid` hold `>= quota` bytes after giving back `sub` and
    /// taking `add`? Never for dom0 or a domain the store does not know, nor with quota 0.
    pub fn mem_refused(&self, domid: DomId, add: usize, sub: usize, quota: usize) -> bool {
        quota != 0
            && self
                .map
                .get(&domid)
                .is_some_and(|d| d.memory.saturating_sub(sub).saturating_add(add) >= quota)
    }

    /// Bytes `domid` may still take: anything `>=` this is refused.
    pub fn mem_room(&self, domid: DomId, quota: usize) -> usize {
        match self.map.get(&domid) {
            Some(d) if quota != 0 => quota.saturating_sub(d.memory),
            _ => usize::MAX,
        }
    }

    pub fn target(&self, domid: DomId) -> Option<DomId> {
        self.map.get(&domid).and_then(|d| d.target)
    }
}
