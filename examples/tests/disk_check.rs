//! The blk-app image's disk check (`xenolith_apps::disk_check`) through the real code path on
//! the simulator: the guest's blkfront ↔ the storage-domain loop's blkback ↔ a RAM disk whose
//! first MiB holds the toolstack's pattern, as dom0 writes it in the Xen lab.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xen_blk::front::{Blkfront, BlockDevice, WaitMode};
use xen_blk::storage::{MemDisk, Storage};
use xen_bus::{Bus, BusConfig};
use xen_platform::Clock;
use xen_toolstack::{DomainConfig, Toolstack, Vbd};
use xenolith_apps::disk_check::{
    app_label, disk_check, dom0_label, pattern_unit, DiskCheck, DiskReport, UNIT,
};

const DISK_MIB: u64 = 16;

/// Run the check against a RAM disk prepared by `prepare`; returns the report (or the error)
/// and the log lines.
fn run_check(
    check: DiskCheck,
    prepare: fn(&mut [u8]),
) -> (Result<DiskReport, String>, Vec<String>) {
    run_check_in(check, prepare, None)
}

/// The same, with the storage domain mapping foreign pages into a window of `window` pages.
fn run_check_in(
    check: DiskCheck,
    prepare: fn(&mut [u8]),
    window: Option<usize>,
) -> (Result<DiskReport, String>, Vec<String>) {
    let cfg = BusConfig {
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        resync_interval: Duration::from_millis(100),
        ..BusConfig::default()
    };
    let ts = Toolstack::new().unwrap();
    let guest = ts
        .create_domain("blk-app", DomainConfig::default())
        .unwrap();
    ts.add_vbd(&Vbd::new(guest.domid(), 0, "xvda", "ram"))
        .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let dom0 = ts.dom0().clone();
        dom0.set_map_window(window).unwrap();
        let xs = ts.dom0_client().unwrap();
        let stop0 = &stop;
        let server = sc.spawn(move || {
            let mut bus = Bus::with_config(xs, 0, cfg);
            xenolith_apps::storage_domain(
                Rc::new(dom0),
                &mut bus,
                Box::new(move |_| {
                    let mut d = MemDisk::new(DISK_MIB << 11);
                    prepare(d.bytes_mut());
                    Ok(Box::new(d) as Box<dyn Storage>)
                }),
                None,
                &|| stop0.load(Ordering::SeqCst),
                &|| std::thread::sleep(Duration::from_micros(100)),
            )
        });
        let plat = Rc::new(guest.domain().clone());
        let mut bus = Bus::with_config(guest.xs_client().unwrap(), guest.domid(), cfg);
        let front = Blkfront::new(plat.clone()).with_mode(WaitMode::Event);
        front.register(&mut bus).unwrap();
        let mut dev = front
            .first_disk(&mut bus, Duration::from_secs(10), &mut || {
                std::thread::sleep(Duration::from_millis(1))
            })
            .unwrap();
        let cfgd = dev.config().unwrap();
        assert_eq!(dev.sectors() * xen_blk::block::SECTOR, DISK_MIB << 20);
        let mut log = Vec::new();
        let now = || plat.now();
        let r = disk_check(
            &mut dev,
            &check,
            cfgd.discard.is_some(),
            false,
            &now,
            &mut |l| log.push(l.to_string()),
        );
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap().unwrap();
        (r, log)
    })
}

fn dom0_pattern(bytes: &mut [u8]) {
    for (i, unit) in bytes[..1 << 20].chunks_exact_mut(UNIT).enumerate() {
        pattern_unit(&dom0_label(i as u64), unit);
    }
}

#[test]
fn the_pattern_text_is_what_dom0s_awk_writes() {
    // awk: printf "%-511s\n", "xenolith dom0 sector " i
    let mut u = [0u8; UNIT];
    pattern_unit(&dom0_label(7), &mut u);
    let want = format!("{:<511}\n", "xenolith dom0 sector 7");
    assert_eq!(&u[..], want.as_bytes());
    pattern_unit(&app_label(0x5a00_0003, 2048), &mut u);
    let want = format!("{:<511}\n", "xenolith blk-app 5a000003 sector 2048");
    assert_eq!(&u[..], want.as_bytes());
}

#[test]
fn the_whole_check_passes_on_a_good_disk() {
    let check = DiskCheck {
        bytes: 4 << 20,
        nonce: 0x1234,
        small_ops: 200,
        ..DiskCheck::default()
    };
    let (r, log) = run_check(check, dom0_pattern);
    let r = r.unwrap();
    assert_eq!(r.verified, 4 << 20);
    assert!(r.write_kib_s > 0 && r.read_kib_s > 0 && r.iops_qd1 > 0 && r.iops_queued > 0);
    assert!(r.write_qd1_kib_s > 0 && r.read_qd1_kib_s > 0);
    // Our blkback offers discard on a RAM disk, which then reads zeros.
    assert_eq!(r.discard, Some(true), "{log:?}");
    assert!(log[0].starts_with("dom0 pattern verified"), "{log:?}");
}

#[test]
fn a_wrong_dom0_pattern_is_reported_with_its_unit() {
    let check = DiskCheck {
        bytes: 1 << 20,
        small_ops: 0,
        ..DiskCheck::default()
    };
    let (r, _) = run_check(check, |b| {
        dom0_pattern(b);
        b[700 * UNIT + 30] ^= 1;
    });
    let e = r.unwrap_err();
    assert!(e.starts_with("dom0 pattern differs in unit 700"), "{e}");
}

#[test]
fn a_disk_too_small_for_the_check_is_refused_before_any_write() {
    let check = DiskCheck {
        bytes: DISK_MIB << 20,
        ..DiskCheck::default()
    };
    let (r, _) = run_check(check, dom0_pattern);
    assert!(r.unwrap_err().contains("too small"));
}

#[test]
fn persistent_grants_leave_room_in_a_small_mapping_window() {
    // As on real Xen, where the storage domain maps foreign pages into a fixed window: with
    // 8 x 1 MiB buffers in flight, our blkfront's persistent grants name 2048 distinct pages.
    // blkback keeps at most a quarter of the window per device and always leaves room for
    // the per-request path, so every request is served (with 32 pages and no such budget,
    // persistent mappings filled the window and Linux's writes failed in the lab).
    let check = DiskCheck {
        bytes: 8 << 20,
        nonce: 0x77,
        small_ops: 100,
        ..DiskCheck::default()
    };
    for window in [64, 1024] {
        let (r, log) = run_check_in(check.clone(), dom0_pattern, Some(window));
        let r = r.unwrap_or_else(|e| panic!("window {window}: {e} ({log:?})"));
        assert_eq!(r.verified, 8 << 20);
    }
}

/// The same check on a RAM disk with no backend in between (`StorageDevice`): the app's
/// disk code runs, and fails, on its own.
#[test]
fn the_check_runs_on_a_bare_ram_disk() {
    use xen_blk::front::StorageDevice;
    let t0 = std::time::Instant::now();
    let now = || t0.elapsed();
    let check = DiskCheck {
        bytes: 2 << 20,
        nonce: 9,
        small_ops: 50,
        ..DiskCheck::default()
    };
    let mut disk = MemDisk::new(DISK_MIB << 11);
    dom0_pattern(disk.bytes_mut());
    let mut dev = StorageDevice::new(disk);
    let mut log = Vec::new();
    let r = disk_check(&mut dev, &check, true, true, &now, &mut |l| {
        log.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e} ({log:?})"));
    assert_eq!((r.verified, r.discard), (2 << 20, Some(true)));
    // The app's pattern is on the disk where the check says it wrote it.
    let bytes = dev.into_storage();
    let mut unit = [0u8; UNIT];
    pattern_unit(&app_label(9, 2048), &mut unit);
    assert_eq!(&bytes.bytes()[2048 * UNIT..][..UNIT], &unit[..]);
    // Without the toolstack's pattern it fails at its first unit.
    let mut dev = StorageDevice::new(MemDisk::new(DISK_MIB << 11));
    let e = disk_check(&mut dev, &check, true, true, &now, &mut |_| {}).unwrap_err();
    assert!(e.starts_with("dom0 pattern differs in unit 0"), "{e}");
}
