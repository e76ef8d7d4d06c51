//! `xenstored`: our XenStore daemon (`xen_store_host::xenstored`) on a Unix socket, for dom0
//! tools on a host — Debian's xenstore-utils and our `xs` talk to it as to the real one.
//!
//! ```text
//! xenstored [--socket PATH] [-E NODES] [-W WATCHES] [-t TRANSACTIONS] [-S NODE_SIZE]
//! ```
//!
//! The socket is `--socket`, else `$XENSTORED_PATH`, else `/run/xenstored/socket`. The quota
//! options are xenstored's (they bind unprivileged domains only; on a socket every client is
//! dom0). There is no hypervisor here, so no domain but dom0 exists: `XS_INTRODUCE` is
//! `EINVAL`. Once listening it prints `listening on PATH` and serves until killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use xen_store::server::Quotas;
use xen_store_host::default_socket_path;
use xen_store_host::xenstored::Xenstored;

const USAGE: &str =
    "usage: xenstored [--socket PATH] [-E NODES] [-W WATCHES] [-t TRANSACTIONS] [-S NODE_SIZE]";

fn parse(args: &[String]) -> Result<(PathBuf, Quotas), String> {
    let mut socket = default_socket_path();
    let mut q = Quotas::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .ok_or_else(|| format!("{a} needs {what}"))
                .cloned()
        };
        let mut number = |what: &str| -> Result<usize, String> {
            let v = value(what)?;
            v.parse::<usize>()
                .map_err(|_| format!("{a}: not a number: {v:?}"))
        };
        match a.as_str() {
            "--socket" => socket = PathBuf::from(value("a path")?),
            "-E" => q.nodes = number("a node count")?,
            "-W" => q.watches = number("a watch count")?,
            "-t" => q.transactions = number("a transaction count")?,
            "-S" => q.node_size = number("a size")?,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok((socket, q))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, quotas) = match parse(&args) {
        Ok(v) => v,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xenstored: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 1 });
        }
    };
    let xsd = Xenstored::start(quotas);
    if let Err(e) = xsd.serve_socket(&socket) {
        eprintln!("xenstored: cannot listen on {}: {e}", socket.display());
        return ExitCode::from(1);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", socket.display());
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
