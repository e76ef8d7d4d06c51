//! `xs`: XenStore from the command line, in the spirit of Debian's xenstore-utils
//! (`xenstore-read`, `-write`, `-ls`, `-rm`, `-watch`, `-chmod`), talking to xenstored's Unix
//! socket.
//!
//! ```text
//! xs [--socket PATH] read [-p] [-R] PATH...
//! xs [--socket PATH] write [-R] PATH VALUE [PATH VALUE]...
//! xs [--socket PATH] ls [-f] [-p] [PATH]
//! xs [--socket PATH] rm [-t] PATH...
//! xs [--socket PATH] watch [-n NR] PATH...
//! xs [--socket PATH] chmod [-r] [-u] PATH PERM...
//! ```
//!
//! The socket is `--socket`, else `$XENSTORED_PATH`, else `/run/xenstored/socket`.
//!
//! Output, options, exit codes and transactions are those of xen's
//! `tools/xs-clients/xenstore_client.c` (4.17): values are printed "sanitised" (`\t \n \r \\`,
//! `\ooo` below 8, `\xhh` for other unprintable bytes) and `write` un-sanitises its values
//! unless `-R`; `read` of several paths and `write` of several pairs run in one transaction,
//! `rm` and `chmod` always do, retried on `EAGAIN`; `ls` prints the tree as
//! `name = "value"` with one space of indent per level and truncates lines to 80 columns
//! (xenstore-ls does so when stdout is not a terminal; we never ask the terminal), `-f` prints
//! full paths without truncation, `-p` adds the permissions; `watch` prints the path of every
//! event (the initial ones included) and stops after `-n NR` events. Error messages name `xs`
//! instead of the `xenstore-*` tool.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xen_store::client::{Client, Store, XsClientError};
use xen_store::perms::{Access, Perm, Perms};
use xen_store::XsError;
use xen_store_host::{default_socket_path, UnixTransport};

const PROG: &str = "xs";

/// `max_width` of xenstore-ls when stdout is not a terminal, and its `desired_width`.
const MAX_WIDTH: usize = 80;
const DESIRED_WIDTH: usize = 60;
/// `TAG`: ` = "..."`.
const TAG_LEN: usize = 8;

type Xs = Client<UnixTransport>;

/// A failure that ends the program: the message (already prefixed) and the exit code.
struct Fail(String, u8);

fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(format!("{PROG}: {}", msg.into()), 1))
}

fn usage(cmd: Option<&str>) -> Fail {
    let u = match cmd {
        Some("read") => "read [-h] [-p] [-R] key [...]",
        Some("write") => "write [-h] [-R] key value [...]",
        Some("ls") => "ls [-h] [-f] [-p] [path]",
        Some("rm") => "rm [-h] [-t] key [...]",
        Some("watch") => "watch [-h] [-n NR] key",
        Some("chmod") => "chmod [-h] [-u] [-r] key <mode [modes...]>",
        _ => "[--socket PATH] <read|write|ls|rm|watch|chmod> [-h] [...]",
    };
    Fail(format!("{PROG}: Usage: {PROG} {u}"), 1)
}

/// strerror-like text for an error, as `err(3)` prints it.
fn errno_text(e: &XsClientError) -> String {
    match e {
        XsClientError::Xs(x) => match x {
            XsError::Eperm => "Operation not permitted".into(),
            XsError::Enoent => "No such file or directory".into(),
            XsError::Eio => "Input/output error".into(),
            XsError::E2big => "Argument list too long".into(),
            XsError::Eagain => "Resource temporarily unavailable".into(),
            XsError::Enomem => "Cannot allocate memory".into(),
            XsError::Eacces => "Permission denied".into(),
            XsError::Ebusy => "Device or resource busy".into(),
            XsError::Eexist => "File exists".into(),
            XsError::Eisdir => "Is a directory".into(),
            XsError::Einval => "Invalid argument".into(),
            XsError::Enospc => "No space left on device".into(),
            XsError::Erofs => "Read-only file system".into(),
            XsError::Enosys => "Function not implemented".into(),
            XsError::Enotempty => "Directory not empty".into(),
            XsError::Eisconn => "Transport endpoint is already connected".into(),
        },
        XsClientError::BadRequest(_) => "Invalid argument".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Sanitising values (xenstore_client.c sanitise_value / unsanitise_value).

fn sanitise(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &c in v {
        match c {
            b' '..=b'~' if c != b'\\' => s.push(c as char),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\\' => s.push_str("\\\\"),
            c if c < 0o10 => s.push_str(&format!("\\{c:03o}")),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn unsanitise(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            // A trailing backslash: C stores the terminating NUL as a value byte.
            out.push(0);
            break;
        };
        i += 1;
        let v = match e {
            b't' => b'\t',
            b'n' => b'\n',
            b'r' => b'\r',
            b'\\' => b'\\',
            b'x' => {
                // sscanf("%2x"): leading white space, then up to two hex digits.
                let mut j = i;
                while s.get(j).is_some_and(|b| b" \t\n\x0b\x0c\r".contains(b)) {
                    j += 1;
                }
                let digits = s[j..]
                    .iter()
                    .take(2)
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
                if digits == 0 {
                    b'x'
                } else {
                    let h = std::str::from_utf8(&s[j..j + digits]).unwrap_or("0");
                    i = j + digits;
                    u8::from_str_radix(h, 16).unwrap_or(0)
                }
            }
            b'0'..=b'7' => {
                // sscanf("%3o") from the digit: up to three octal digits, truncated to a byte.
                let start = i - 1;
                let digits = s[start..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(b))
                    .count();
                let o = std::str::from_utf8(&s[start..start + digits]).unwrap_or("0");
                i = start + digits;
                (u32::from_str_radix(o, 8).unwrap_or(0) & 0xff) as u8
            }
            other => other,
        };
        out.push(v);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Commands.

struct Opts {
    prefix: bool,
    raw: bool,
    tidy: bool,
    flat: bool,
    upto: bool,
    recurse: bool,
    number: Option<i64>,
}

/// One pass of a transactional command: the text to print and the exit code.
type Outcome = (Vec<u8>, u8, Vec<String>);

fn do_read<S: Store + ?Sized>(s: &mut S, o: &Opts, args: &[String]) -> Outcome {
    let mut out = Vec::new();
    for p in args {
        match s.read(p) {
            Ok(v) => {
                if o.prefix {
                    out.extend_from_slice(format!("{p}: ").as_bytes());
                }
                if o.raw {
                    out.extend_from_slice(&v);
                } else {
                    out.extend_from_slice(sanitise(&v).as_bytes());
                    out.push(b'\n');
                }
            }
            Err(_) => return (out, 1, vec![format!("{PROG}: couldn't read path {p}")]),
        }
    }
    (out, 0, Vec::new())
}

fn do_write<S: Store + ?Sized>(s: &mut S, o: &Opts, args: &[String]) -> Outcome {
    for pair in args.chunks(2) {
        let [p, v] = pair else { break };
        let value = if o.raw {
            v.as_bytes().to_vec()
        } else {
            unsanitise(v.as_bytes())
        };
        if s.write(p, &value).is_err() {
            return (
                Vec::new(),
                1,
                vec![format!("{PROG}: could not write path {p}")],
            );
        }
    }
    (Vec::new(), 0, Vec::new())
}

fn do_rm<S: Store + ?Sized>(s: &mut S, o: &Opts, args: &[String]) -> Outcome {
    for p in args {
        let mut path = p.clone();
        loop {
            if s.rm(&path).is_err() {
                return (
                    Vec::new(),
                    1,
                    vec![format!("{PROG}: could not remove path {path}")],
                );
            }
            if !o.tidy {
                break;
            }
            // -t: remove parents that are left empty and without a value, up to the root.
            let Some(slash) = path.rfind('/') else { break };
            path.truncate(slash);
            let empty_value = matches!(s.read(&path), Ok(v) if v.is_empty());
            let no_children = empty_value && matches!(s.directory(&path), Ok(c) if c.is_empty());
            if !no_children {
                break;
            }
        }
    }
    (Vec::new(), 0, Vec::new())
}

fn parse_perm(s: &str) -> Result<Perm, Fail> {
    let access = match s.as_bytes().first() {
        Some(b'n') => Access::None,
        Some(b'r') => Access::Read,
        Some(b'w') => Access::Write,
        Some(b'b') => Access::Both,
        Some(&c) => return fail(format!("Invalid permission specification: '{}'", c as char)),
        None => return fail("Invalid permission specification: ''"),
    };
    // atoi(): leading digits, anything else ends the number (0 if none).
    let digits: String = s[1..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let domid = digits.parse::<u64>().unwrap_or(0);
    let domid =
        u16::try_from(domid).map_err(|_| Fail(format!("{PROG}: domid {domid} out of range"), 1))?;
    Ok(Perm::new(access, domid))
}

fn do_chmod<S: Store + ?Sized>(
    s: &mut S,
    path: &str,
    perms: &Perms,
    upto: bool,
    recurse: bool,
) -> Result<(), Fail> {
    if path.is_empty() {
        return Ok(());
    }
    if let Err(e) = s.set_perms(path, perms) {
        return Err(Fail(
            format!(
                "{PROG}: Error occurred setting permissions on '{path}': {}",
                errno_text(&e)
            ),
            1,
        ));
    }
    if upto {
        match path.rfind('/') {
            Some(i) => do_chmod(s, &path[..i], perms, true, false)?,
            None => return fail(format!("Unable to locate path separator '/' in '{path}'")),
        }
    }
    if recurse {
        if let Ok(children) = s.directory(path) {
            for c in children {
                do_chmod(s, &format!("{path}/{c}"), perms, false, true)?;
            }
        }
    }
    Ok(())
}

fn perm_string(p: &Perm) -> String {
    format!("{}{}", p.access.as_char(), p.domid)
}

/// xenstore-ls's `do_ls`: children of `path`, depth first.
fn do_ls(xs: &mut Xs, path: &str, depth: usize, o: &Opts, out: &mut Vec<u8>) -> Result<(), Fail> {
    let children = match xs.directory(path) {
        Ok(c) => c,
        Err(XsClientError::Xs(XsError::Enoent)) if depth > 0 => return Ok(()),
        Err(e) => return fail(format!("xs_directory ({path}): {}", errno_text(&e))),
    };
    let (max_width, desired_width) = if o.flat {
        (i32::MAX as usize / 2, 0)
    } else {
        (MAX_WIDTH, DESIRED_WIDTH)
    };
    for name in children {
        let sep = if path.ends_with('/') { "" } else { "/" };
        let newpath = format!("{path}{sep}{name}");
        let mut linewid = 0usize;
        if o.flat {
            // (xenstore-ls does not count the path in the line width here.)
            out.extend_from_slice(newpath.as_bytes());
        } else {
            out.extend(std::iter::repeat_n(b' ', depth));
            linewid = depth;
            let shown = precision(name.as_bytes(), max_width, linewid);
            out.extend_from_slice(shown);
            linewid += shown.len();
        }
        match xs.read(&newpath) {
            Err(_) => out.extend_from_slice(b":\n"),
            Ok(v) => {
                let clean = sanitise(&v);
                if max_width < linewid + v.len() + TAG_LEN {
                    let cut = precision(clean.as_bytes(), max_width, linewid);
                    out.extend_from_slice(b" = \"");
                    out.extend_from_slice(cut);
                    out.extend_from_slice(b"\\...\"");
                } else {
                    let s = format!(" = \"{clean}\"");
                    linewid += s.len();
                    out.extend_from_slice(s.as_bytes());
                    if o.prefix {
                        out.push(b' ');
                        linewid += 1;
                        while linewid < desired_width.min(max_width) {
                            out.push(if linewid & 1 == 1 { b'.' } else { b' ' });
                            linewid += 1;
                        }
                    }
                }
            }
        }
        if o.prefix {
            match xs.get_perms(&newpath) {
                Ok(p) => {
                    let list: Vec<String> = p.entries().iter().map(perm_string).collect();
                    out.extend_from_slice(format!("  ({})", list.join(",")).as_bytes());
                }
                Err(e) => {
                    flush(out);
                    eprintln!(
                        "{PROG}: \ncould not access permissions for {name}: {}",
                        errno_text(&e)
                    );
                }
            }
        }
        out.push(b'\n');
        do_ls(xs, &newpath, depth + 1, o, out)?;
    }
    Ok(())
}

/// `printf("%.*s", max_width - TAG_LEN - linewid, s)`: a negative precision prints it all.
fn precision(s: &[u8], max_width: usize, linewid: usize) -> &[u8] {
    match max_width.checked_sub(TAG_LEN + linewid) {
        Some(room) => &s[..room.min(s.len())],
        None => s,
    }
}

fn flush(out: &mut Vec<u8>) {
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out);
    let _ = so.flush();
    out.clear();
}

/// Run `pass` in a transaction, again on `EAGAIN` at commit; a failing pass aborts it.
fn transactional(
    xs: &mut Xs,
    mut pass: impl FnMut(&mut dyn Store) -> Outcome,
) -> Result<Outcome, Fail> {
    loop {
        let mut tx = match xs.transaction_start() {
            Ok(t) => t,
            Err(_) => return fail("couldn't start transaction"),
        };
        let outcome = pass(&mut tx);
        if outcome.1 != 0 {
            if tx.abort().is_err() {
                return fail("couldn't end transaction");
            }
            return Ok(outcome);
        }
        match tx.commit() {
            Ok(()) => return Ok(outcome),
            Err(XsClientError::Xs(XsError::Eagain)) => continue,
            Err(_) => return fail("couldn't end transaction"),
        }
    }
}

fn run(args: Vec<String>) -> Result<u8, Fail> {
    let mut socket: Option<PathBuf> = None;
    let mut it = args.into_iter().skip(1).peekable();
    let cmd = loop {
        match it.next() {
            Some(a) if a == "--socket" || a == "-s" => match it.next() {
                Some(p) => socket = Some(PathBuf::from(p)),
                None => return Err(usage(None)),
            },
            Some(a) if a.starts_with("--socket=") => {
                socket = Some(PathBuf::from(&a["--socket=".len()..]));
            }
            Some(a) if a == "-h" || a == "--help" => return Err(usage(None)),
            Some(a) => break a,
            None => return Err(usage(None)),
        }
    };
    let known = ["read", "write", "ls", "rm", "watch", "chmod"];
    if !known.contains(&cmd.as_str()) {
        return fail(format!("unknown mode {cmd}"));
    }
    let mut o = Opts {
        prefix: false,
        raw: false,
        tidy: false,
        flat: false,
        upto: false,
        recurse: false,
        number: None,
    };
    let mut rest = Vec::new();
    let mut options_done = false;
    while let Some(a) = it.next() {
        if options_done || !a.starts_with('-') || a == "-" {
            rest.push(a);
            continue;
        }
        if a == "--" {
            options_done = true;
            continue;
        }
        let long = |l: &str| a == format!("--{l}");
        let c = cmd.as_str();
        if long("prefix") || a == "-p" {
            if !matches!(c, "read" | "ls") {
                return Err(usage(Some(c)));
            }
            o.prefix = true;
        } else if long("raw") || a == "-R" {
            if !matches!(c, "read" | "write") {
                return Err(usage(Some(c)));
            }
            o.raw = true;
        } else if long("tidy") || a == "-t" {
            if c != "rm" {
                return Err(usage(Some(c)));
            }
            o.tidy = true;
        } else if long("flat") || a == "-f" {
            if c != "ls" {
                return Err(usage(Some(c)));
            }
            o.flat = true;
        } else if long("upto") || a == "-u" {
            if c != "chmod" {
                return Err(usage(Some(c)));
            }
            o.upto = true;
        } else if long("recurse") || a == "-r" {
            if c != "chmod" {
                return Err(usage(Some(c)));
            }
            o.recurse = true;
        } else if long("number") || a == "-n" || a.starts_with("-n") {
            if c != "watch" {
                return Err(usage(Some(c)));
            }
            let v = if a.len() > 2 && a.starts_with("-n") {
                a[2..].to_string()
            } else {
                it.next().ok_or_else(|| usage(Some(c)))?
            };
            // atoi(), as xenstore-watch.
            let digits: String = v
                .trim_start()
                .chars()
                .enumerate()
                .take_while(|(i, ch)| ch.is_ascii_digit() || (*i == 0 && *ch == '-'))
                .map(|(_, ch)| ch)
                .collect();
            o.number = Some(digits.parse().unwrap_or(0));
        } else if a == "-h" || long("help") {
            return Err(Fail(usage(Some(c)).0, 0));
        } else {
            return Err(usage(Some(c)));
        }
    }
    match cmd.as_str() {
        "ls" => {}
        "write" if rest.is_empty() || rest.len() % 2 == 1 => return Err(usage(Some("write"))),
        c if rest.is_empty() => return Err(usage(Some(c))),
        _ => {}
    }

    let socket = socket.unwrap_or_else(default_socket_path);
    let t = match UnixTransport::connect(&socket) {
        Ok(t) => t,
        Err(e) => return fail(format!("xs_open: connect to {}: {e}", socket.display())),
    };
    let mut xs: Xs = Client::new(t);

    let outcome = match cmd.as_str() {
        "read" if rest.len() > 1 => transactional(&mut xs, |s| do_read(s, &o, &rest))?,
        "read" => do_read(&mut xs, &o, &rest),
        "write" if rest.len() > 2 => transactional(&mut xs, |s| do_write(s, &o, &rest))?,
        "write" => do_write(&mut xs, &o, &rest),
        "rm" => transactional(&mut xs, |s| do_rm(s, &o, &rest))?,
        "chmod" => {
            let path = rest[0].clone();
            let list = rest[1..]
                .iter()
                .map(|p| parse_perm(p))
                .collect::<Result<Vec<_>, _>>()?;
            let perms = match Perms::from_vec(list) {
                Ok(p) => p,
                Err(e) => return fail(format!("invalid permissions: {e}")),
            };
            let mut err = None;
            transactional(&mut xs, |s| {
                err = do_chmod(s, &path, &perms, o.upto, o.recurse).err();
                (Vec::new(), u8::from(err.is_some()), Vec::new())
            })?;
            if let Some(e) = err {
                return Err(e);
            }
            (Vec::new(), 0, Vec::new())
        }
        "ls" => {
            let path = rest.first().cloned().unwrap_or_else(|| "/".into());
            let mut out = Vec::new();
            let r = do_ls(&mut xs, &path, 0, &o, &mut out);
            flush(&mut out);
            r?;
            (Vec::new(), 0, Vec::new())
        }
        "watch" => return watch(&mut xs, &rest, o.number.unwrap_or(-1)),
        _ => unreachable!("mode checked above"),
    };
    let (mut out, code, errors) = outcome;
    for e in errors {
        eprintln!("{e}");
    }
    flush(&mut out);
    Ok(code)
}

fn watch(xs: &mut Xs, paths: &[String], max_events: i64) -> Result<u8, Fail> {
    for p in paths {
        // The token is the path, as xenstore-watch does.
        if xs.watch(p, p).is_err() {
            return fail(format!("Unable to add watch on {p}\n"));
        }
    }
    let mut count = 0i64;
    let mut so = std::io::stdout();
    while max_events == -1 || count < max_events {
        match xs.next_watch_event(None, Duration::from_secs(3600)) {
            Ok(Some(ev)) => {
                let _ = writeln!(so, "{}", ev.path);
                let _ = so.flush();
                count += 1;
            }
            Ok(None) => {}
            Err(e) => return fail(format!("xs_read_watch: {}", errno_text(&e))),
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    match run(std::env::args().collect()) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(msg, code)) => {
            let _ = std::io::stdout().flush();
            eprintln!("{msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{sanitise, unsanitise};

    #[test]
    fn sanitise_like_xenstore_client() {
        assert_eq!(sanitise(b"plain ~"), "plain ~");
        assert_eq!(sanitise(b"a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(
            sanitise(b"\0\x07\x08\x1f\x7f\xff"),
            "\\000\\007\\x08\\x1f\\x7f\\xff"
        );
    }

    #[test]
    fn unsanitise_like_xenstore_client() {
        assert_eq!(unsanitise(b"plain"), b"plain");
        assert_eq!(unsanitise(b"a\\tb\\nc\\rd\\\\e"), b"a\tb\nc\rd\\e");
        assert_eq!(unsanitise(b"\\x41\\x4g\\xzz"), b"A\x04gxzz");
        assert_eq!(unsanitise(b"\\101\\0\\7777"), b"A\0\xff7");
        assert_eq!(unsanitise(b"\\q"), b"q");
        assert_eq!(unsanitise(b"end\\"), b"end\0");
        for v in [&b"\0\x01\t\n\\ \x7f\xfe x"[..], b"", b"\\\\n"] {
            assert_eq!(unsanitise(sanitise(v).as_bytes()), v, "round trip {v:?}");
        }
    }
}
