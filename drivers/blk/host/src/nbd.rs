//! [`NbdDisk`]: an NBD export as a [`Storage`] blkback serves (issue "xenolith-blkd"), so any
//! NBD server — nbdkit and its plugins, qemu-nbd, rbd-nbd — becomes a Xen disk.
//!
//! The client side of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md; every constant
//! below is from there):
//! - the fixed newstyle handshake: the server's `NBDMAGIC`, `IHAVEOPT` and handshake flags
//!   (`NBD_FLAG_FIXED_NEWSTYLE` is required), our client flags, then `NBD_OPT_GO` with the
//!   export name and an `NBD_INFO_BLOCK_SIZE` request; the server's `NBD_REP_INFO` replies
//!   (`NBD_INFO_EXPORT`: size and transmission flags; `NBD_INFO_BLOCK_SIZE`) end with
//!   `NBD_REP_ACK`, or an error reply (`NBD_REP_FLAG_ERROR` set: the export is refused);
//! - transmission with simple replies only (structured replies are never asked for): requests
//!   `NBD_CMD_READ`/`WRITE`/`FLUSH`/`TRIM` carry a handle, replies may come in any order and
//!   are matched by handle, so many requests are in flight on one connection; a read's data
//!   follows its reply when the error field is zero;
//! - `NBD_CMD_DISC` when the disk is dropped.
//!
//! A server that goes away, or sends what the protocol does not allow (a bad magic, a handle
//! not in flight), ends the connection: every request in flight completes with
//! [`BlkError::Io`] (none is lost or reported twice), and the next request connects again —
//! at most [`RECONNECT_TRIES`] attempts in a row, a second apart at least, after which
//! requests fail at once until [`NbdDisk::reconnect`] is called. A reconnect must find the
//! same export (size and read-only): anything else fails the requests.
//!
//! `target` syntax (blkd's `target=`, parsed by [`NbdTarget::parse`]):
//! `nbd:HOST:PORT[:EXPORT]` (HOST may be `[v6-address]`) and `nbd+unix:PATH[:EXPORT]`
//! (PATH without `:`); the export name defaults to the empty string (the server's default).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_blk::storage::{check_op, BlkError, Busy, Completion, Features, Op, Storage, SECTOR};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_TRIM: u16 = 1 << 5;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;

/// The most bytes one request carries (blkback's parts are far smaller; the protocol's
/// length is 32 bits, and servers commonly cap requests at 32 MiB).
const MAX_REQUEST: usize = 32 << 20;
/// The longest option reply we read during the handshake (an error message, an info).
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Requests in flight on one connection.
pub const DEPTH: usize = 128;
/// Connection attempts in a row (each with [`CONNECT_TIMEOUT`]) before requests fail at once.
pub const RECONNECT_TRIES: u32 = 3;
/// How long one connection attempt (and its handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdTarget {
    /// TCP: host (a name or an address) and port.
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// Export name.
        export: String,
    },
    /// A Unix socket.
    Unix {
        /// The socket's path.
        path: String,
        /// Export name.
        export: String,
    },
}

impl NbdTarget {
    /// `nbd:HOST:PORT[:EXPORT]` or `nbd+unix:PATH[:EXPORT]` (see the module docs).
    pub fn parse(s: &str) -> Result<NbdTarget, String> {
        if let Some(rest) = s.strip_prefix("nbd+unix:") {
            let (path, export) = rest.split_once(':').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(format!("{s}: no socket path"));
            }
            return Ok(NbdTarget::Unix {
                path: path.to_string(),
                export: export.to_string(),
            });
        }
        let Some(rest) = s.strip_prefix("nbd:") else {
            return Err(format!(
                "{s}: not nbd:HOST:PORT[:EXPORT] or nbd+unix:PATH[:EXPORT]"
            ));
        };
        let (host, rest) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, r) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{s}: no ']' after the address"))?;
                (h, r.strip_prefix(':').unwrap_or(r))
            }
            None => rest
                .split_once(':')
                .ok_or_else(|| format!("{s}: no port"))?,
        };
        let (port, export) = rest.split_once(':').unwrap_or((rest, ""));
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s}: port '{port}' is not a number"))?;
        if host.is_empty() {
            return Err(format!("{s}: no host"));
        }
        Ok(NbdTarget::Tcp {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }

    fn export(&self) -> &str {
        match self {
            NbdTarget::Tcp { export, .. } | NbdTarget::Unix { export, .. } => export,
        }
    }
}

/// A connected socket, TCP or Unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(t: &NbdTarget) -> io::Result<Stream> {
        match t {
            NbdTarget::Tcp { host, port, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            NbdTarget::Unix { path, .. } => UnixStream::connect(path).map(Stream::Unix),
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// What the handshake learnt about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Export {
    size: u64,
    flags: u16,
    /// The server's minimum block size (1 when it sent none).
    min_block: u32,
}

/// The fixed newstyle handshake with `NBD_OPT_GO` for `export` (proto.md, "Newstyle
/// negotiation", "NBD_OPT_GO").
fn handshake(s: &mut Stream, export: &str) -> io::Result<Export> {
    if read_u64(s)? != NBDMAGIC {
        return Err(proto("not an NBD server (no NBDMAGIC)"));
    }
    if read_u64(s)? != IHAVEOPT {
        return Err(proto("an oldstyle NBD server (no IHAVEOPT): not supported"));
    }
    let hflags = read_u16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto("the server does not do fixed newstyle negotiation"));
    }
    let mut cflags = FLAG_C_FIXED_NEWSTYLE;
    if hflags & FLAG_NO_ZEROES != 0 {
        cflags |= FLAG_C_NO_ZEROES;
    }
    let name = export.as_bytes();
    if name.len() > 4096 {
        return Err(proto("export name longer than 4096 bytes"));
    }
    let mut msg = Vec::with_capacity(32 + name.len());
    msg.extend_from_slice(&cflags.to_be_bytes());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&OPT_GO.to_be_bytes());
    msg.extend_from_slice(&(4 + name.len() as u32 + 2 + 2).to_be_bytes());
    msg.extend_from_slice(&(name.len() as u32).to_be_bytes());
    msg.extend_from_slice(name);
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    s.write_all(&msg)?;
    let mut found: Option<(u64, u16)> = None;
    let mut min_block = 1;
    loop {
        if read_u64(s)? != OPT_REPLY_MAGIC {
            return Err(proto("bad option reply magic"));
        }
        let opt = read_u32(s)?;
        let kind = read_u32(s)?;
        let len = read_u32(s)?;
        if opt != OPT_GO {
            return Err(proto(format!("a reply to option {opt}, not NBD_OPT_GO")));
        }
        if len > MAX_OPTION_REPLY {
            return Err(proto(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        if kind & REP_FLAG_ERROR != 0 {
            let text = String::from_utf8_lossy(&data);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the server refused export '{export}' (NBD_OPT_GO error {:#x}{}{text})",
                    kind,
                    if text.is_empty() { "" } else { ": " }
                ),
            ));
        }
        match kind {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                match info {
                    INFO_EXPORT if data.len() >= 12 => {
                        let size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                        let flags = u16::from_be_bytes([data[10], data[11]]);
                        found = Some((size, flags));
                    }
                    INFO_BLOCK_SIZE if data.len() >= 14 => {
                        min_block = u32::from_be_bytes(data[2..6].try_into().expect("4 bytes"));
                    }
                    _ => {} // other infos: not asked for, ignored (proto.md)
                }
            }
            _ => {} // unknown non-error replies are ignored (proto.md)
        }
    }
    let (size, flags) = found.ok_or_else(|| proto("NBD_REP_ACK without NBD_INFO_EXPORT"))?;
    Ok(Export {
        size,
        flags,
        min_block,
    })
}

/// A request on the wire, waiting for its reply.
enum Slot {
    /// A read (its buffer is filled by the reader thread) or an op whose reply is awaited.
    Waiting(u64, Op),
    /// Sent; the op is still with the submitting thread (a write while its data goes out).
    Sent,
    /// Its reply came before the submitting thread parked the op: the error field.
    Early(u32),
}

/// The requests in flight of one connection, by handle.
type Slots = Arc<Mutex<HashMap<u64, Slot>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: our writing end, the reader thread and the requests in flight.
struct Conn {
    tx: Stream,
    slots: Slots,
    alive: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Conn {
    fn close(&mut self, disconnect: bool) {
        if disconnect && self.alive.load(Ordering::SeqCst) {
            // NBD_CMD_DISC: no reply; the server closes after the requests before it.
            let _ = self.tx.write_all(&request(CMD_DISC, 0, 0, 0));
        }
        self.tx.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A request header (proto.md "Request message").
fn request(kind: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// An NBD error number as the block layer's error.
fn nbd_error(e: u32) -> BlkError {
    match e {
        1 => BlkError::ReadOnly,     // NBD_EPERM
        95 => BlkError::Unsupported, // NBD_ENOTSUP
        _ => BlkError::Io,           // NBD_EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ESHUTDOWN
    }
}

/// The reader thread: replies, matched by handle, until the connection ends; then every
/// request still in flight completes with [`BlkError::Io`].
fn read_replies(mut rx: Stream, slots: Slots, alive: Arc<AtomicBool>, done: Sender<Completion>) {
    let why = loop {
        let mut h = [0u8; 16];
        if let Err(e) = rx.read_exact(&mut h) {
            break format!("the connection ended ({e})");
        }
        let magic = u32::from_be_bytes(h[0..4].try_into().expect("4 bytes"));
        let error = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
        let handle = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
        if magic != SIMPLE_REPLY_MAGIC {
            break format!("bad reply magic {magic:#x}");
        }
        let slot = {
            let mut s = lock(&slots);
            match s.remove(&handle) {
                Some(Slot::Sent) => {
                    s.insert(handle, Slot::Early(error));
                    continue;
                }
                Some(Slot::Early(_)) | None => None,
                Some(Slot::Waiting(tag, op)) => Some((tag, op)),
            }
        };
        let Some((tag, mut op)) = slot else {
            break format!("a reply for handle {handle:#x}, not in flight");
        };
        let result = if error == 0 {
            Ok(())
        } else {
            Err(nbd_error(error))
        };
        // A read's data follows its reply only when the error field is zero (proto.md,
        // "Simple reply message").
        if let (Op::Read { buf, .. }, 0) = (&mut op, error) {
            if let Err(e) = rx.read_exact(buf) {
                let _ = done.send(Completion::of(tag, op, Err(BlkError::Io)));
                break format!("a read's data was cut short ({e})");
            }
        }
        if done.send(Completion::of(tag, op, result)).is_err() {
            break "the disk was dropped".to_string();
        }
    };
    alive.store(false, Ordering::SeqCst);
    rx.shutdown();
    log_end(&why);
    for (_, slot) in lock(&slots).drain() {
        if let Slot::Waiting(tag, op) = slot {
            let _ = done.send(Completion::of(tag, op, Err(BlkError::Io)));
        }
    }
}

/// Where a connection's end is told: stderr, once per connection (a daemon's log).
fn log_end(why: &str) {
    eprintln!("nbd: connection closed: {why}");
}

/// An NBD export as a [`Storage`] (see the module docs).
pub struct NbdDisk {
    target: NbdTarget,
    export: Export,
    sector_size: u32,
    conn: Option<Conn>,
    next_handle: u64,
    in_flight: usize,
    /// Ops completed without reaching the server (refused, or no connection).
    local: VecDeque<Completion>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    /// Connection attempts since the last one that worked.
    failed_tries: u32,
    last_try: Option<Instant>,
    /// Connections made (the first included).
    connects: u32,
}

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk")
            .field("target", &self.target)
            .field("size", &self.export.size)
            .field("flags", &self.export.flags)
            .field("connected", &self.connected())
            .finish()
    }
}

impl NbdDisk {
    /// Connect to `target` and negotiate its export. Fails with the server's refusal (an
    /// unknown export), a protocol error, or an export whose size is not whole 512-byte
    /// sectors.
    pub fn open(target: NbdTarget) -> io::Result<NbdDisk> {
        let (conn, export) = Self::dial(&target)?;
        if export.size % SECTOR != 0 {
            return Err(proto(format!(
                "export size {} is not a multiple of 512",
                export.size
            )));
        }
        let sector_size = export.min_block.clamp(SECTOR as u32, 4096);
        if !sector_size.is_power_of_two() {
            return Err(proto(format!("minimum block size {}", export.min_block)));
        }
        let (done_tx, done_rx) = channel();
        let mut d = NbdDisk {
            target,
            export,
            sector_size,
            conn: None,
            next_handle: 1,
            in_flight: 0,
            local: VecDeque::new(),
            done_tx,
            done_rx,
            failed_tries: 0,
            last_try: None,
            connects: 1,
        };
        d.conn = Some(d.start(conn));
        Ok(d)
    }

    fn dial(target: &NbdTarget) -> io::Result<(Stream, Export)> {
        let mut s = Stream::connect(target)?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let export = handshake(&mut s, target.export())?;
        s.set_read_timeout(None)?;
        Ok((s, export))
    }

    fn start(&self, s: Stream) -> Conn {
        let slots: Slots = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = s.try_clone().ok().map(|rx| {
            let (slots, alive, done) = (slots.clone(), alive.clone(), self.done_tx.clone());
            std::thread::spawn(move || read_replies(rx, slots, alive, done))
        });
        if reader.is_none() {
            alive.store(false, Ordering::SeqCst);
        }
        Conn {
            tx: s,
            slots,
            alive,
            reader,
        }
    }

    /// Whether a connection is up.
    pub fn connected(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.alive.load(Ordering::SeqCst))
    }

    /// Connections made so far (1 until the server went away and came back).
    pub fn connects(&self) -> u32 {
        self.connects
    }

    /// Allow [`RECONNECT_TRIES`] more connection attempts (after they ran out).
    pub fn reconnect(&mut self) {
        self.failed_tries = 0;
        self.last_try = None;
    }

    /// A live connection, connecting again if the last one ended (bounded, see the module
    /// docs).
    fn ensure(&mut self) -> Option<&mut Conn> {
        if !self.connected() {
            if let Some(mut old) = self.conn.take() {
                old.close(false);
            }
            if self.failed_tries >= RECONNECT_TRIES
                || self
                    .last_try
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return None;
            }
            self.last_try = Some(Instant::now());
            match Self::dial(&self.target) {
                Ok((s, e))
                    if e.size == self.export.size
                        && e.flags & TF_READ_ONLY == self.export.flags & TF_READ_ONLY =>
                {
                    self.failed_tries = 0;
                    self.connects += 1;
                    self.conn = Some(self.start(s));
                }
                Ok((s, _)) => {
                    // Not the export we had: never serve another disk under this one.
                    let mut s = s;
                    let _ = s.write_all(&request(CMD_DISC, 0, 0, 0));
                    s.shutdown();
                    self.failed_tries = RECONNECT_TRIES;
                    return None;
                }
                Err(_) => {
                    self.failed_tries += 1;
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    /// Send `op` as `kind` over the connection; a failure completes it with an error.
    fn send(&mut self, tag: u64, kind: u16, offset: u64, len: u32, op: Op) {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        let Some(conn) = self.ensure() else {
            self.local
                .push_back(Completion::of(tag, op, Err(BlkError::Io)));
            return;
        };
        let header = request(kind, handle, offset, len);
        if let Op::Write { buf, .. } = &op {
            // The data goes out from here: the reader may see the reply first (Early).
            lock(&conn.slots).insert(handle, Slot::Sent);
            let sent = conn
                .tx
                .write_all(&header)
                .and_then(|()| conn.tx.write_all(buf));
            let mut slots = lock(&conn.slots);
            match (sent, slots.remove(&handle)) {
                (Ok(()), Some(Slot::Early(e))) => {
                    drop(slots);
                    let r = if e == 0 { Ok(()) } else { Err(nbd_error(e)) };
                    self.local.push_back(Completion::of(tag, op, r));
                }
                (Ok(()), Some(Slot::Sent)) => {
                    slots.insert(handle, Slot::Waiting(tag, op));
                }
                // Failed to send, or the connection ended meanwhile (the reader drained
                // every slot): this op was not answered.
                _ => {
                    drop(slots);
                    conn.tx.shutdown();
                    self.local
                        .push_back(Completion::of(tag, op, Err(BlkError::Io)));
                }
            }
            return;
        }
        lock(&conn.slots).insert(handle, Slot::Waiting(tag, op));
        if conn.tx.write_all(&header).is_err() {
            // The reader ends (shutdown) and completes whatever is still in its slots, this
            // op included, exactly once.
            conn.tx.shutdown();
        }
    }
}

impl Storage for NbdDisk {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn sectors(&self) -> u64 {
        self.export.size / SECTOR
    }
    fn read_only(&self) -> bool {
        self.export.flags & TF_READ_ONLY != 0
    }
    fn features(&self) -> Features {
        Features {
            flush: self.export.flags & TF_SEND_FLUSH != 0,
            discard: self.export.flags & TF_SEND_TRIM != 0,
            secure_discard: false,
            discard_granularity: 0,
        }
    }
    fn submit(&mut self, tag: u64, op: Op) -> Result<(), Busy> {
        if self.in_flight >= DEPTH {
            return Err(Busy(op));
        }
        self.in_flight += 1;
        if let Err(e) = check_op(
            &op,
            self.sectors(),
            self.sector_size,
            self.read_only(),
            self.features(),
        ) {
            self.local.push_back(Completion::of(tag, op, Err(e)));
            return Ok(());
        }
        let (kind, offset, len) = match &op {
            Op::Read { sector, buf } => (CMD_READ, sector * SECTOR, buf.len()),
            Op::Write { sector, buf } => (CMD_WRITE, sector * SECTOR, buf.len()),
            Op::Flush if self.features().flush => (CMD_FLUSH, 0, 0),
            // No flush offered: the server writes through; nothing to do.
            Op::Flush => {
                self.local.push_back(Completion::of(tag, op, Ok(())));
                return Ok(());
            }
            // A trim's length is 32 bits: a longer discard trims its first whole blocks up to
            // that (a discard is a hint: what it does not drop still reads as before).
            Op::Discard { sector, count, .. } => {
                let most = (u32::MAX / self.sector_size * self.sector_size) as u64;
                (
                    CMD_TRIM,
                    sector * SECTOR,
                    (count * SECTOR).min(most) as usize,
                )
            }
        };
        if len > MAX_REQUEST && kind != CMD_TRIM {
            self.local
                .push_back(Completion::of(tag, op, Err(BlkError::OutOfRange)));
            return Ok(());
        }
        self.send(tag, kind, offset, len as u32, op);
        Ok(())
    }
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.local.pop_front() {
            self.in_flight -= 1;
            done(c);
            n += 1;
        }
        while let Ok(c) = self.done_rx.try_recv() {
            self.in_flight -= 1;
            done(c);
            n += 1;
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for NbdDisk {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            c.close(true);
        }
    }
}
