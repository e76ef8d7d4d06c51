//! The hypervisor's state: machine frames, and per domain its event-channel ports, grant table,
//! grant mappings (maptrack) and page runs. Everything here runs under the one hypervisor lock.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

use xen_platform::abi::{GrantHandle, DOMID_FIRST_RESERVED, DOMID_SELF};
use xen_platform::{
    CopyPtr, DomId, Error, EvtchnPort, GrantCopy, GrantRef, Mapping, MultiMapping, PageRun, Result,
    XenPfn, MAX_MULTI_MAP, PAGE_SIZE,
};

use crate::{mem, Config, DomShared, DomainStats};

/// `GNTTAB_NR_RESERVED_ENTRIES`: refs below this are never handed out by `grant`.
pub const NR_RESERVED_REFS: GrantRef = 8;

/// How much the machine-memory file grows at least at a time (sparse: costs nothing).
const GROW_FRAMES: u64 = 16 * 1024;

/// `DOMID_SELF` means the caller.
fn resolve(me: DomId, d: DomId) -> DomId {
    if d == DOMID_SELF {
        me
    } else {
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Machine memory
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct FrameInfo {
    /// The domain whose memory this frame is (None: free, or orphaned by a destroyed domain).
    owner: Option<DomId>,
    /// Grant entries (in the owner's table) that name this frame.
    grants: u32,
    /// Live grant mappings of this frame (in any domain).
    maps: u32,
    /// On the free list.
    free: bool,
}

/// Machine frames: the memfd plus who owns and who maps each frame.
pub(crate) struct Machine {
    file: File,
    frames: Vec<FrameInfo>,
    free: Vec<XenPfn>,
    file_frames: u64,
    max_frames: u64,
    /// The hypervisor's direct map of the file (grant copy).
    direct: mem::DirectMap,
}

impl Machine {
    pub(crate) fn new(max_frames: u64) -> std::io::Result<Self> {
        let file = mem::memfd()?;
        let direct = mem::DirectMap::new(&file, max_frames)
            .ok_or_else(|| std::io::Error::other("cannot map machine memory"))?;
        Ok(Machine {
            file,
            frames: Vec::new(),
            free: Vec::new(),
            file_frames: 0,
            max_frames,
            direct,
        })
    }

    fn info(&self, f: XenPfn) -> Option<&FrameInfo> {
        usize::try_from(f).ok().and_then(|i| self.frames.get(i))
    }

    fn info_mut(&mut self, f: XenPfn) -> Option<&mut FrameInfo> {
        usize::try_from(f).ok().and_then(|i| self.frames.get_mut(i))
    }

    /// Frames in use (owned, or kept alive by a mapping).
    pub(crate) fn in_use(&self) -> usize {
        self.frames.len() - self.free.len()
    }

    /// Allocate `n` zeroed frames for `owner`, sorted (so consecutive ones map in one call).
    fn alloc(&mut self, owner: DomId, n: usize) -> Result<Vec<XenPfn>> {
        let fresh_room = self.max_frames.saturating_sub(self.frames.len() as u64);
        if n as u64 > self.free.len() as u64 + fresh_room {
            return Err(Error::NoSpace);
        }
        let from_free = n.min(self.free.len());
        let fresh = n - from_free;
        let new_len = (self.frames.len() + fresh) as u64;
        if new_len > self.file_frames {
            let target = new_len
                .max(self.file_frames.saturating_mul(2))
                .max(GROW_FRAMES)
                .min(self.max_frames);
            let bytes = target.checked_mul(PAGE_SIZE as u64).ok_or(Error::NoSpace)?;
            self.file.set_len(bytes).map_err(|_| Error::NoSpace)?;
            self.file_frames = target;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..from_free {
            if let Some(f) = self.free.pop() {
                if let Some(i) = self.info_mut(f) {
                    *i = FrameInfo {
                        owner: Some(owner),
                        ..FrameInfo::default()
                    };
                }
                out.push(f);
            }
        }
        for _ in 0..fresh {
            out.push(self.frames.len() as XenPfn);
            self.frames.push(FrameInfo {
                owner: Some(owner),
                ..FrameInfo::default()
            });
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Give frames up (owner gone); each is recycled once nothing grants or maps it.
    fn disown(&mut self, frames: &[XenPfn]) {
        for &f in frames {
            if let Some(i) = self.info_mut(f) {
                i.owner = None;
            }
            self.maybe_recycle(f);
        }
    }

    /// Put a frame back on the free list (zeroed) if nobody owns, grants or maps it.
    fn maybe_recycle(&mut self, f: XenPfn) {
        let Some(i) = self.info(f) else { return };
        if i.free || i.owner.is_some() || i.grants > 0 || i.maps > 0 {
            return;
        }
        if !mem::punch_hole(&self.file, f) {
            // Zero by writing; if even that fails, leak the frame rather than hand out dirt.
            let zero = [0u8; PAGE_SIZE];
            if self.file.write_all_at(&zero, f * PAGE_SIZE as u64).is_err() {
                return;
            }
        }
        if let Some(i) = self.info_mut(f) {
            i.free = true;
        }
        self.free.push(f);
    }

    /// `Ok` if `me` owns `f`; `PermissionDenied` if another domain does; `Invalid` if nobody.
    fn check_owned(&self, me: DomId, f: XenPfn) -> Result<()> {
        match self.info(f).and_then(|i| i.owner) {
            Some(o) if o == me => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
            None => Err(Error::Invalid),
        }
    }

    /// Copy `len` bytes from `(sf, so)` to `(df, dof)` through the direct map.
    fn copy(&self, sf: XenPfn, so: usize, df: XenPfn, dof: usize, len: usize) -> Result<()> {
        let in_frame = |f: XenPfn, off: usize| {
            f < self.frames.len() as u64 && off.checked_add(len).is_some_and(|e| e <= PAGE_SIZE)
        };
        if !in_frame(sf, so) || !in_frame(df, dof) {
            return Err(Error::Invalid);
        }
        let src = sf as usize * PAGE_SIZE + so;
        let dst = df as usize * PAGE_SIZE + dof;
        let file_len = self.file_frames as usize * PAGE_SIZE;
        if self.direct.copy(src, dst, len, file_len) {
            Ok(())
        } else {
            Err(Error::Invalid)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-domain tables
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Free,
    /// Allocated for `remote` to bind to. `peer_gone`: it was bound and the peer closed its
    /// end or was destroyed (Xen: back to `ECS_UNBOUND` with the old peer as remote).
    Unbound {
        remote: DomId,
        peer_gone: bool,
    },
    Interdomain {
        remote: DomId,
        rport: EvtchnPort,
    },
}

#[derive(Debug, Clone, Copy)]
struct Port {
    state: PortState,
    pending: bool,
    masked: bool,
}

impl Port {
    const FREE: Port = Port {
        state: PortState::Free,
        pending: false,
        masked: false,
    };
}

#[derive(Debug, Clone, Copy)]
struct GrantEntry {
    grantee: DomId,
    frame: XenPfn,
    readonly: bool,
    /// Live mappings of this entry by the grantee.
    maps: u32,
    /// Gone with a restore ([`HvState::revoke_for_restore`]): no new map or copy; ending it
    /// succeeds at once (the restored domain's table holds nothing there).
    revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapKind {
    Single {
        addr: usize,
    },
    Multi {
        base: usize,
        index: usize,
        pages: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct MapTrack {
    granter: DomId,
    gref: GrantRef,
    frame: XenPfn,
    readonly: bool,
    kind: MapKind,
}

/// One live domain's hypervisor-side state.
pub(crate) struct DomState {
    pub(crate) shared: Arc<DomShared>,
    /// Index = port number; `ports[0]` exists but is never allocated.
    ports: Vec<Port>,
    /// Index = grant ref; refs `0..NR_RESERVED_REFS` exist but `grant` never hands them out.
    grants: Vec<Option<GrantEntry>>,
    free_refs: Vec<GrantRef>,
    maptrack: HashMap<GrantHandle, MapTrack>,
    next_handle: GrantHandle,
    /// Page runs: start address -> frames.
    runs: BTreeMap<usize, Vec<XenPfn>>,
    /// Pages of foreign mappings this domain may hold at once, as a real guest that maps into
    /// a fixed window (xen-rt); `None`: only the hypervisor's maptrack limit.
    pub(crate) map_window: Option<usize>,
}

impl DomState {
    pub(crate) fn new(shared: Arc<DomShared>) -> Self {
        DomState {
            shared,
            ports: vec![Port::FREE],
            grants: vec![None; NR_RESERVED_REFS as usize],
            free_refs: Vec::new(),
            maptrack: HashMap::new(),
            next_handle: 0,
            runs: BTreeMap::new(),
            map_window: None,
        }
    }

    fn port_index(p: EvtchnPort, limit: u32) -> Result<usize> {
        if p == 0 || p >= limit {
            return Err(Error::Invalid);
        }
        usize::try_from(p).map_err(|_| Error::Invalid)
    }

    /// An allocated port: `Invalid` for 0 or beyond the limit, `NotFound` if not allocated.
    fn port(&self, p: EvtchnPort, limit: u32) -> Result<&Port> {
        let i = Self::port_index(p, limit)?;
        match self.ports.get(i) {
            Some(port) if port.state != PortState::Free => Ok(port),
            _ => Err(Error::NotFound),
        }
    }

    fn port_mut(&mut self, p: EvtchnPort, limit: u32) -> Result<&mut Port> {
        let i = Self::port_index(p, limit)?;
        match self.ports.get_mut(i) {
            Some(port) if port.state != PortState::Free => Ok(port),
            _ => Err(Error::NotFound),
        }
    }

    /// The lowest free port (as Xen's `get_free_port`).
    fn alloc_port(&mut self, limit: u32, state: PortState) -> Result<EvtchnPort> {
        let fresh = Port {
            state,
            pending: false,
            masked: false,
        };
        if let Some(i) = (1..self.ports.len()).find(|&i| self.ports[i].state == PortState::Free) {
            self.ports[i] = fresh;
            return EvtchnPort::try_from(i).map_err(|_| Error::NoSpace);
        }
        let i = self.ports.len().max(1);
        if (i as u64) >= u64::from(limit) {
            return Err(Error::NoSpace);
        }
        self.ports.resize(i, Port::FREE);
        self.ports.push(fresh);
        EvtchnPort::try_from(i).map_err(|_| Error::NoSpace)
    }

    fn alloc_ref(&mut self, limit: u32) -> Result<GrantRef> {
        if let Some(r) = self.free_refs.pop() {
            return Ok(r);
        }
        let r = self.grants.len();
        if (r as u64) >= u64::from(limit) {
            return Err(Error::NoSpace);
        }
        self.grants.push(None);
        GrantRef::try_from(r).map_err(|_| Error::NoSpace)
    }

    fn grant_entry(&self, gref: GrantRef) -> Option<&GrantEntry> {
        usize::try_from(gref)
            .ok()
            .and_then(|i| self.grants.get(i))
            .and_then(|e| e.as_ref())
    }

    fn grant_slot_mut(&mut self, gref: GrantRef) -> Option<&mut Option<GrantEntry>> {
        usize::try_from(gref)
            .ok()
            .and_then(|i| self.grants.get_mut(i))
    }

    fn alloc_handle(&mut self) -> GrantHandle {
        // Terminates: the caller checked that maptrack has fewer entries than handles exist.
        loop {
            let h = self.next_handle;
            self.next_handle = self.next_handle.wrapping_add(1);
            if !self.maptrack.contains_key(&h) {
                return h;
            }
        }
    }

    fn any_event(&self) -> bool {
        self.ports
            .iter()
            .any(|p| p.state != PortState::Free && p.pending && !p.masked)
    }

    pub(crate) fn stats(&self) -> DomainStats {
        DomainStats {
            pages: self.runs.values().map(Vec::len).sum(),
            grants: self.grants.iter().filter(|g| g.is_some()).count(),
            mappings: self.maptrack.len(),
            ports: self
                .ports
                .iter()
                .filter(|p| p.state != PortState::Free)
                .count(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hypervisor state
// ---------------------------------------------------------------------------------------------

/// Result of looking at a set of ports for [`State::poll_ports`].
pub(crate) enum PortPoll {
    Ready(EvtchnPort),
    NotYet,
}

pub(crate) struct State {
    /// Live domains only.
    pub(crate) domains: BTreeMap<DomId, DomState>,
    pub(crate) mem: Machine,
    pub(crate) next_domid: u32,
    /// Domids at or above `next_domid` chosen with `create_domain_with_id`: the sequential
    /// allocator skips them.
    pub(crate) chosen: std::collections::BTreeSet<DomId>,
    /// Address ranges of destroyed domains (their pages and mappings, replaced by anonymous
    /// memory so that stray accesses stay valid); unmapped when the hypervisor is dropped.
    pub(crate) graveyard: Vec<(usize, usize)>,
    pub(crate) config: Config,
}

impl State {
    pub(crate) fn live(&self, id: DomId) -> Result<&DomState> {
        self.domains.get(&id).ok_or(Error::NoSuchDomain)
    }

    fn live_mut(&mut self, id: DomId) -> Result<&mut DomState> {
        self.domains.get_mut(&id).ok_or(Error::NoSuchDomain)
    }

    // ----- event channels -----

    pub(crate) fn alloc_unbound(&mut self, me: DomId, remote: DomId) -> Result<EvtchnPort> {
        let remote = resolve(me, remote);
        if remote >= DOMID_FIRST_RESERVED {
            return Err(Error::Invalid);
        }
        let limit = self.config.event_ports;
        self.live_mut(me)?.alloc_port(
            limit,
            PortState::Unbound {
                remote,
                peer_gone: false,
            },
        )
    }

    pub(crate) fn bind_interdomain(
        &mut self,
        me: DomId,
        remote: DomId,
        rport: EvtchnPort,
    ) -> Result<EvtchnPort> {
        let remote = resolve(me, remote);
        let limit = self.config.event_ports;
        self.live(me)?;
        let rp = *self.live(remote)?.port(rport, limit)?;
        match rp.state {
            PortState::Unbound { remote: r, .. } if r == me => {}
            PortState::Unbound { .. } => return Err(Error::PermissionDenied),
            _ => return Err(Error::Invalid),
        }
        let d = self.live_mut(me)?;
        let lport = d.alloc_port(limit, PortState::Interdomain { remote, rport })?;
        // Xen sets the new local port pending: notifications sent to the unbound port before
        // the bind would otherwise be lost.
        if let Ok(p) = d.port_mut(lport, limit) {
            p.pending = true;
        }
        d.shared.cv.notify_all();
        let r = self.live_mut(remote)?.port_mut(rport, limit)?;
        r.state = PortState::Interdomain {
            remote: me,
            rport: lport,
        };
        Ok(lport)
    }

    pub(crate) fn notify(&mut self, me: DomId, port: EvtchnPort) -> Result<()> {
        let limit = self.config.event_ports;
        let p = *self.live(me)?.port(port, limit)?;
        match p.state {
            PortState::Interdomain { remote, rport } => {
                let r = self.domains.get_mut(&remote).ok_or(Error::PeerGone)?;
                let rp = r.port_mut(rport, limit).map_err(|_| Error::PeerGone)?;
                rp.pending = true;
                if !rp.masked {
                    r.shared.cv.notify_all();
                }
                Ok(())
            }
            // Deviation from Xen, on purpose: Xen silently drops a send on a port whose peer
            // closed (it is ECS_UNBOUND again); the simulator reports it so tests see the fault.
            PortState::Unbound {
                peer_gone: true, ..
            } => Err(Error::PeerGone),
            // Xen's evtchn_send: `case ECS_UNBOUND: /* silently drop the notification */`.
            // A front end may notify before the back end has bound its port.
            PortState::Unbound { .. } => Ok(()),
            PortState::Free => Err(Error::NotFound),
        }
    }

    pub(crate) fn close(&mut self, me: DomId, port: EvtchnPort) -> Result<()> {
        let limit = self.config.event_ports;
        let d = self.live_mut(me)?;
        let p = d.port_mut(port, limit)?;
        let old = p.state;
        *p = Port::FREE;
        if let PortState::Interdomain { remote, rport } = old {
            self.peer_gone(me, port, remote, rport);
        }
        Ok(())
    }

    /// `me`'s port `port` (bound to `remote:rport`) went away: the peer's end becomes unbound
    /// with its peer gone, and its waiters are woken.
    fn peer_gone(&mut self, me: DomId, port: EvtchnPort, remote: DomId, rport: EvtchnPort) {
        let limit = self.config.event_ports;
        let Some(r) = self.domains.get_mut(&remote) else {
            return;
        };
        if let Ok(rp) = r.port_mut(rport, limit) {
            if rp.state
                == (PortState::Interdomain {
                    remote: me,
                    rport: port,
                })
            {
                rp.state = PortState::Unbound {
                    remote: me,
                    peer_gone: true,
                };
                r.shared.cv.notify_all();
            }
        }
    }

    pub(crate) fn set_mask(&mut self, me: DomId, port: EvtchnPort, masked: bool) -> Result<()> {
        let limit = self.config.event_ports;
        let d = self.live_mut(me)?;
        let p = d.port_mut(port, limit)?;
        p.masked = masked;
        if !masked && p.pending {
            d.shared.cv.notify_all();
        }
        Ok(())
    }

    pub(crate) fn is_pending(&self, me: DomId, port: EvtchnPort) -> bool {
        self.live(me)
            .and_then(|d| d.port(port, self.config.event_ports))
            .is_ok_and(|p| p.pending)
    }

    pub(crate) fn clear(&mut self, me: DomId, port: EvtchnPort) -> bool {
        let limit = self.config.event_ports;
        match self.live_mut(me).and_then(|d| d.port_mut(port, limit)) {
            Ok(p) => std::mem::replace(&mut p.pending, false),
            Err(_) => false,
        }
    }

    /// The first of `ports` that is pending and unmasked; `PeerGone` if every port's peer is
    /// gone; an error for a port that is not allocated.
    pub(crate) fn poll_ports(&self, me: DomId, ports: &[EvtchnPort]) -> Result<PortPoll> {
        let limit = self.config.event_ports;
        let d = self.live(me)?;
        let mut all_gone = !ports.is_empty();
        for &p in ports {
            let port = d.port(p, limit)?;
            if port.pending && !port.masked {
                return Ok(PortPoll::Ready(p));
            }
            if !matches!(
                port.state,
                PortState::Unbound {
                    peer_gone: true,
                    ..
                }
            ) {
                all_gone = false;
            }
        }
        if all_gone {
            Err(Error::PeerGone)
        } else {
            Ok(PortPoll::NotYet)
        }
    }

    pub(crate) fn any_event(&self, me: DomId) -> Result<bool> {
        Ok(self.live(me)?.any_event())
    }

    // ----- grant table: granting side -----

    pub(crate) fn grant(
        &mut self,
        me: DomId,
        domid: DomId,
        frame: XenPfn,
        readonly: bool,
    ) -> Result<GrantRef> {
        let grantee = resolve(me, domid);
        if grantee >= DOMID_FIRST_RESERVED {
            return Err(Error::Invalid);
        }
        self.live(me)?;
        self.mem.check_owned(me, frame)?;
        let limit = self.config.grant_entries;
        let d = self.live_mut(me)?;
        let gref = d.alloc_ref(limit)?;
        if let Some(slot) = d.grant_slot_mut(gref) {
            *slot = Some(GrantEntry {
                grantee,
                frame,
                readonly,
                maps: 0,
                revoked: false,
            });
        }
        if let Some(i) = self.mem.info_mut(frame) {
            i.grants += 1;
        }
        Ok(gref)
    }

    pub(crate) fn grant_reserved(
        &mut self,
        me: DomId,
        gref: GrantRef,
        domid: DomId,
        frame: XenPfn,
        readonly: bool,
    ) -> Result<()> {
        let grantee = resolve(me, domid);
        if gref >= NR_RESERVED_REFS || grantee >= DOMID_FIRST_RESERVED {
            return Err(Error::Invalid);
        }
        self.live(me)?;
        self.mem.check_owned(me, frame)?;
        let d = self.live_mut(me)?;
        let slot = d.grant_slot_mut(gref).ok_or(Error::Invalid)?;
        if slot.is_some() {
            return Err(Error::Busy);
        }
        *slot = Some(GrantEntry {
            grantee,
            frame,
            readonly,
            maps: 0,
            revoked: false,
        });
        if let Some(i) = self.mem.info_mut(frame) {
            i.grants += 1;
        }
        Ok(())
    }

    pub(crate) fn end(&mut self, me: DomId, gref: GrantRef) -> Result<()> {
        let d = self.live_mut(me)?;
        let slot = d.grant_slot_mut(gref).ok_or(Error::NotFound)?;
        let entry = slot.as_ref().ok_or(Error::NotFound)?;
        if entry.maps > 0 && !entry.revoked {
            return Err(Error::Busy);
        }
        let frame = entry.frame;
        *slot = None;
        if gref >= NR_RESERVED_REFS {
            d.free_refs.push(gref);
        }
        if let Some(i) = self.mem.info_mut(frame) {
            i.grants = i.grants.saturating_sub(1);
        }
        self.mem.maybe_recycle(frame);
        Ok(())
    }

    // ----- grant table: mapping side -----

    /// The frame behind `granter`'s `gref` if it is granted to `me` (writably if `write`).
    fn check_grant(
        &self,
        me: DomId,
        granter: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<XenPfn> {
        let g = self.domains.get(&granter).ok_or(Error::NoSuchDomain)?;
        let e = g.grant_entry(gref).ok_or(Error::NotFound)?;
        if e.revoked {
            return Err(Error::NotFound);
        }
        if e.grantee != me || (write && e.readonly) {
            return Err(Error::PermissionDenied);
        }
        Ok(e.frame)
    }

    fn pin(&mut self, granter: DomId, gref: GrantRef, frame: XenPfn) {
        if let Some(Some(e)) = self
            .domains
            .get_mut(&granter)
            .and_then(|g| g.grant_slot_mut(gref))
        {
            e.maps += 1;
        }
        if let Some(i) = self.mem.info_mut(frame) {
            i.maps += 1;
        }
    }

    fn unpin(&mut self, t: &MapTrack) {
        if let Some(Some(e)) = self
            .domains
            .get_mut(&t.granter)
            .and_then(|g| g.grant_slot_mut(t.gref))
        {
            if e.frame == t.frame {
                e.maps = e.maps.saturating_sub(1);
            }
        }
        if let Some(i) = self.mem.info_mut(t.frame) {
            i.maps = i.maps.saturating_sub(1);
        }
        self.mem.maybe_recycle(t.frame);
    }

    fn check_maptrack_room(&self, me: DomId, n: usize) -> Result<()> {
        let d = self.live(me)?;
        let used = d.maptrack.len() as u64;
        if used + n as u64 > u64::from(self.config.maptrack_entries) {
            return Err(Error::NoSpace);
        }
        if d.map_window.is_some_and(|w| d.maptrack.len() + n > w) {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// `(free, total)` grant references of the domain (refs `0..GNTTAB_NR_RESERVED_ENTRIES`
    /// excluded, as a real guest never hands them out).
    pub(crate) fn grant_refs(&self, me: DomId) -> Option<(usize, usize)> {
        let d = self.live(me).ok()?;
        let reserved = NR_RESERVED_REFS as usize;
        let total = (self.config.grant_entries as usize).saturating_sub(reserved);
        let used = d
            .grants
            .iter()
            .skip(reserved)
            .filter(|g| g.is_some())
            .count();
        Some((total.saturating_sub(used), total))
    }

    /// `(free, total)` of the domain's mapping window, if it has one.
    pub(crate) fn map_slots(&self, me: DomId) -> Option<(usize, usize)> {
        let d = self.live(me).ok()?;
        let w = d.map_window?;
        Some((w.saturating_sub(d.maptrack.len()), w))
    }

    pub(crate) fn set_map_window(&mut self, me: DomId, pages: Option<usize>) -> Result<()> {
        self.live_mut(me)?.map_window = pages;
        Ok(())
    }

    pub(crate) fn map(
        &mut self,
        me: DomId,
        domid: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping> {
        let granter = resolve(me, domid);
        self.live(me)?;
        let frame = self.check_grant(me, granter, gref, !readonly)?;
        self.check_maptrack_room(me, 1)?;
        let addr = mem::map_one(&self.mem.file, frame, !readonly).ok_or(Error::NoSpace)?;
        let Some(ptr) = NonNull::new(addr as *mut u8) else {
            mem::unmap(addr, PAGE_SIZE);
            return Err(Error::NoSpace);
        };
        self.pin(granter, gref, frame);
        let d = self.live_mut(me)?;
        let handle = d.alloc_handle();
        d.maptrack.insert(
            handle,
            MapTrack {
                granter,
                gref,
                frame,
                readonly,
                kind: MapKind::Single { addr },
            },
        );
        Ok(Mapping {
            addr: ptr,
            handle,
            domid: granter,
            gref,
            readonly,
        })
    }

    pub(crate) fn unmap(&mut self, me: DomId, m: &Mapping) -> Result<()> {
        let d = self.live_mut(me)?;
        let t = *d.maptrack.get(&m.handle).ok_or(Error::NotFound)?;
        let addr = m.addr.as_ptr() as usize;
        if t.kind != (MapKind::Single { addr }) || t.granter != m.domid || t.gref != m.gref {
            return Err(Error::Invalid);
        }
        d.maptrack.remove(&m.handle);
        mem::unmap(addr, PAGE_SIZE);
        self.unpin(&t);
        Ok(())
    }

    pub(crate) fn map_multi(
        &mut self,
        me: DomId,
        domid: DomId,
        refs: &[GrantRef],
        readonly: bool,
    ) -> Result<MultiMapping> {
        let n = refs.len();
        if n == 0 || n > MAX_MULTI_MAP {
            return Err(Error::Invalid);
        }
        let granter = resolve(me, domid);
        self.live(me)?;
        let mut frames: [XenPfn; MAX_MULTI_MAP] = [0; MAX_MULTI_MAP];
        for (slot, &r) in frames.iter_mut().zip(refs) {
            *slot = self.check_grant(me, granter, r, !readonly)?;
        }
        self.check_maptrack_room(me, n)?;
        let len = n * PAGE_SIZE;
        let base = mem::reserve(len).ok_or(Error::NoSpace)?;
        let ptr = match NonNull::new(base as *mut u8) {
            Some(p) if mem::map_frames_at(&self.mem.file, base, &frames[..n], !readonly) => p,
            _ => {
                mem::unmap(base, len);
                return Err(Error::NoSpace);
            }
        };
        for (&r, &f) in refs.iter().zip(&frames) {
            self.pin(granter, r, f);
        }
        let d = self.live_mut(me)?;
        let mut handles = [0; MAX_MULTI_MAP];
        for (index, ((h, &gref), &frame)) in handles.iter_mut().zip(refs).zip(&frames).enumerate() {
            *h = d.alloc_handle();
            d.maptrack.insert(
                *h,
                MapTrack {
                    granter,
                    gref,
                    frame,
                    readonly,
                    kind: MapKind::Multi {
                        base,
                        index,
                        pages: n,
                    },
                },
            );
        }
        Ok(MultiMapping {
            addr: ptr,
            pages: n,
            handles,
            domid: granter,
            readonly,
        })
    }

    pub(crate) fn unmap_multi(&mut self, me: DomId, m: &MultiMapping) -> Result<()> {
        let n = m.pages;
        if n == 0 || n > MAX_MULTI_MAP {
            return Err(Error::Invalid);
        }
        let base = m.addr.as_ptr() as usize;
        let d = self.live_mut(me)?;
        for (index, h) in m.handles[..n].iter().enumerate() {
            let t = d.maptrack.get(h).ok_or(Error::NotFound)?;
            let expect = MapKind::Multi {
                base,
                index,
                pages: n,
            };
            if t.kind != expect || t.granter != m.domid {
                return Err(Error::Invalid);
            }
        }
        let tracks: Vec<MapTrack> = m.handles[..n]
            .iter()
            .filter_map(|h| d.maptrack.remove(h))
            .collect();
        mem::unmap(base, n * PAGE_SIZE);
        for t in &tracks {
            self.unpin(t);
        }
        Ok(())
    }

    fn copy_side(&self, me: DomId, p: CopyPtr, write: bool) -> Result<(XenPfn, usize)> {
        match p {
            CopyPtr::Local { frame, offset } => {
                self.mem.check_owned(me, frame)?;
                Ok((frame, usize::from(offset)))
            }
            CopyPtr::Foreign {
                domid,
                gref,
                offset,
            } => {
                let frame = self.check_grant(me, resolve(me, domid), gref, write)?;
                Ok((frame, usize::from(offset)))
            }
        }
    }

    fn copy_one(&self, me: DomId, op: &GrantCopy) -> Result<()> {
        let len = usize::from(op.len);
        let (sf, so) = self.copy_side(me, op.source, false)?;
        let (df, dof) = self.copy_side(me, op.dest, true)?;
        if so + len > PAGE_SIZE || dof + len > PAGE_SIZE {
            return Err(Error::Invalid);
        }
        self.mem.copy(sf, so, df, dof, len)
    }

    pub(crate) fn copy(
        &mut self,
        me: DomId,
        ops: &[GrantCopy],
        status: &mut [Result<()>],
    ) -> Result<()> {
        self.live(me)?;
        if status.len() < ops.len() {
            return Err(Error::Invalid);
        }
        for (op, st) in ops.iter().zip(status.iter_mut()) {
            *st = self.copy_one(me, op);
        }
        Ok(())
    }

    // ----- pages -----

    pub(crate) fn alloc(&mut self, me: DomId, pages: usize) -> Result<PageRun> {
        if pages == 0 {
            return Err(Error::Invalid);
        }
        let len = pages.checked_mul(PAGE_SIZE).ok_or(Error::NoSpace)?;
        self.live(me)?;
        let frames = self.mem.alloc(me, pages)?;
        let Some(base) = mem::reserve(len) else {
            self.mem.disown(&frames);
            return Err(Error::NoSpace);
        };
        let ptr = match NonNull::new(base as *mut u8) {
            Some(p) if mem::map_frames_at(&self.mem.file, base, &frames, true) => p,
            _ => {
                mem::unmap(base, len);
                self.mem.disown(&frames);
                return Err(Error::NoSpace);
            }
        };
        self.live_mut(me)?.runs.insert(base, frames);
        Ok(PageRun { addr: ptr, pages })
    }

    pub(crate) fn free(&mut self, me: DomId, run: &PageRun) -> Result<()> {
        let base = run.addr.as_ptr() as usize;
        let d = self.domains.get_mut(&me).ok_or(Error::NoSuchDomain)?;
        let frames = match d.runs.get(&base) {
            Some(f) if f.len() == run.pages => f,
            _ => return Err(Error::Invalid),
        };
        let busy = frames
            .iter()
            .any(|&f| self.mem.info(f).is_some_and(|i| i.grants > 0 || i.maps > 0));
        if busy {
            return Err(Error::Busy);
        }
        let frames = d.runs.remove(&base).unwrap_or_default();
        mem::unmap(base, frames.len() * PAGE_SIZE);
        self.mem.disown(&frames);
        Ok(())
    }

    pub(crate) fn frame(&self, me: DomId, addr: usize) -> Result<XenPfn> {
        if addr & (PAGE_SIZE - 1) != 0 {
            return Err(Error::Invalid);
        }
        let d = self.live(me)?;
        let (&base, frames) = d.runs.range(..=addr).next_back().ok_or(Error::Invalid)?;
        frames
            .get((addr - base) / PAGE_SIZE)
            .copied()
            .ok_or(Error::Invalid)
    }

    // ----- domain lifetime -----

    /// Tear a domain down: close its ports (peers see `PeerGone`), release its mappings of
    /// other domains' grants, revoke its grants (peers' mappings stay valid and keep the frames
    /// alive), and give its memory back. Its address ranges are replaced by anonymous memory.
    /// What a domain finds of its grants and event channels after `xl restore` (a new domain
    /// with its memory as it was): every port but `keep` closed (peers see them go), every
    /// grant revoked (a peer can no longer map or copy it; ending it succeeds). Mappings a
    /// peer still holds stay valid for that peer, as the old domain's pages would.
    pub(crate) fn revoke_for_restore(&mut self, id: DomId, keep: &[EvtchnPort]) -> Result<()> {
        let limit = self.config.event_ports;
        let ports: Vec<(EvtchnPort, PortState)> = self
            .live(id)?
            .ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((EvtchnPort::try_from(i).ok()?, p.state)))
            .filter(|(p, st)| !keep.contains(p) && *st != Port::FREE.state)
            .collect();
        for (port, st) in ports {
            if let Ok(p) = self.live_mut(id)?.port_mut(port, limit) {
                *p = Port::FREE;
            }
            if let PortState::Interdomain { remote, rport } = st {
                self.peer_gone(id, port, remote, rport);
            }
        }
        let d = self.live_mut(id)?;
        for e in d.grants.iter_mut().flatten() {
            e.revoked = true;
        }
        Ok(())
    }

    pub(crate) fn destroy(&mut self, id: DomId) -> Result<Arc<DomShared>> {
        let d = self.domains.remove(&id).ok_or(Error::NoSuchDomain)?;
        for (i, p) in d.ports.iter().enumerate() {
            if let PortState::Interdomain { remote, rport } = p.state {
                if let Ok(port) = EvtchnPort::try_from(i) {
                    self.peer_gone(id, port, remote, rport);
                }
            }
        }
        for t in d.maptrack.values() {
            match t.kind {
                MapKind::Single { addr } => {
                    mem::replace_with_anon(addr, PAGE_SIZE, !t.readonly);
                    self.graveyard.push((addr, PAGE_SIZE));
                }
                MapKind::Multi {
                    base,
                    index: 0,
                    pages,
                } => {
                    mem::replace_with_anon(base, pages * PAGE_SIZE, !t.readonly);
                    self.graveyard.push((base, pages * PAGE_SIZE));
                }
                MapKind::Multi { .. } => {}
            }
            self.unpin(t);
        }
        for e in d.grants.iter().flatten() {
            if let Some(i) = self.mem.info_mut(e.frame) {
                i.grants = i.grants.saturating_sub(1);
            }
        }
        for (&base, frames) in &d.runs {
            let len = frames.len() * PAGE_SIZE;
            mem::replace_with_anon(base, len, true);
            self.graveyard.push((base, len));
            self.mem.disown(frames);
        }
        d.shared.cv.notify_all();
        Ok(d.shared)
    }

    /// Unmap everything (the hypervisor is going away and no domain handle exists any more).
    pub(crate) fn unmap_all(&mut self) {
        for d in self.domains.values() {
            for (&base, frames) in &d.runs {
                mem::unmap(base, frames.len() * PAGE_SIZE);
            }
            for t in d.maptrack.values() {
                match t.kind {
                    MapKind::Single { addr } => mem::unmap(addr, PAGE_SIZE),
                    MapKind::Multi {
                        base,
                        index: 0,
                        pages,
                    } => mem::unmap(base, pages * PAGE_SIZE),
                    MapKind::Multi { .. } => {}
                }
            }
        }
        for &(addr, len) in &self.graveyard {
            mem::unmap(addr, len);
        }
        self.graveyard.clear();
    }
}
