//! The bus end to end on the simulator: buses of several domains against our xenstored, dom0
//! playing the toolstack (see `common`). Every test runs on a fake clock advanced per round
//! and is bounded by a number of rounds.
//!
//! * startup (blkif.h "STATE DIAGRAMS"): front 1→3→4, back 1→2→4; a frontend that does not
//!   wait for InitWait;
//! * shutdown: frontend-initiated (front 5, back 5, front 6, back 6), backend-initiated, and
//!   the toolstack's detach (backend online=0 + state 5) — both Closed, nodes left;
//! * two devices, one backend dead: the live one Connects, the dead one fails (error
//!   published, Closing → Closed) after the handshake timeout, neither stalls the other;
//! * a storage domain (domid ≠ 0) serving a third domain's frontend while running a
//!   frontend of its own on the same bus;
//! * a peer destroyed mid-handshake; nonsense states; removed nodes; revoked permissions;
//!   bad other-end details — clean failures, error published where possible.

mod common;

use std::time::Duration;

use common::{cfg, FrontOpts, Sim};
use xen_bus::store::client::Store;
use xen_bus::store::perms::Access;
use xen_bus::{BusConfig, Phase, XenbusState};

const FE: &str = "device/vdummy/0";

fn be_node(fe: u16, id: &str) -> String {
    format!("backend/vdummy/{fe}/{id}")
}

/// Guest 1 (front bus "fe1") and dom0 (back bus "dom0"), one device vdummy/0.
fn pair(opts: FrontOpts, config: BusConfig) -> Sim {
    let mut s = Sim::new();
    s.create_domain(1);
    s.set_front_opts(FE, opts);
    s.add_bus("dom0", 0, false, true, config);
    s.add_bus("fe1", 1, true, false, config);
    s.add_device(1, 0, "0");
    s
}

fn both_connected(s: &mut Sim) -> bool {
    s.connected("fe1", FE) && s.connected("dom0", &be_node(1, "0"))
}

#[track_caller]
fn assert_error_node(s: &mut Sim, path: &str, errno: i32) -> String {
    let v = s
        .read(path)
        .unwrap_or_else(|| panic!("no error published at {path}"));
    assert!(
        v.starts_with(&format!("{errno} ")),
        "{path} = {v:?}, expected errno {errno}"
    );
    v
}

#[test]
fn startup_front_1_3_4_back_1_2_4() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 0, "0");
    // The frontend is up first and sees the backend in Initialising.
    s.rounds(2);
    s.add_bus("dom0", 0, false, true, BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    s.rounds(5);
    let f = Sim::front_dir(1, "0");
    let b = Sim::back_dir(1, 0, "0");
    assert_eq!(s.state(&f).as_deref(), Some("4"));
    assert_eq!(s.state(&b).as_deref(), Some("4"));
    assert_eq!(s.read(&format!("{f}/ring-ref")).as_deref(), Some("8"));
    assert_eq!(s.read(&format!("{f}/feature-dummy")).as_deref(), Some("1"));
    assert_eq!(s.read(&format!("{b}/sectors")).as_deref(), Some("1024"));
    // The backend saw the frontend go 1 → 3 → 4; the frontend saw the backend 1 → 2 → 4.
    assert_eq!(
        s.log("dom0", &be_node(1, "0")),
        ["other 1", "probe", "other 3", "attach 8 3", "other 4"]
    );
    assert_eq!(
        s.log("fe1", FE),
        [
            "other 1",
            "probe",
            "other 2",
            "initialise",
            "other 4",
            "attach 1024"
        ]
    );
    let st = s.status("fe1", FE).unwrap();
    assert_eq!(
        (st.state, st.phase),
        (XenbusState::Connected, Phase::Connected)
    );
    assert_eq!(st.info.otherend, b);
    assert_eq!(st.info.otherend_id, 0);
    // Nothing more happens while both are connected.
    s.rounds(20);
    assert_eq!(s.log("fe1", FE).len(), 6);
    assert!(s
        .read("/local/domain/1/error/device/vdummy/0/error")
        .is_none());
}

#[test]
fn startup_frontend_that_skips_init_wait() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.set_front_opts(
        FE,
        FrontOpts {
            skip_init_wait: true,
            ..FrontOpts::default()
        },
    );
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 0, "0");
    let f = Sim::front_dir(1, "0");
    let b = Sim::back_dir(1, 0, "0");
    // The frontend goes Initialised while the backend is still Initialising.
    s.run_until("front Initialised", 50, |s| {
        s.state(&f).as_deref() == Some("3")
    });
    assert_eq!(s.state(&b).as_deref(), Some("1"));
    assert_eq!(
        s.read(&format!("{f}/feature-dummy")),
        None,
        "default parameters"
    );
    // Only now does the backend start; it takes the Initialised it finds.
    s.add_bus("dom0", 0, false, true, BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    s.rounds(5);
    assert_eq!(
        s.log("fe1", FE),
        ["other 1", "probe", "initialise", "other 4", "attach 1024"]
    );
    assert_eq!(
        s.log("dom0", &be_node(1, "0")),
        ["other 3", "probe", "attach 8 3", "other 4"]
    );
    assert_eq!(s.state(&b).as_deref(), Some("4"));
    assert_eq!(s.state(&f).as_deref(), Some("4"));
}

#[test]
fn frontend_initiated_close_front5_back5_front6_back6() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    assert!(s.close("fe1", FE));
    s.run_until("both Closed", 200, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    assert_eq!(s.closed("fe1", FE), Some(None));
    assert_eq!(s.closed("dom0", &be_node(1, "0")), Some(None));
    let bl = s.log("dom0", &be_node(1, "0"));
    assert_eq!(bl[bl.len() - 3..], ["other 5", "detach", "other 6"]);
    let fl = s.log("fe1", FE);
    assert_eq!(fl[fl.len() - 2..], ["other 5", "detach"]);
    // Both Closed, nodes left for the toolstack.
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
    assert_eq!(s.state(&Sim::back_dir(1, 0, "0")).as_deref(), Some("6"));
    // Closing again does nothing.
    assert!(s.close("fe1", FE));
    s.rounds(10);
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
}

#[test]
fn frontend_reconnects_after_an_orderly_close() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    assert!(!s.reconnect("fe1", FE), "only a closed frontend reconnects");
    assert!(s.close("fe1", FE));
    s.run_until("both Closed", 200, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    let n = s.events.len();
    // The backend stayed online: it goes back to InitWait when the frontend starts again.
    assert!(s.reconnect("fe1", FE));
    s.run_until("both Connected again", 200, |s| {
        s.events[n..]
            .iter()
            .filter(|(_, e)| matches!(e, xen_bus::BusEvent::Connected { .. }))
            .count()
            == 2
    });
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("4"));
    assert_eq!(s.state(&Sim::back_dir(1, 0, "0")).as_deref(), Some("4"));
    let bl = s.log("dom0", &be_node(1, "0"));
    assert_eq!(bl.iter().filter(|l| *l == "probe").count(), 2, "{bl:?}");
    assert_eq!(bl.iter().filter(|l| *l == "detach").count(), 1, "{bl:?}");
}

/// Found by the `hostile_store` fuzz target (bus/fuzz): a frontend reconnected and closed again
/// before its driver was probed anew must not be detached a second time for the session that
/// already ended (the vdummy drivers assert one `detach` per `probe`).
#[test]
fn frontend_closed_again_before_it_probed_is_not_detached_twice() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    assert!(s.close("fe1", FE));
    s.run_until("both Closed", 200, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    let n = s.events.len();
    assert!(s.reconnect("fe1", FE));
    // Closed again at once: the restarted device goes Closing before its probe runs.
    assert!(s.close("fe1", FE));
    s.run_until("front Closed again", 200, |s| {
        s.events[n..].iter().any(|(b, e)| {
            b == "fe1" && matches!(e, xen_bus::BusEvent::Closed { nodename, .. } if nodename == FE)
        })
    });
    s.rounds(10);
    let fl = s.log("fe1", FE);
    assert_eq!(fl.iter().filter(|l| *l == "probe").count(), 1, "{fl:?}");
    assert_eq!(fl.iter().filter(|l| *l == "detach").count(), 1, "{fl:?}");
    assert_eq!(s.status("fe1", FE).unwrap().phase, Phase::Closed);
}

/// A connected device that watches its other end does not re-read the states every
/// `resync_interval` (an idle storage domain in the lab spent 5 % of its vCPU doing so), only
/// every `connected_resync_interval`; a change still arrives by its watch at once.
#[test]
fn connected_devices_rely_on_their_watch_not_on_polling() {
    let cfg = BusConfig {
        resync_interval: Duration::from_millis(50),
        connected_resync_interval: Duration::from_secs(3),
        ..BusConfig::default()
    };
    let mut s = pair(FrontOpts::default(), cfg);
    s.run_until("both Connected", 200, both_connected);
    s.rounds(5);
    let before: Vec<u64> = s.buses.values_mut().map(|b| b.requests_sent()).collect();
    // 2 s of simulated time: 40 resyncs of 50 ms each (two reads each) without the change.
    s.rounds(200);
    let after: Vec<u64> = s.buses.values_mut().map(|b| b.requests_sent()).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            a - b,
            0,
            "requests while idle and connected: {before:?} -> {after:?}"
        );
    }
    // Past connected_resync_interval: one re-read (own state and the other end's) each.
    s.rounds(150);
    let later: Vec<u64> = s.buses.values_mut().map(|b| b.requests_sent()).collect();
    for (a, l) in after.iter().zip(&later) {
        assert!(
            (1..=4).contains(&(l - a)),
            "safety-net resync: {after:?} -> {later:?}"
        );
    }
    // The watch still brings a change at once: the toolstack closes the backend.
    let b = Sim::back_dir(1, 0, "0");
    s.d0.transact(|tx| {
        tx.write(&format!("{b}/online"), b"0")?;
        tx.write(&format!("{b}/state"), b"5")
    })
    .unwrap();
    s.run_until("both Closed", 30, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
}

#[test]
fn backend_initiated_close() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    assert!(s.close("dom0", &be_node(1, "0")));
    s.run_until("both Closed", 200, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    let fl = s.log("fe1", FE);
    assert_eq!(fl[fl.len() - 2..], ["other 5", "detach"]);
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
    assert_eq!(s.state(&Sim::back_dir(1, 0, "0")).as_deref(), Some("6"));
}

#[test]
fn toolstack_detach_online_0_and_closing() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    let b = Sim::back_dir(1, 0, "0");
    // xl block-detach: backend online=0, state=5.
    s.d0.transact(|tx| {
        tx.write(&format!("{b}/online"), b"0")?;
        tx.write(&format!("{b}/state"), b"5")
    })
    .unwrap();
    s.run_until("both Closed", 200, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    assert_eq!(s.closed("fe1", FE), Some(None));
    assert_eq!(s.closed("dom0", &be_node(1, "0")), Some(None));
    let f = Sim::front_dir(1, "0");
    assert_eq!(s.state(&f).as_deref(), Some("6"));
    assert_eq!(s.state(&b).as_deref(), Some("6"));
    // The nodes are left for the toolstack to remove.
    assert!(s.read(&format!("{f}/backend")).is_some());
    assert!(s.read(&format!("{b}/frontend")).is_some());
    // ... which then removes them; the buses forget the devices.
    s.d0.rm(&f).unwrap();
    s.d0.rm(&b).unwrap();
    s.run_until("devices forgotten", 100, |s| {
        s.status("fe1", FE).is_none() && s.status("dom0", &be_node(1, "0")).is_none()
    });
    // A new device with the same id starts afresh.
    s.add_device(1, 0, "0");
    let n = s.events.len();
    s.run_until("reconnected", 200, |s| {
        s.events[n..]
            .iter()
            .filter(|(_, e)| matches!(e, xen_bus::BusEvent::Connected { .. }))
            .count()
            == 2
    });
}

#[test]
fn dead_backend_fails_after_timeout_without_stalling_the_live_one() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.create_domain(2); // a driver domain that never runs a backend
    let c = cfg(1000);
    s.add_bus("dom0", 0, false, true, c);
    s.add_bus("fe1", 1, true, false, c);
    s.add_device(1, 2, "1"); // dead peer first
    s.add_device(1, 0, "0");
    s.run_until("live Connected, dead Closed", 300, |s| {
        s.connected("fe1", FE) && s.closed("fe1", "device/vdummy/1").is_some()
    });
    // The live device connected long before the dead one timed out.
    let pos = |s: &Sim, f: &dyn Fn(&xen_bus::BusEvent) -> bool| {
        s.events.iter().position(|(_, e)| f(e)).unwrap()
    };
    let conn = pos(
        &s,
        &|e| matches!(e, xen_bus::BusEvent::Connected { nodename } if nodename == FE),
    );
    let dead = pos(
        &s,
        &|e| matches!(e, xen_bus::BusEvent::Closed { nodename, .. } if nodename == "device/vdummy/1"),
    );
    assert!(conn < dead);
    let err = s.closed("fe1", "device/vdummy/1").unwrap().unwrap();
    assert_eq!(err.errno, xen_bus::errno::ETIMEDOUT);
    assert!(s.now >= std::time::Duration::from_millis(1000));
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/1/error", 110);
    assert_eq!(s.state(&Sim::front_dir(1, "1")).as_deref(), Some("6"));
    assert_eq!(s.state(&Sim::back_dir(1, 0, "0")).as_deref(), Some("4"));
    // The failed device is left alone afterwards; the live one stays Connected.
    s.rounds(50);
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("4"));
    assert_eq!(s.state(&Sim::front_dir(1, "1")).as_deref(), Some("6"));
}

#[test]
fn storage_domain_serves_a_third_domain_and_runs_a_frontend_on_the_same_bus() {
    let mut s = Sim::new();
    s.create_domain(1); // storage domain
    s.create_domain(3); // its client
    let c = BusConfig::default();
    s.add_bus("dom0", 0, false, true, c);
    s.add_bus("sd1", 1, true, true, c); // front and back at once
    s.add_bus("fe3", 3, true, false, c);
    s.add_device(1, 0, "5"); // the storage domain's own disk, from dom0
    s.add_device(3, 1, "0"); // dom3's disk, served by the storage domain
    s.run_until("all Connected", 300, |s| {
        s.connected("dom0", &be_node(1, "5"))
            && s.connected("sd1", "device/vdummy/5")
            && s.connected("sd1", &be_node(3, "0"))
            && s.connected("fe3", FE)
    });
    assert_eq!(s.state(&Sim::back_dir(3, 1, "0")).as_deref(), Some("4"));
    assert_eq!(s.state(&Sim::front_dir(3, "0")).as_deref(), Some("4"));
    let st = s.status("fe3", FE).unwrap();
    assert_eq!(st.info.backend_id, 1);
    assert_eq!(st.info.otherend, "/local/domain/1/backend/vdummy/3/0");
    let st = s.status("sd1", &be_node(3, "0")).unwrap();
    assert_eq!((st.info.frontend_id, st.info.backend_id), (3, 1));
}

#[test]
fn frontend_destroyed_mid_handshake_backend_closes_with_error() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("dom0", 0, false, true, BusConfig::default());
    s.add_device(1, 0, "0"); // dom1 never runs its frontend
    let b = Sim::back_dir(1, 0, "0");
    s.run_until("backend InitWait", 100, |s| {
        s.state(&b).as_deref() == Some("2")
    });
    s.xs.xenstored().destroy_domain(1).unwrap();
    s.run_until("backend Closed", 100, |s| {
        s.closed("dom0", &be_node(1, "0")).is_some()
    });
    let err = s.closed("dom0", &be_node(1, "0")).unwrap().unwrap();
    assert_eq!(err.errno, xen_bus::errno::ENODEV);
    assert_error_node(&mut s, "/local/domain/0/error/backend/vdummy/1/0/error", 19);
    assert_eq!(s.state(&b).as_deref(), Some("6"));
}

#[test]
fn backend_domain_destroyed_mid_handshake_frontend_closes_with_error() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.create_domain(2);
    s.set_front_opts(FE, FrontOpts::default());
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 2, "0");
    let f = Sim::front_dir(1, "0");
    s.rounds(5);
    assert_eq!(s.status("fe1", FE).unwrap().phase, Phase::AwaitPeer);
    s.xs.xenstored().destroy_domain(2).unwrap();
    s.run_until("frontend Closed", 100, |s| s.closed("fe1", FE).is_some());
    // The vanished node reads as ENOENT, or as EACCES to a guest (xenstored does not tell
    // an unprivileged domain whether a node it may not read exists).
    let errno = s.closed("fe1", FE).unwrap().unwrap().errno;
    assert!(errno == 19 || errno == 13, "{errno}");
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/0/error", errno);
    assert_eq!(s.state(&f).as_deref(), Some("6"));
}

#[test]
fn nonsense_state_from_the_frontend_fails_the_backend() {
    for bad in ["banana", "9", "", " 3", "-1", "3\n"] {
        let mut s = Sim::new();
        s.create_domain(1);
        s.add_bus("dom0", 0, false, true, BusConfig::default());
        s.add_device(1, 0, "0");
        let b = Sim::back_dir(1, 0, "0");
        s.run_until("backend InitWait", 100, |s| {
            s.state(&b).as_deref() == Some("2")
        });
        s.d0.write(&format!("{}/state", Sim::front_dir(1, "0")), bad.as_bytes())
            .unwrap();
        s.run_until("backend Closed", 100, |s| {
            s.closed("dom0", &be_node(1, "0")).is_some()
        });
        assert_eq!(
            s.closed("dom0", &be_node(1, "0")).unwrap().unwrap().errno,
            22
        );
        assert_error_node(&mut s, "/local/domain/0/error/backend/vdummy/1/0/error", 22);
        assert_eq!(s.state(&b).as_deref(), Some("6"), "{bad:?}");
    }
}

#[test]
fn nonsense_state_from_the_backend_fails_the_frontend() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 0, "0");
    s.rounds(5);
    s.d0.write(&format!("{}/state", Sim::back_dir(1, 0, "0")), b"42")
        .unwrap();
    s.run_until("frontend Closed", 100, |s| s.closed("fe1", FE).is_some());
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/0/error", 22);
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
}

#[test]
fn own_nodes_removed_under_the_frontend() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 0, "0");
    s.rounds(5);
    let f = Sim::front_dir(1, "0");
    s.d0.rm(&f).unwrap();
    s.run_until("frontend Closed", 100, |s| s.closed("fe1", FE).is_some());
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/0/error", 19);
    // The state node was not resurrected.
    assert_eq!(s.read(&f), None);
    assert_eq!(s.read(&format!("{f}/state")), None);
}

#[test]
fn peer_nodes_removed_under_the_backend_while_connected() {
    let mut s = pair(FrontOpts::default(), BusConfig::default());
    s.run_until("both Connected", 200, both_connected);
    let b = Sim::back_dir(1, 0, "0");
    s.buses.remove("fe1"); // the frontend's bus stops; its nodes go
    s.d0.rm(&Sim::front_dir(1, "0")).unwrap();
    s.run_until("backend Closed", 100, |s| {
        s.closed("dom0", &be_node(1, "0")).is_some()
    });
    assert_error_node(&mut s, "/local/domain/0/error/backend/vdummy/1/0/error", 19);
    assert_eq!(s.state(&b).as_deref(), Some("6"));
    let bl = s.log("dom0", &be_node(1, "0"));
    assert_eq!(bl.last().map(String::as_str), Some("detach"));
}

#[test]
fn revoked_permissions_fail_the_frontend_cleanly() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("fe1", 1, true, false, cfg(2000));
    s.add_device(1, 0, "0");
    s.rounds(5);
    // dom0 takes the frontend's access to its own state away.
    let f = Sim::front_dir(1, "0");
    s.d0.set_perms(&format!("{f}/state"), &common::perms(&[(Access::None, 0)]))
        .unwrap();
    s.run_until("frontend Closed", 200, |s| s.closed("fe1", FE).is_some());
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/0/error", 13);
    // It could not write its state; the node keeps what it had.
    assert_eq!(s.state(&f).as_deref(), Some("1"));
    s.rounds(20); // no spinning, no panics
}

#[test]
fn revoked_read_access_to_the_frontend_fails_the_driver_domain_backend() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.create_domain(2);
    s.add_bus("be2", 2, false, true, cfg(2000));
    s.add_device(1, 2, "0");
    let b = Sim::back_dir(1, 2, "0");
    s.run_until("backend InitWait", 100, |s| {
        s.state(&b).as_deref() == Some("2")
    });
    let f = Sim::front_dir(1, "0");
    s.d0.set_perms(&f, &common::perms(&[(Access::None, 1)]))
        .unwrap();
    s.d0.set_perms(&format!("{f}/state"), &common::perms(&[(Access::None, 1)]))
        .unwrap();
    s.run_until("backend Closed", 200, |s| {
        s.closed("be2", &be_node(1, "0")).is_some()
    });
    assert_error_node(&mut s, "/local/domain/2/error/backend/vdummy/1/0/error", 13);
    assert_eq!(s.state(&b).as_deref(), Some("6"));
}

#[test]
fn bad_other_end_details_are_rejected() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.add_device(1, 0, "0");
    // Before the bus looks: point the frontend at someone else's node.
    s.d0.write(
        &format!("{}/backend", Sim::front_dir(1, "0")),
        b"/local/domain/0/backend/vdummy/2/0",
    )
    .unwrap();
    s.run_until("frontend Closed", 50, |s| s.closed("fe1", FE).is_some());
    assert_error_node(&mut s, "/local/domain/1/error/device/vdummy/0/error", 22);
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
    assert!(
        s.log("fe1", FE).is_empty(),
        "no driver for a rejected device"
    );
}

#[test]
fn devices_not_in_initialising_are_not_adopted() {
    let mut s = Sim::new();
    s.create_domain(1);
    s.add_device(1, 0, "0");
    s.d0.write(&format!("{}/state", Sim::front_dir(1, "0")), b"6")
        .unwrap();
    s.add_bus("fe1", 1, true, false, BusConfig::default());
    s.rounds(10);
    assert!(s.status("fe1", FE).is_none());
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
}

#[test]
fn handshake_timeout_when_the_frontend_never_initialises() {
    let opts = FrontOpts {
        stall_initialise: true,
        ..FrontOpts::default()
    };
    let mut s = pair(opts, cfg(500));
    s.run_until("both Closed", 300, |s| {
        s.closed("fe1", FE).is_some() && s.closed("dom0", &be_node(1, "0")).is_some()
    });
    // The backend, waiting for Initialised, times out first: its error is published in its
    // own home (dom0); the frontend sees it close and closes in order.
    assert_eq!(
        s.closed("dom0", &be_node(1, "0")).unwrap().unwrap().errno,
        110
    );
    assert_error_node(
        &mut s,
        "/local/domain/0/error/backend/vdummy/1/0/error",
        110,
    );
    assert_eq!(s.closed("fe1", FE), Some(None));
    assert_eq!(s.state(&Sim::front_dir(1, "0")).as_deref(), Some("6"));
    assert_eq!(s.state(&Sim::back_dir(1, 0, "0")).as_deref(), Some("6"));
}
