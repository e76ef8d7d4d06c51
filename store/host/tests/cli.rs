//! The `xs` CLI printing exactly what Debian's xenstore-utils print for the same commands on
//! the same tree (compared byte for byte; error messages differ only in the program name) —
//! against the real xenstored (`real::*`) and against our `xenstored` binary (`ours::*`).
//!
//! Needs the xenstore-utils package, and root for the real daemon; otherwise the tests FAIL
//! with the reason unless `XENOLITH_SKIP_REAL_XENSTORED=1` (then they print `SKIPPED: ...`).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    require_xenstore_utils, run, stderr, stdout, wait_bounded, Lines, OurDaemon, TOOL_TIMEOUT,
};
use xen_store::client::{Client, Store};
use xen_store_host::conformance::Limits;
use xen_store_host::real::RealXenstored;
use xen_store_host::UnixTransport;

const XS: &str = env!("CARGO_BIN_EXE_xs");

fn client(socket: &Path) -> Client<UnixTransport> {
    Client::new(UnixTransport::connect(socket).expect("connect to the socket"))
}

fn xs(args: &[&str], socket: &Path) -> Output {
    let child = Command::new(XS)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xs");
    wait_bounded(child, "xs", TOOL_TIMEOUT)
}

/// `xenstore-<mode> args` and `xs <mode> args` print the same and exit the same.
#[track_caller]
fn same(socket: &Path, mode: &str, args: &[&str]) -> Output {
    let theirs = run(&format!("xenstore-{mode}"), args, socket);
    let mut full = vec![mode];
    full.extend_from_slice(args);
    let ours = xs(&full, socket);
    let what = format!("{mode} {}", args.join(" "));
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout),
        "stdout of {what}"
    );
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "exit code of {what}"
    );
    assert_eq!(
        stderr(&ours),
        stderr(&theirs).replace(&format!("xenstore-{mode}:"), "xs:"),
        "stderr of {what}"
    );
    ours
}

fn tree(c: &mut Client<UnixTransport>, root: &str) {
    c.write(&format!("{root}/a"), b"1").unwrap();
    c.write(&format!("{root}/d/e/f"), b"deep").unwrap();
    c.write(&format!("{root}/bin"), b"\0\x01\t\n\r\\\x7f\xff end")
        .unwrap();
    c.write(&format!("{root}/long"), "v".repeat(200).as_bytes())
        .unwrap();
    c.write(&format!("{root}/{}", "n".repeat(90)), b"long name")
        .unwrap();
    c.write(&format!("{root}/wide"), "w".repeat(60).as_bytes())
        .unwrap();
    c.mkdir(&format!("{root}/empty")).unwrap();
    let deep = (0..75).map(|_| "z").collect::<Vec<_>>().join("/");
    c.write(&format!("{root}/{deep}"), b"bottom").unwrap();
}

fn with_real(test: &str, f: impl FnOnce(&Path)) {
    if !require_xenstore_utils(test) {
        return;
    }
    let Some(d) = RealXenstored::for_test(test, Limits::DEFAULT) else {
        return;
    };
    f(&d.socket());
    assert!(d.is_alive(), "{test}: xenstored died");
}

fn with_ours(test: &str, f: impl FnOnce(&Path)) {
    if !require_xenstore_utils(test) {
        return;
    }
    let mut d = OurDaemon::start();
    f(&d.socket());
    assert!(d.is_alive(), "{test}: our xenstored died");
}

/// Each check as two tests: `real::<name>` against the real daemon, `ours::<name>` against
/// our `xenstored` binary.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod real {
            $(
                #[test]
                fn $name() {
                    super::with_real(stringify!($name), super::$name);
                }
            )*
        }

        mod ours {
            $(
                #[test]
                fn $name() {
                    super::with_ours(stringify!($name), super::$name);
                }
            )*
        }
    };
}

against_both!(
    read_prints_like_xenstore_read,
    ls_prints_like_xenstore_ls,
    write_rm_chmod_like_xenstore_utils,
    watch_prints_like_xenstore_watch,
    socket_from_environment_and_usage_errors,
);

fn read_prints_like_xenstore_read(s: &Path) {
    tree(&mut client(s), "/t");
    same(s, "read", &["/t/a"]);
    same(s, "read", &["/t/bin"]);
    same(s, "read", &["-p", "/t/a", "/t/bin", "/t/long"]);
    same(s, "read", &["-R", "/t/bin"]);
    same(s, "read", &["/t/missing"]);
    same(s, "read", &["/t/a", "/t/missing", "/t/bin"]);
    same(s, "read", &["rel/none"]);
}

fn ls_prints_like_xenstore_ls(s: &Path) {
    tree(&mut client(s), "/t");
    let o = same(s, "ls", &["/t"]);
    assert!(stdout(&o).contains(" f = \"deep\""), "{}", stdout(&o));
    same(s, "ls", &[]);
    same(s, "ls", &["/t/d"]);
    same(s, "ls", &["-p", "/t"]);
    same(s, "ls", &["-f", "/t"]);
    same(s, "ls", &["-f", "-p", "/t/d"]);
    same(s, "ls", &["/t/none"]);
    same(s, "ls", &["/t/a"]);
}

fn write_rm_chmod_like_xenstore_utils(s: &Path) {
    // Each tool works on its own copy; the trees must end up identical.
    let mut c = client(s);
    for root in ["/deb", "/ours"] {
        tree(&mut c, root);
    }
    let steps: &[(&str, &[&str])] = &[
        (
            "write",
            &["@/w1", "plain", "@/w2", "esc\\t\\x41\\101\\\\\\q"],
        ),
        ("write", &["-R", "@/w3", "raw\\t"]),
        ("write", &["@/new/deep/node", "x"]),
        ("rm", &["@/a"]),
        ("rm", &["-t", "@/d/e/f"]),
        ("rm", &["@/nothere/x"]),
        ("chmod", &["@/w1", "n0", "r5", "b7"]),
        ("chmod", &["-r", "@/new", "r0"]),
        ("chmod", &["-u", "@/new/deep/node", "b0", "w3"]),
        ("chmod", &["@/none/x", "n0"]),
        ("chmod", &["@/w2", "x0"]),
    ];
    for (mode, args) in steps {
        let deb: Vec<String> = args.iter().map(|a| a.replace('@', "/deb")).collect();
        let ours: Vec<String> = args.iter().map(|a| a.replace('@', "/ours")).collect();
        let theirs = run(
            &format!("xenstore-{mode}"),
            &deb.iter().map(String::as_str).collect::<Vec<_>>(),
            s,
        );
        let mut full = vec![*mode];
        full.extend(ours.iter().map(String::as_str));
        let mine = xs(&full, s);
        assert_eq!(mine.status.code(), theirs.status.code(), "{mode} {args:?}");
        assert_eq!(
            stderr(&mine).replace("/ours", "/deb"),
            stderr(&theirs).replace(&format!("xenstore-{mode}:"), "xs:"),
            "stderr of {mode} {args:?}"
        );
    }
    // "-u" also changed the root's child /deb resp. /ours: compare the trees and perms.
    let theirs = run("xenstore-ls", &["-f", "-p", "/deb"], s);
    let mine = run("xenstore-ls", &["-f", "-p", "/ours"], s);
    assert_eq!(stdout(&mine).replace("/ours", "/deb"), stdout(&theirs));
    let perms = |c: &mut Client<UnixTransport>, p: &str| c.get_perms(p).unwrap();
    assert_eq!(perms(&mut c, "/ours"), perms(&mut c, "/deb"));
}

fn watch_prints_like_xenstore_watch(s: &Path) {
    let mut c = client(s);
    let mut theirs = Lines::spawn("xenstore-watch", &["-n", "4", "/w", "/v"], s);
    let mut ours = Lines::spawn(XS, &["watch", "-n", "4", "/w", "/v"], s);
    let t = Duration::from_secs(10);
    // The initial events, one per watch.
    let mut a = vec![theirs.next(t), theirs.next(t)];
    let mut b = vec![ours.next(t), ours.next(t)];
    a.sort();
    b.sort();
    assert_eq!(a, ["/v", "/w"]);
    assert_eq!(b, a);
    c.write("/w/x", b"1").unwrap();
    c.rm("/w").unwrap();
    for (want, what) in [("/w/x", "write"), ("/w", "rm")] {
        assert_eq!(theirs.next(t), want, "xenstore-watch, {what}");
        assert_eq!(ours.next(t), want, "xs watch, {what}");
    }
    assert!(theirs.finish(t).success());
    assert!(ours.finish(t).success(), "xs watch exits after -n events");
}

fn socket_from_environment_and_usage_errors(s: &Path) {
    client(s).write("/e", b"env").unwrap();
    let o = Command::new(XS)
        .args(["read", "/e"])
        .env("XENSTORED_PATH", s)
        .output()
        .expect("run xs");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "env\n"));
    for bad in [
        &["read"][..],
        &["write", "/x"],
        &["frob"],
        &[],
        &["rm", "-p", "/x"],
    ] {
        let o = xs(bad, s);
        assert_eq!(o.status.code(), Some(1), "xs {bad:?}: {}", stderr(&o));
    }
    let o = Command::new(XS)
        .args(["--socket", "/nonexistent/socket", "read", "/e"])
        .output()
        .expect("run xs");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/socket"), "{}", stderr(&o));
}
