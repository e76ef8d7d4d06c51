//! Debian's xenstore-utils (`xenstore-read`, `-write`, `-ls`, `-rm`, `-watch`, `-chmod`)
//! against a xenstored socket, cross-checked with our client: each check runs against the real
//! daemon (`*_real`) and against our `xenstored` binary (`*_ours`).
//!
//! Needs the xenstore-utils package, and root for the real daemon; otherwise the tests FAIL
//! with the reason unless `XENOLITH_SKIP_REAL_XENSTORED=1` (then they print `SKIPPED: ...`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{require_xenstore_utils, run, stderr, stdout, Lines, OurDaemon};
use xen_store::client::{Client, Store};
use xen_store_host::conformance::Limits;
use xen_store_host::real::RealXenstored;
use xen_store_host::UnixTransport;

fn client(socket: &Path) -> Client<UnixTransport> {
    Client::new(UnixTransport::connect(socket).expect("connect to the socket"))
}

#[track_caller]
fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {} (stdout {:?}, stderr {:?})",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// `xenstore-write` (escapes decoded, several pairs at once) and `xenstore-read` (values
/// sanitised, `-p`, a missing path is exit 1 with a message).
pub fn read_write(socket: &Path) {
    let mut xs = client(socket);
    let o = run(
        "xenstore-write",
        &["/u/a", "1", "/u/b", "x\\ty\\x41\\101\\\\"],
        socket,
    );
    ok(&o, "xenstore-write");
    assert_eq!(xs.read("/u/a").unwrap(), b"1");
    assert_eq!(
        xs.read("/u/b").unwrap(),
        b"x\tyAA\\",
        "unsanitised by xenstore-write"
    );
    let o = run("xenstore-write", &["-R", "/u/raw", "a\\tb"], socket);
    ok(&o, "xenstore-write -R");
    assert_eq!(xs.read("/u/raw").unwrap(), b"a\\tb");

    xs.write("/u/bin", b"\0\x01\n\\\x7f\xff ok").unwrap();
    let o = run("xenstore-read", &["/u/bin"], socket);
    ok(&o, "xenstore-read");
    assert_eq!(stdout(&o), "\\000\\001\\n\\\\\\x7f\\xff ok\n");
    let o = run("xenstore-read", &["-p", "/u/a", "/u/b"], socket);
    ok(&o, "xenstore-read -p");
    assert_eq!(stdout(&o), "/u/a: 1\n/u/b: x\\tyAA\\\\\n");
    let o = run("xenstore-read", &["-R", "/u/bin"], socket);
    ok(&o, "xenstore-read -R");
    assert_eq!(o.stdout, b"\0\x01\n\\\x7f\xff ok", "raw value, no newline");

    let o = run("xenstore-read", &["/u/missing"], socket);
    assert_eq!(o.status.code(), Some(1), "read of a missing node");
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("couldn't read path /u/missing"),
        "{:?}",
        stderr(&o)
    );
    // Partial output is still printed when a later path fails.
    let o = run("xenstore-read", &["/u/a", "/u/missing"], socket);
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(1), "1\n"));
}

/// `xenstore-ls`: `name = "value"` per node, one space of indent per level, lines cut at 80
/// columns when not on a terminal; `-f` full paths; `-p` permissions.
pub fn ls(socket: &Path) {
    let mut xs = client(socket);
    xs.write("/l/a", b"1").unwrap();
    xs.write("/l/d/e/f", b"deep").unwrap();
    xs.write("/l/tab", b"x\ty").unwrap();
    xs.write("/l/long", "v".repeat(100).as_bytes()).unwrap();
    let o = run("xenstore-ls", &["/l"], socket);
    ok(&o, "xenstore-ls");
    let cut = format!("long = \"{}\\...\"", "v".repeat(80 - 8 - 4));
    let want = format!("a = \"1\"\nd = \"\"\n e = \"\"\n  f = \"deep\"\ntab = \"x\\ty\"\n{cut}\n");
    assert_eq!(stdout(&o), want);
    let o = run("xenstore-ls", &["-f", "/l/d"], socket);
    ok(&o, "xenstore-ls -f");
    assert_eq!(stdout(&o), "/l/d/e = \"\"\n/l/d/e/f = \"deep\"\n");
    xs.set_perms(
        "/l/a",
        &"n0"
            .parse::<xen_store::Perm>()
            .map(|p| xen_store::Perms::from_vec(vec![p, "r5".parse().unwrap()]).unwrap())
            .unwrap(),
    )
    .unwrap();
    let o = run("xenstore-ls", &["-p", "/l"], socket);
    ok(&o, "xenstore-ls -p");
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("a = \"1\"  . . ."), "{first:?}");
    assert!(first.ends_with("  (n0,r5)"), "{first:?}");
    let o = run("xenstore-ls", &["/l/none"], socket);
    assert_eq!(o.status.code(), Some(1), "ls of a missing node");
    assert!(
        stderr(&o).contains("xs_directory (/l/none)"),
        "{:?}",
        stderr(&o)
    );
}

/// `xenstore-rm` removes subtrees; `-t` also removes parents left empty.
pub fn rm(socket: &Path) {
    let mut xs = client(socket);
    xs.write("/r/a/b", b"1").unwrap();
    xs.write("/r/keep", b"1").unwrap();
    ok(&run("xenstore-rm", &["/r/a"], socket), "xenstore-rm");
    assert!(!xs.exists("/r/a").unwrap());
    xs.write("/r/t/x/y/z", b"1").unwrap();
    ok(
        &run("xenstore-rm", &["-t", "/r/t/x/y/z"], socket),
        "xenstore-rm -t",
    );
    assert!(!xs.exists("/r/t").unwrap(), "empty parents tidied");
    assert!(xs.exists("/r/keep").unwrap(), "non-empty parent kept");
    let o = run("xenstore-rm", &["/nothere/x"], socket);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("could not remove path /nothere/x"),
        "{:?}",
        stderr(&o)
    );
}

/// `xenstore-chmod` sets the list (owner first); `-r` recurses into children, `-u` goes up
/// to the root's children.
pub fn chmod(socket: &Path) {
    let mut xs = client(socket);
    xs.write("/c/a/b", b"1").unwrap();
    ok(
        &run("xenstore-chmod", &["/c/a", "n0", "r5", "b7"], socket),
        "xenstore-chmod",
    );
    let p = |xs: &mut Client<UnixTransport>, path: &str| {
        let v: Vec<String> = xs
            .get_perms(path)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.to_string())
            .collect();
        v.join(",")
    };
    assert_eq!(p(&mut xs, "/c/a"), "n0,r5,b7");
    assert_eq!(p(&mut xs, "/c/a/b"), "n0", "no recursion without -r");
    ok(
        &run("xenstore-chmod", &["-r", "/c/a", "r0"], socket),
        "xenstore-chmod -r",
    );
    assert_eq!(p(&mut xs, "/c/a/b"), "r0");
    ok(
        &run("xenstore-chmod", &["-u", "/c/a/b", "b0"], socket),
        "xenstore-chmod -u",
    );
    assert_eq!(
        (p(&mut xs, "/c"), p(&mut xs, "/c/a")),
        ("b0".into(), "b0".into())
    );
    let o = run("xenstore-chmod", &["/c/none/x", "n0"], socket);
    assert_eq!(o.status.code(), Some(1), "chmod of a missing node");
    assert!(stderr(&o).contains("Error occurred setting permissions on '/c/none/x'"));
}

/// `xenstore-watch -n 2`: the initial event, then one per change.
pub fn watch(socket: &Path) {
    let mut xs = client(socket);
    let mut w = Lines::spawn("xenstore-watch", &["-n", "3", "/w"], socket);
    assert_eq!(w.next(Duration::from_secs(10)), "/w", "initial event");
    xs.write("/w/x", b"1").unwrap();
    assert_eq!(w.next(Duration::from_secs(10)), "/w/x");
    xs.rm("/w").unwrap();
    assert_eq!(w.next(Duration::from_secs(10)), "/w");
    assert!(
        w.finish(Duration::from_secs(10)).success(),
        "exits after -n events"
    );
}

fn real(test: &str, f: fn(&Path)) {
    if !require_xenstore_utils(test) {
        return;
    }
    let Some(xs) = RealXenstored::for_test(test, Limits::DEFAULT) else {
        return;
    };
    f(&xs.socket());
    assert!(xs.is_alive(), "{test}: xenstored died");
}

fn ours(test: &str, f: fn(&Path)) {
    if !require_xenstore_utils(test) {
        return;
    }
    let mut xs = OurDaemon::start();
    f(&xs.socket());
    assert!(xs.is_alive(), "{test}: our xenstored died");
}

#[test]
fn read_write_ours() {
    ours("read_write_ours", read_write);
}

#[test]
fn ls_ours() {
    ours("ls_ours", ls);
}

#[test]
fn rm_ours() {
    ours("rm_ours", rm);
}

#[test]
fn chmod_ours() {
    ours("chmod_ours", chmod);
}

#[test]
fn watch_ours() {
    ours("watch_ours", watch);
}

#[test]
fn read_write_real() {
    real("read_write_real", read_write);
}

#[test]
fn ls_real() {
    real("ls_real", ls);
}

#[test]
fn rm_real() {
    real("rm_real", rm);
}

#[test]
fn chmod_real() {
    real("chmod_real", chmod);
}

#[test]
fn watch_real() {
    real("watch_real", watch);
}
