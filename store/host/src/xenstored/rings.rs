//! The ring service thread: waits on every served ring's event channel and the doorbell.

use super::*;

pub(super) fn ring_service(shared: Arc<Shared>, dom0: Domain, bell: EvtchnPort) {
    while !shared.stop.load(Ordering::SeqCst) {
        let ports = {
            let core = shared.core();
            let mut p = vec![bell];
            p.extend(
                core.rings
                    .values()
                    .filter(|r| !r.stopped)
                    .filter_map(|r| r.port),
            );
            p
        };
        match dom0.wait(&ports, Some(TICK)) {
            Ok(_) | Err(PlatformError::Timeout) => {}
            // dom0 is gone: nothing can be served any more.
            Err(PlatformError::NoSuchDomain) => return,
            // A port closed meanwhile (its ring was detached): look again.
            Err(_) => {}
        }
        // Clear before serving: whatever is published after this sets the bit again.
        for p in ports {
            dom0.clear(p);
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut core = shared.core();
        core.sync_domains();
        loop {
            let read = core.ring_inputs();
            let written = core.after_requests(None);
            if !read && !written {
                break;
            }
            // Let socket threads in between rounds.
            drop(core);
            core = shared.core();
        }
    }
}
