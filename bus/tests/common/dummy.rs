//! The `vdummy` device class: a frontend and a backend driver that do the XenBus handshake
//! with made-up keys and log what the bus asked of them. Shared by xen-bus's tests and
//! xen-control's bus shutdown test (included there by path: test code only, no crate).

use std::cell::RefCell;
use std::rc::Rc;

use xen_bus::{
    BackDriver, DeviceCtx, DriverError, DriverResult, FrontDriver, Progress, XenbusState,
};

/// What the vdummy drivers saw and did, in order: `probe`, `initialise`, `attach`,
/// `detach`, `other <n>` (the other end's state as seen).
pub type Log = Rc<RefCell<Vec<String>>>;

/// What both vdummy drivers keep: the log, and the detaches since the last probe.
struct Recorder {
    log: Log,
    detached: u32,
}

impl Recorder {
    fn push(&self, what: impl Into<String>) {
        self.log.borrow_mut().push(what.into());
    }
    fn probe(&mut self) {
        self.detached = 0;
        self.push("probe");
    }
    fn other(&self, state: XenbusState) -> Result<(), DriverError> {
        self.push(format!("other {}", state.as_u32()));
        Ok(())
    }
    fn detach(&mut self) {
        self.detached += 1;
        assert!(self.detached == 1, "the bus detaches once per probe");
        self.push("detach");
    }
}

/// How a vdummy frontend behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrontOpts {
    /// Go Initialised without waiting for the backend's InitWait.
    pub skip_init_wait: bool,
    /// `initialise` never finishes.
    pub stall_initialise: bool,
}

/// The vdummy frontend: publishes `ring-ref` and `event-channel` (+ `feature-dummy` echoed
/// if the backend offered it), then Initialised; on the backend's Connected reads `sectors`.
pub struct DummyFront {
    rec: Recorder,
    opts: FrontOpts,
}

impl DummyFront {
    pub fn new(log: Log, opts: FrontOpts) -> DummyFront {
        DummyFront {
            rec: Recorder { log, detached: 0 },
            opts,
        }
    }
}

impl FrontDriver for DummyFront {
    fn probe(&mut self, _ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.rec.probe();
        Ok(Progress::Done)
    }
    fn waits_for_init_wait(&self) -> bool {
        !self.opts.skip_init_wait
    }
    fn initialise(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        if self.opts.stall_initialise {
            return Ok(Progress::Pending);
        }
        self.rec.push("initialise");
        let offered = ctx.read_other("feature-dummy")?.as_deref() == Some(b"1");
        ctx.write("ring-ref", b"8")?;
        ctx.write("event-channel", b"3")?;
        if offered {
            ctx.write("feature-dummy", b"1")?;
        }
        Ok(Progress::Done)
    }
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        let sectors = ctx.require_other_u32("sectors")?;
        self.rec.push(format!("attach {sectors}"));
        Ok(Progress::Done)
    }
    fn other_end_changed(
        &mut self,
        _ctx: &mut DeviceCtx<'_>,
        state: XenbusState,
    ) -> Result<(), DriverError> {
        self.rec.other(state)
    }
    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        self.rec.detach();
    }
}

/// The vdummy backend: publishes `feature-dummy` at probe (→ InitWait); on the frontend's
/// Initialised reads `ring-ref` and `event-channel` (both must be numbers), writes `sectors`
/// (→ Connected).
pub struct DummyBack {
    rec: Recorder,
}

impl DummyBack {
    pub fn new(log: Log) -> DummyBack {
        DummyBack {
            rec: Recorder { log, detached: 0 },
        }
    }
}

impl BackDriver for DummyBack {
    fn probe(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        self.rec.probe();
        ctx.write("feature-dummy", b"1")?;
        Ok(Progress::Done)
    }
    fn attach(&mut self, ctx: &mut DeviceCtx<'_>) -> DriverResult {
        let r = ctx.require_other_u32("ring-ref")?;
        let e = ctx.require_other_u32("event-channel")?;
        self.rec.push(format!("attach {r} {e}"));
        ctx.write("sectors", b"1024")?;
        Ok(Progress::Done)
    }
    fn other_end_changed(
        &mut self,
        _ctx: &mut DeviceCtx<'_>,
        state: XenbusState,
    ) -> Result<(), DriverError> {
        self.rec.other(state)
    }
    fn detach(&mut self, _ctx: &mut DeviceCtx<'_>) {
        self.rec.detach();
    }
}
