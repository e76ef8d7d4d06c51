//! The toolstack against our xenstored: what `xl create`, block-attach/-detach, shutdown,
//! reboot and destroy leave in XenStore, node by node and permission by permission, as
//! `docs/XENSTORE-LAYOUT.md` records them from real Xen 4.17; and the waits, against
//! scripted peers (threads playing a guest, a frontend, a backend) and against nobody.

use std::thread;
use std::time::{Duration, Instant};

use xen_platform::{Scheduler, ShutdownReason};
use xen_store::client::{Store, XsClientError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::{DomId, XsError};
use xen_toolstack::{
    DetachOptions, Device, DeviceSpec, DomainConfig, Error, Timeouts, Toolstack, Vbd,
};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

fn ts() -> Toolstack {
    Toolstack::new().expect("start the toolstack")
}

fn p(entries: &[(Access, DomId)]) -> Perms {
    Perms::from_vec(entries.iter().map(|&(a, d)| Perm::new(a, d)).collect()).unwrap()
}

/// `(nO,rR)`-style shorthand: owner, then readers.
fn own(owner: DomId, readers: &[DomId]) -> Perms {
    let mut v = vec![(Access::None, owner)];
    v.extend(readers.iter().map(|&r| (Access::Read, r)));
    p(&v)
}

#[track_caller]
fn check(ts: &Toolstack, path: &str, value: Option<&str>, perms: &Perms) {
    ts.with_xs(|xs| {
        let got = xs
            .get_perms(path)
            .unwrap_or_else(|e| panic!("get_perms {path}: {e}"));
        assert_eq!(&got, perms, "permissions of {path}");
        if let Some(v) = value {
            let got = xs
                .read_string(path)
                .unwrap_or_else(|e| panic!("read {path}: {e}"));
            assert_eq!(got, v, "value of {path}");
        }
    });
}

#[track_caller]
fn absent(ts: &Toolstack, path: &str) {
    ts.with_xs(|xs| assert!(!xs.exists(path).unwrap(), "{path} should be gone"));
}

#[track_caller]
fn read(ts: &Toolstack, path: &str) -> String {
    ts.with_xs(|xs| xs.read_string(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn children(ts: &Toolstack, path: &str) -> Vec<String> {
    let mut v = ts.with_xs(|xs| xs.directory(path)).unwrap();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn create_writes_the_libxl_layout_with_its_permissions() {
    let ts = ts();
    let g = ts
        .create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let n = g.domid();
    assert_eq!(n, 1);
    let dom = "/local/domain/1";
    let ro = own(0, &[1]);
    let rw = own(1, &[]);
    check(&ts, dom, Some(""), &ro);
    check(&ts, &format!("{dom}/name"), Some("guest"), &ro);
    check(&ts, &format!("{dom}/domid"), Some("1"), &ro);
    let vm = format!("/vm/{}", g.uuid());
    check(&ts, &format!("{dom}/vm"), Some(&vm), &ro);
    check(
        &ts,
        &format!("{dom}/cpu/0/availability"),
        Some("online"),
        &ro,
    );
    check(
        &ts,
        &format!("{dom}/memory/static-max"),
        Some("131072"),
        &ro,
    );
    check(&ts, &format!("{dom}/memory/target"), Some("131072"), &ro);
    check(&ts, &format!("{dom}/memory/videoram"), Some("0"), &ro);
    check(
        &ts,
        &format!("{dom}/store/port"),
        Some(&g.store_port().to_string()),
        &ro,
    );
    check(
        &ts,
        &format!("{dom}/store/ring-ref"),
        Some(&g.store_frame().to_string()),
        &ro,
    );
    for k in ["backend-id", "limit", "type", "output", "tty"] {
        check(&ts, &format!("{dom}/console/{k}"), None, &ro);
    }
    check(
        &ts,
        &format!("{dom}/console/type"),
        Some("xenconsoled"),
        &ro,
    );
    for k in [
        "platform-feature-multiprocessor-suspend",
        "platform-feature-xs_reset_watches",
    ] {
        check(&ts, &format!("{dom}/control/{k}"), Some("1"), &ro);
    }
    for k in [
        "control/shutdown",
        "control/feature-poweroff",
        "control/feature-reboot",
        "control/feature-suspend",
        "control/sysrq",
        "data",
        "drivers",
        "feature",
        "attr",
        "error",
        "device/suspend/event-channel",
    ] {
        check(&ts, &format!("{dom}/{k}"), Some(""), &rw);
    }
    check(&ts, &format!("{dom}/control"), None, &ro);
    check(&ts, &format!("{dom}/device"), None, &ro);
    check(&ts, &format!("{dom}/device/suspend"), None, &ro);
    // Not a driver domain.
    absent(&ts, &format!("{dom}/libxl"));
    absent(&ts, &format!("{dom}/device-model"));
    assert_eq!(
        children(&ts, dom),
        sorted(&[
            "vm", "name", "control", "data", "drivers", "feature", "attr", "error", "device",
            "memory", "domid", "store", "cpu", "console",
        ])
    );
    // libxl's own trees.
    check(&ts, &vm, Some(""), &ro);
    check(&ts, &format!("{vm}/uuid"), Some(g.uuid()), &ro);
    check(&ts, &format!("{vm}/name"), Some("guest"), &ro);
    check(&ts, "/libxl/1", Some(""), &own(0, &[]));
    check(&ts, "/libxl/1/device", Some(""), &own(0, &[]));
    check(&ts, "/libxl/1/type", Some("pv"), &own(0, &[]));
    // Dom0's home, as xen-init-dom0 writes it.
    assert_eq!(read(&ts, "/local/domain/0/name"), "Domain-0");
    assert_eq!(read(&ts, "/local/domain/0/domid"), "0");
    // The guest is introduced and its ring works.
    let mut xs = g.xs_client().unwrap();
    assert_eq!(xs.read_string("name").unwrap(), "guest");
    assert_eq!(xs.get_domain_path(1).unwrap().as_str(), dom);
}

#[test]
fn a_driver_domain_gets_libxl_and_device_model_and_names_are_unique() {
    let ts = ts();
    let dd = ts
        .create_domain("storage", DomainConfig::with_domid(1).driver_domain())
        .unwrap();
    for k in ["libxl", "device-model"] {
        check(&ts, &format!("/local/domain/1/{k}"), Some(""), &own(1, &[]));
    }
    assert!(matches!(
        ts.create_domain("storage", DomainConfig::default()),
        Err(Error::NameInUse(_))
    ));
    // Sequential domids skip the chosen one.
    let other = ts.create_domain("other", DomainConfig::default()).unwrap();
    assert_ne!(other.domid(), dd.domid());
    assert_eq!(read(&ts, &format!("{}/name", other.dom_path())), "other");
    assert!(other.xs_client().is_ok());
    assert!(matches!(other.xs_client(), Err(Error::AlreadyTaken)));
}

#[test]
fn the_guest_writes_data_and_control_shutdown_but_not_name() {
    let ts = ts();
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let mut xs = g.xs_client().unwrap();
    xs.write("data/hello", b"world").unwrap();
    xs.write("control/shutdown", b"").unwrap();
    xs.write("control/feature-poweroff", b"1").unwrap();
    xs.write("device/suspend/event-channel", b"7").unwrap();
    for k in [
        "name",
        "domid",
        "memory/target",
        "control/platform-feature-xs_reset_watches",
    ] {
        assert_eq!(
            xs.write(k, b"evil"),
            Err(XsClientError::Xs(XsError::Eacces)),
            "{k}"
        );
    }
    // Nor can it create nodes in its home directly.
    assert_eq!(
        xs.write("newnode", b"x"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    // But it reads what dom0 wrote for it.
    assert_eq!(xs.read_string("memory/static-max").unwrap(), "131072");
    assert_eq!(read(&ts, &format!("{}/data/hello", g.dom_path())), "world");
    // Another guest sees none of it.
    let h = ts.create_domain("other", DomainConfig::default()).unwrap();
    let mut hx = h.xs_client().unwrap();
    assert_eq!(
        hx.read(&format!("{}/name", g.dom_path())),
        Err(XsClientError::Xs(XsError::Eacces))
    );
}

const FE_KEYS: &[(&str, &str)] = &[
    ("backend-id", "0"),
    ("state", "1"),
    ("virtual-device", "51712"),
    ("device-type", "disk"),
    ("trusted", "1"),
    ("protocol", "x86_64-abi"),
];

fn be_keys(fe: DomId) -> Vec<(&'static str, String)> {
    vec![
        ("params", "/root/disk.img".into()),
        ("script", "/etc/xen/scripts/block".into()),
        ("frontend-id", fe.to_string()),
        ("online", "1".into()),
        ("removable", "0".into()),
        ("bootable", "1".into()),
        ("state", "1".into()),
        ("dev", "xvda".into()),
        ("type", "phy".into()),
        ("mode", "w".into()),
        ("device-type", "disk".into()),
        ("discard-enable", "1".into()),
        ("specification", "xen".into()),
    ]
}

/// Every frontend and backend key with its value and permissions, and nothing else.
#[track_caller]
fn check_vbd(ts: &Toolstack, dev: &Device) {
    let (fe, be) = (dev.frontend, dev.backend);
    let (fp, bp) = (dev.frontend_path(), dev.backend_path());
    let fperms = own(fe, &[be]);
    let bperms = own(be, &[fe]);
    check(ts, &fp, Some(""), &fperms);
    check(ts, &format!("{fp}/backend"), Some(&bp), &fperms);
    let mut names = vec!["backend"];
    for (k, v) in FE_KEYS {
        let v = if *k == "backend-id" {
            be.to_string()
        } else {
            v.to_string()
        };
        check(ts, &format!("{fp}/{k}"), Some(&v), &fperms);
        names.push(k);
    }
    assert_eq!(children(ts, &fp), sorted(&names));
    check(ts, &bp, Some(""), &bperms);
    check(ts, &format!("{bp}/frontend"), Some(&fp), &bperms);
    let keys = be_keys(fe);
    let mut names = vec!["frontend"];
    for (k, v) in &keys {
        check(ts, &format!("{bp}/{k}"), Some(v), &bperms);
        names.push(k);
    }
    assert_eq!(children(ts, &bp), sorted(&names));
    // libxl's copy of the backend keys, dom0's alone.
    let lp = dev.libxl_path();
    check(ts, &lp, None, &own(0, &[]));
    for (k, v) in &keys {
        check(ts, &format!("{lp}/{k}"), Some(v), &own(0, &[]));
    }
}

#[test]
fn add_vbd_with_a_dom0_backend_writes_both_sets_with_exact_permissions() {
    let ts = ts();
    let g = ts
        .create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let dev = ts
        .add_vbd(&Vbd::new(1, 0, "xvda", "/root/disk.img"))
        .unwrap();
    assert_eq!(dev.devid, 51712);
    assert_eq!(dev.frontend_path(), "/local/domain/1/device/vbd/51712");
    assert_eq!(dev.backend_path(), "/local/domain/0/backend/vbd/1/51712");
    check_vbd(&ts, &dev);
    // Parents created on the way inherit: the frontend's from the guest's home.
    check(&ts, "/local/domain/1/device/vbd", None, &own(0, &[1]));
    check(&ts, "/local/domain/0/backend/vbd/1", None, &own(0, &[]));
    assert_eq!(ts.device("vbd", 1, 51712).unwrap(), dev);
    assert_eq!(ts.devices(1).unwrap(), vec![dev.clone()]);

    // The frontend reads the backend directory and cannot write it.
    let mut xs = g.xs_client().unwrap();
    let bp = dev.backend_path();
    assert_eq!(
        xs.read_string(&format!("{bp}/params")).unwrap(),
        "/root/disk.img"
    );
    assert_eq!(
        xs.write(&format!("{bp}/state"), b"4"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    assert_eq!(
        xs.write(&format!("{bp}/new"), b"x"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    // It writes its own frontend keys.
    xs.write("device/vbd/51712/state", b"3").unwrap();
    xs.write("device/vbd/51712/ring-ref", b"8").unwrap();
    // ... but not libxl's copy.
    assert_eq!(
        xs.read(&format!("{}/params", dev.libxl_path())),
        Err(XsClientError::Xs(XsError::Eacces))
    );

    // xvdb by block-attach: 51728.
    let d2 = ts
        .add_vbd(&Vbd::new(1, 0, "xvdb", "/root/b.img").read_only())
        .unwrap();
    assert_eq!(d2.devid, 51728);
    assert_eq!(read(&ts, &format!("{}/mode", d2.backend_path())), "r");
    assert!(matches!(
        ts.add_vbd(&Vbd::new(1, 0, "xvd", "x")),
        Err(Error::BadVdev(_))
    ));
}

#[test]
fn add_vbd_with_a_driver_domain_backend() {
    let ts = ts();
    let dd = ts
        .create_domain("storage", DomainConfig::with_domid(1).driver_domain())
        .unwrap();
    let fe = ts
        .create_domain("guest", DomainConfig::with_domid(3))
        .unwrap();
    let dev = ts
        .add_vbd(&Vbd::new(3, 1, "xvda", "/root/disk.img"))
        .unwrap();
    assert_eq!(dev.backend_path(), "/local/domain/1/backend/vbd/3/51712");
    check_vbd(&ts, &dev);
    assert_eq!(
        read(&ts, &format!("{}/backend-id", dev.frontend_path())),
        "1"
    );
    // The parents of the backend directory: dom0's, readable by the driver domain.
    for p in ["backend", "backend/vbd", "backend/vbd/3"] {
        check(&ts, &format!("/local/domain/1/{p}"), None, &own(0, &[1]));
    }
    // Nothing in dom0's backend tree.
    absent(&ts, "/local/domain/0/backend");

    // The driver domain reads its frontend's directory and drives its backend's state.
    let mut dx = dd.xs_client().unwrap();
    let fp = dev.frontend_path();
    assert_eq!(
        dx.read_string(&format!("{fp}/virtual-device")).unwrap(),
        "51712"
    );
    assert_eq!(
        dx.write(&format!("{fp}/state"), b"4"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    dx.write("backend/vbd/3/51712/state", b"2").unwrap();
    dx.write("backend/vbd/3/51712/sectors", b"32768").unwrap();
    // The frontend domain reads the backend directory and cannot write it.
    let mut fx = fe.xs_client().unwrap();
    let bp = dev.backend_path();
    assert_eq!(fx.read_string(&format!("{bp}/state")).unwrap(), "2");
    assert_eq!(fx.read_string(&format!("{bp}/sectors")).unwrap(), "32768");
    assert_eq!(
        fx.write(&format!("{bp}/state"), b"6"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    // Nor the parents.
    assert_eq!(
        fx.directory("/local/domain/1/backend/vbd"),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    // A third domain sees nothing of the device.
    let third = ts
        .create_domain("third", DomainConfig::with_domid(4))
        .unwrap();
    let mut tx = third.xs_client().unwrap();
    assert_eq!(
        tx.read(&format!("{bp}/params")),
        Err(XsClientError::Xs(XsError::Eacces))
    );
    assert_eq!(
        tx.read(&format!("{fp}/backend")),
        Err(XsClientError::Xs(XsError::Eacces))
    );
}

/// As libxl does on Xen 4.17 (seen in the lab with `backendtype=qdisk`): the backend lives
/// under `backend/qdisk`, `params` is `aio:<target>`, there is no hotplug `script`, and the
/// frontend (still `device/vbd`) names that backend; the toolstack finds the device again.
#[test]
fn a_qdisk_vbd_is_served_from_backend_qdisk() {
    let ts = ts();
    ts.create_domain("guest", DomainConfig::with_domid(3))
        .unwrap();
    let mut vbd = Vbd::new(3, 0, "xvda", "/tmp/disk.img");
    vbd.backendtype = "qdisk".into();
    let dev = ts.add_vbd(&vbd).unwrap();
    assert_eq!(dev.backend_path(), "/local/domain/0/backend/qdisk/3/51712");
    assert_eq!(dev.frontend_path(), "/local/domain/3/device/vbd/51712");
    let bp = dev.backend_path();
    assert_eq!(read(&ts, &format!("{bp}/params")), "aio:/tmp/disk.img");
    assert_eq!(read(&ts, &format!("{bp}/type")), "qdisk");
    absent(&ts, &format!("{bp}/script"));
    absent(&ts, "/local/domain/0/backend/vbd");
    assert_eq!(read(&ts, &format!("{}/backend", dev.frontend_path())), bp);
    assert_eq!(ts.device("vbd", 3, 51712).unwrap(), dev);
}

#[test]
fn a_generic_device_class_has_the_same_shape() {
    let ts = ts();
    ts.create_domain("fe", DomainConfig::with_domid(2)).unwrap();
    ts.create_domain("be", DomainConfig::with_domid(5).driver_domain())
        .unwrap();
    let spec = DeviceSpec::new("dummy", 2, 5, 7)
        .frontend_key("ring-size", "1")
        .backend_key("feature-x", "1");
    let dev = ts.add_device(&spec).unwrap();
    assert_eq!(dev.frontend_path(), "/local/domain/2/device/dummy/7");
    assert_eq!(dev.backend_path(), "/local/domain/5/backend/dummy/2/7");
    let fperms = own(2, &[5]);
    let bperms = own(5, &[2]);
    for (k, v) in [
        ("backend", dev.backend_path()),
        ("backend-id", "5".into()),
        ("state", "1".into()),
        ("ring-size", "1".into()),
    ] {
        check(
            &ts,
            &format!("{}/{k}", dev.frontend_path()),
            Some(&v),
            &fperms,
        );
    }
    for (k, v) in [
        ("frontend", dev.frontend_path()),
        ("frontend-id", "2".into()),
        ("online", "1".into()),
        ("state", "1".into()),
        ("feature-x", "1".into()),
    ] {
        check(
            &ts,
            &format!("{}/{k}", dev.backend_path()),
            Some(&v),
            &bperms,
        );
    }
    check(&ts, "/local/domain/5/backend/dummy/2", None, &own(0, &[5]));
    check(
        &ts,
        &format!("{}/feature-x", dev.libxl_path()),
        Some("1"),
        &own(0, &[]),
    );
    // Removal with a peer that closes at once (a dom0 thread plays both ends) and, in the
    // driver domain's part, removes the backend directory once Closed with online = 0.
    let t = ts.socket();
    let (fs, bs, bdir, online) = (
        format!("{}/state", dev.frontend_path()),
        format!("{}/state", dev.backend_path()),
        dev.backend_path(),
        format!("{}/online", dev.backend_path()),
    );
    let peer = thread::spawn(move || {
        let mut c =
            xen_store::client::Client::new(xen_store_host::UnixTransport::connect(t).unwrap());
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if c.read_string(&bs).ok().as_deref() == Some("5") {
                assert_eq!(c.read_string(&online).unwrap(), "0");
                c.write(&fs, b"6").unwrap();
                c.write(&bs, b"6").unwrap();
                // libxl waits for Closed, then for the backend directory to go.
                thread::sleep(Duration::from_millis(50));
                assert_eq!(
                    c.read_string(&fs).unwrap(),
                    "6",
                    "removed before the driver domain's part"
                );
                c.rm(&bdir).unwrap();
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!("no Closing");
    });
    ts.remove_device(&dev).unwrap();
    peer.join().unwrap();
    absent(&ts, &dev.frontend_path());
    absent(&ts, &dev.backend_path());
    absent(&ts, &dev.libxl_path());
    // Emptied parents go too (libxl__xs_path_cleanup), up to a node with other children;
    // a driver domain's backend parents are left (dom0 never cleans the backend path there).
    assert!(ts
        .with_xs(|xs| xs.exists("/local/domain/5/backend/dummy/2"))
        .unwrap());
    absent(&ts, "/local/domain/2/device/dummy");
    assert!(ts
        .with_xs(|xs| xs.exists("/local/domain/2/device/suspend"))
        .unwrap());
    // libxl's tree: its emptied `device` goes as well (libxl does the same), `/libxl/2` stays.
    absent(&ts, "/libxl/2/device");
    assert_eq!(read(&ts, "/libxl/2/type"), "pv");
}

/// A frontend guest (over its own ring) and a dom0 backend that answer Closing as Linux does:
/// the frontend goes to Closed, then the backend. Returns what each saw.
#[test]
fn block_detach_against_a_scripted_peer_removes_everything() {
    let ts = ts();
    let g = ts
        .create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let keep = ts.add_vbd(&Vbd::new(1, 0, "xvda", "/root/a.img")).unwrap();
    let dev = ts.add_vbd(&Vbd::new(1, 0, "xvdb", "/root/b.img")).unwrap();
    assert_eq!(dev.devid, 51728);
    let mut fx = g.xs_client().unwrap();
    let bp = dev.backend_path();
    let mut dom0 = ts.dom0_client().unwrap();
    // Connected first, as after a real attach.
    dom0.write(&format!("{bp}/state"), b"4").unwrap();
    fx.write("device/vbd/51728/state", b"4").unwrap();

    let fe_bp = bp.clone();
    let frontend = thread::spawn(move || {
        fx.watch(&format!("{fe_bp}/state"), "be").unwrap();
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if fx.read_string(&format!("{fe_bp}/state")).unwrap() == "5" {
                assert_eq!(fx.read_string(&format!("{fe_bp}/online")).unwrap(), "0");
                fx.write("device/vbd/51728/state", b"5").unwrap();
                fx.write("device/vbd/51728/state", b"6").unwrap();
                return;
            }
            let _ = fx.next_watch_event(Some("be"), Duration::from_millis(50));
        }
        panic!("the frontend never saw Closing");
    });
    let be_fp = dev.frontend_path();
    let be_bp = bp.clone();
    let backend = thread::spawn(move || {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if dom0.try_read(&format!("{be_fp}/state")).unwrap().as_deref() == Some(b"6") {
                dom0.write(&format!("{be_bp}/state"), b"6").unwrap();
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!("the backend never saw the frontend Closed");
    });
    ts.block_detach(1, "xvdb").unwrap();
    frontend.join().unwrap();
    backend.join().unwrap();
    absent(&ts, &dev.frontend_path());
    absent(&ts, &dev.libxl_path());
    absent(&ts, &bp);
    // The other disk is untouched.
    check_vbd_present(&ts, &keep);
    assert_eq!(ts.devices(1).unwrap(), vec![keep]);
}

#[track_caller]
fn check_vbd_present(ts: &Toolstack, dev: &Device) {
    for p in [dev.frontend_path(), dev.backend_path(), dev.libxl_path()] {
        assert!(ts.with_xs(|xs| xs.exists(&p)).unwrap(), "{p}");
    }
}

#[test]
fn block_detach_without_a_peer_times_out_and_force_cleans_up() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(SHORT));
    ts.create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let dev = ts.add_vbd(&Vbd::new(1, 0, "xvda", "/root/a.img")).unwrap();
    let t0 = Instant::now();
    let e = ts.block_detach(1, "xvda").unwrap_err();
    assert!(
        t0.elapsed() >= SHORT && t0.elapsed() < LONG,
        "{:?}",
        t0.elapsed()
    );
    match &e {
        Error::DeviceRemoveTimeout {
            backend_path,
            frontend_state,
            backend_state,
            cleaned_up,
        } => {
            assert_eq!(backend_path, &dev.backend_path());
            assert_eq!(*frontend_state, Some(1));
            assert_eq!(*backend_state, Some(5));
            assert!(!cleaned_up);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "unable to remove device with path /local/domain/0/backend/vbd/1/51712"
    );
    // What libxl wrote stays for inspection.
    assert_eq!(read(&ts, &format!("{}/state", dev.backend_path())), "5");
    assert_eq!(read(&ts, &format!("{}/online", dev.backend_path())), "0");
    check_vbd_present(&ts, &dev);

    // Forced: the same error, and the nodes go.
    let opts = DetachOptions {
        force: true,
        ..ts.detach_options()
    };
    // The backend is Closing already: libxl writes online=0 and Closing again.
    ts.with_xs(|xs| xs.write(&format!("{}/state", dev.backend_path()), b"4"))
        .unwrap();
    match ts.remove_device_with(&dev, opts) {
        Err(Error::DeviceRemoveTimeout { cleaned_up, .. }) => assert!(cleaned_up),
        other => panic!("{other:?}"),
    }
    absent(&ts, &dev.frontend_path());
    absent(&ts, &dev.backend_path());
    absent(&ts, &dev.libxl_path());
    absent(&ts, "/local/domain/0/backend");
    // A device already gone: NoSuchDevice.
    assert!(matches!(
        ts.block_detach(1, "xvda"),
        Err(Error::NoSuchDevice(_))
    ));
}

/// libxl in dom0 leaves a driver domain's backend directory to the driver domain and waits
/// for it (seen in the lab: "timed out while waiting for /local/domain/18/backend/vbd/19/51712
/// to be removed" against a storage domain that did not remove it).
#[test]
fn a_driver_domain_that_keeps_its_backend_directory_times_the_detach_out() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(SHORT));
    ts.create_domain("storage", DomainConfig::with_domid(2).driver_domain())
        .unwrap();
    ts.create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let dev = ts.add_vbd(&Vbd::new(1, 2, "xvda", "/root/a.img")).unwrap();
    // Both ends already Closed: libxl writes online = 0 only, then waits for the directory.
    for p in [dev.frontend_path(), dev.backend_path()] {
        ts.with_xs(|xs| xs.write(&format!("{p}/state"), b"6"))
            .unwrap();
    }
    let t0 = Instant::now();
    let e = ts.block_detach(1, "xvda").unwrap_err();
    assert!(t0.elapsed() >= SHORT, "{:?}", t0.elapsed());
    assert_eq!(
        e.to_string(),
        "timed out while waiting for /local/domain/2/backend/vbd/1/51712 to be removed"
    );
    assert_eq!(read(&ts, &format!("{}/online", dev.backend_path())), "0");
    assert_eq!(read(&ts, &format!("{}/state", dev.backend_path())), "6");
    // The frontend's and libxl's nodes go all the same.
    absent(&ts, &dev.frontend_path());
    absent(&ts, &dev.libxl_path());
}

#[test]
fn detaching_a_closed_backend_does_not_wait() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(LONG));
    ts.create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    let dev = ts.add_vbd(&Vbd::new(1, 0, "xvda", "/root/a.img")).unwrap();
    ts.with_xs(|xs| xs.write(&format!("{}/state", dev.backend_path()), b"6"))
        .unwrap();
    let t0 = Instant::now();
    ts.remove_device(&dev).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    absent(&ts, &dev.frontend_path());
    absent(&ts, &dev.backend_path());
}

/// A guest that does what Linux and our control driver do: watch `control/shutdown`,
/// acknowledge by writing "", then shut down with the matching reason.
fn scripted_guest(g: &xen_toolstack::Guest) -> thread::JoinHandle<String> {
    let mut xs = g.xs_client().unwrap();
    let dom = g.domain().clone();
    thread::spawn(move || {
        xs.write("control/feature-poweroff", b"1").unwrap();
        xs.write("control/feature-reboot", b"1").unwrap();
        xs.watch("control/shutdown", "ctl").unwrap();
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            let v = xs.read_string("control/shutdown").unwrap();
            let reason = match v.as_str() {
                "poweroff" => Some(ShutdownReason::Poweroff),
                "reboot" => Some(ShutdownReason::Reboot),
                _ => None,
            };
            if let Some(r) = reason {
                xs.write("control/shutdown", b"").unwrap();
                dom.shutdown(r).unwrap();
                return v;
            }
            let _ = xs.next_watch_event(Some("ctl"), Duration::from_millis(100));
        }
        panic!("no control request");
    })
}

#[test]
fn shutdown_against_a_guest_that_acknowledges() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(LONG));
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let guest = scripted_guest(&g);
    ts.shutdown(g.domid()).unwrap();
    assert_eq!(guest.join().unwrap(), "poweroff");
    assert_eq!(g.domain().shutdown_reason(), Some(ShutdownReason::Poweroff));
    // Acknowledged by clearing, not removing.
    assert_eq!(read(&ts, &format!("{}/control/shutdown", g.dom_path())), "");
    // Shut down, not destroyed: that is xl's next step.
    assert!(g.domain().is_alive());
    ts.destroy(g.domid()).unwrap();
    assert!(!g.domain().is_alive());
}

#[test]
fn reboot_against_a_guest_that_acknowledges() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(LONG));
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let guest = scripted_guest(&g);
    ts.reboot(g.domid()).unwrap();
    assert_eq!(guest.join().unwrap(), "reboot");
    assert_eq!(g.domain().shutdown_reason(), Some(ShutdownReason::Reboot));
}

#[test]
fn a_guest_that_never_acknowledges_times_out_like_libxl() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(SHORT));
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let _xs = g.xs_client().unwrap(); // connected, but deaf
    let t0 = Instant::now();
    let e = ts.shutdown(g.domid()).unwrap_err();
    assert!(t0.elapsed() >= SHORT && t0.elapsed() < LONG);
    assert!(
        matches!(&e, Error::GuestDidntAcknowledge { cmd, rc: -9, .. } if cmd == "poweroff"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "guest didn't acknowledge control request: -9"
    );
    assert_eq!(
        read(&ts, &format!("{}/control/shutdown", g.dom_path())),
        "poweroff"
    );
    assert_eq!(g.domain().shutdown_reason(), None);
    assert!(matches!(ts.shutdown(77), Err(Error::NoSuchDomain(77))));
}

#[test]
fn a_guest_that_acknowledges_but_never_shuts_down() {
    let ts = ts();
    ts.set_timeouts(Timeouts::all(SHORT));
    let g = ts.create_domain("guest", DomainConfig::default()).unwrap();
    let mut xs = g.xs_client().unwrap();
    let path = format!("{}/control/shutdown", g.dom_path());
    let acker = thread::spawn(move || {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if xs.read_string("control/shutdown").unwrap() == "poweroff" {
                xs.write("control/shutdown", b"").unwrap();
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    let e = ts.shutdown(g.domid()).unwrap_err();
    acker.join().unwrap();
    assert!(
        matches!(
            e,
            Error::ShutdownTimeout {
                expected: ShutdownReason::Poweroff,
                got: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(read(&ts, &path), "");
}

#[test]
fn destroy_removes_the_domain_its_devices_and_libxl_state() {
    let ts = ts();
    let dd = ts
        .create_domain("storage", DomainConfig::with_domid(1).driver_domain())
        .unwrap();
    let g = ts
        .create_domain("guest", DomainConfig::with_domid(2))
        .unwrap();
    let d0 = ts.add_vbd(&Vbd::new(2, 0, "xvda", "/root/a.img")).unwrap();
    let d1 = ts.add_vbd(&Vbd::new(2, 1, "xvdb", "/root/b.img")).unwrap();
    let vm = format!("/vm/{}", g.uuid());
    ts.destroy(2).unwrap();
    assert!(!g.domain().is_alive());
    for p in [
        d0.backend_path(),
        d1.backend_path(),
        "/local/domain/2".into(),
        "/libxl/2".into(),
        vm,
        "/local/domain/0/backend".into(),
        "/local/domain/1/backend".into(),
    ] {
        absent(&ts, &p);
    }
    // The driver domain is untouched.
    assert_eq!(read(&ts, "/local/domain/1/name"), "storage");
    assert!(dd.domain().is_alive());
    assert!(matches!(ts.destroy(2), Err(Error::NoSuchDomain(2))));
    // The name is free again.
    ts.create_domain("guest", DomainConfig::default()).unwrap();
}

#[test]
fn attach_waits_for_init_wait_then_plays_the_hotplug_script() {
    let ts = ts();
    ts.create_domain("guest", DomainConfig::with_domid(1))
        .unwrap();
    ts.create_domain("storage", DomainConfig::with_domid(2).driver_domain())
        .unwrap();
    // Nobody answers: the add times out, the nodes stay.
    let e = ts
        .attach_vbd(&Vbd::new(1, 0, "xvda", "/root/a.img"), SHORT)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::DeviceAddTimeout {
                backend_state: Some(1),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "unable to add device with path /local/domain/0/backend/vbd/1/51712"
    );
    // A backend that reaches InitWait: dom0's gets hotplug-status, a driver domain's not.
    for (be, vdev) in [(0, "xvdb"), (2, "xvdc")] {
        let vbd = Vbd::new(1, be, vdev, "/root/b.img");
        let bp = vbd.spec().unwrap().device.backend_path();
        let t = ts.socket();
        let peer = thread::spawn(move || {
            let mut c =
                xen_store::client::Client::new(xen_store_host::UnixTransport::connect(t).unwrap());
            let deadline = Instant::now() + LONG;
            while Instant::now() < deadline {
                if c.read_string(&format!("{bp}/state")).ok().as_deref() == Some("1") {
                    c.write(&format!("{bp}/state"), b"2").unwrap();
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        let dev = ts.attach_vbd(&vbd, LONG).unwrap();
        peer.join().unwrap();
        let hs = ts
            .with_xs(|xs| xs.try_read(&format!("{}/hotplug-status", dev.backend_path())))
            .unwrap();
        assert_eq!(
            hs.as_deref(),
            (be == 0).then_some(&b"connected"[..]),
            "be {be}"
        );
    }
}

#[test]
fn the_toolstack_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Toolstack>();
    send_sync::<xen_toolstack::Guest>();
}
