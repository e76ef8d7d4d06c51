//! Socket threads: a listener per socket, a reader and a writer per connection.

use super::*;

/// One socket connection, as its threads and the core see it.
pub(super) struct Sock {
    pub(super) id: ConnId,
    pub(super) stream: UnixStream,
    /// Held from taking the Store's output to the end of writing it.
    pub(super) out: Mutex<()>,
    /// The writer thread's wake-up: "there is output" (or "closed").
    pub(super) flush: Mutex<bool>,
    pub(super) flush_cv: Condvar,
    pub(super) closed: AtomicBool,
}

impl Sock {
    /// Close it: both threads end (the reader sees end of stream, the writer its flag).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake_writer();
    }

    pub(super) fn wake_writer(&self) {
        *lock(&self.flush) = true;
        self.flush_cv.notify_one();
    }
}

pub(super) fn accept_loop(listener: UnixListener, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin on it.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let (Ok(rd), Ok(wr)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let sock = {
            let mut core = shared.core();
            let id = core.store.connect(0);
            let sock = Arc::new(Sock {
                id,
                stream,
                out: Mutex::new(()),
                flush: Mutex::new(false),
                flush_cv: Condvar::new(),
                closed: AtomicBool::new(false),
            });
            core.sockets.insert(id, sock.clone());
            sock
        };
        let (s1, k1) = (shared.clone(), sock.clone());
        let reader = std::thread::Builder::new()
            .name("xenstored-read".into())
            .spawn(move || socket_reader(s1, k1, rd));
        let (s2, k2) = (shared.clone(), sock.clone());
        let writer = std::thread::Builder::new()
            .name("xenstored-write".into())
            .spawn(move || socket_writer(s2, k2, wr));
        if reader.is_err() || writer.is_err() {
            shared.core().drop_socket(sock.id);
        }
    }
}

/// Write the Store's output for `sock`, then `extra` (a reply made outside the Store), in
/// order with everything else written on the connection. False if the connection failed.
pub(super) fn flush(
    shared: &Shared,
    sock: &Sock,
    mut stream: &UnixStream,
    extra: Option<Vec<u8>>,
) -> bool {
    let _out = lock(&sock.out);
    let mut bytes = Vec::new();
    for m in shared.core().store.take_output(sock.id) {
        if let Ok(b) = m.encode() {
            bytes.extend_from_slice(&b);
        }
    }
    if let Some(e) = extra {
        bytes.extend_from_slice(&e);
    }
    if bytes.is_empty() || stream.write_all(&bytes).is_ok() {
        return true;
    }
    shared.core().drop_socket(sock.id);
    false
}

/// Read, frame and handle the client's requests, writing their replies (and whatever else is
/// queued for the connection) after each batch.
pub(super) fn socket_reader(shared: Arc<Shared>, sock: Arc<Sock>, mut stream: UnixStream) {
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut msgs = Vec::new();
        let mut bad = false;
        let mut input = buf.get(..n).unwrap_or(&[]);
        while !input.is_empty() {
            match framer.push(input) {
                Ok((used, m)) => {
                    input = input.get(used..).unwrap_or(&[]);
                    msgs.extend(m);
                }
                Err(_) => {
                    // A header claiming more than 4096 bytes: xenstored drops the client.
                    bad = true;
                    break;
                }
            }
        }
        let mut rest = msgs.as_slice();
        while !rest.is_empty() {
            let mut extra = None;
            {
                let mut core = shared.core();
                while let Some((m, tail)) = rest.split_first() {
                    if !core.store.is_connected(sock.id) {
                        return;
                    }
                    if !core.store.wants_input(sock.id) {
                        break;
                    }
                    rest = tail;
                    if let Err(e) = core.handle(sock.id, m) {
                        // Made here, not by the Store: write it after what is queued.
                        extra = error_reply(m, e);
                        break;
                    }
                }
                core.after_requests(Some(sock.id));
            }
            if !flush(&shared, &sock, &stream, extra) {
                return;
            }
        }
        if bad {
            break;
        }
    }
    shared.core().drop_socket(sock.id);
}

/// An `XS_ERROR` reply to `req`, as wire bytes.
pub(super) fn error_reply(req: &Message, e: XsError) -> Option<Vec<u8>> {
    Response::Error(e)
        .to_message(req.header.req_id, req.header.tx_id)
        .ok()
        .and_then(|m| m.encode().ok())
}

/// Write what other connections caused for this one (watch events), when woken.
pub(super) fn socket_writer(shared: Arc<Shared>, sock: Arc<Sock>, stream: UnixStream) {
    loop {
        {
            let mut pending = lock(&sock.flush);
            while !*pending && !sock.closed.load(Ordering::SeqCst) {
                pending = sock
                    .flush_cv
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *pending = false;
        }
        if sock.closed.load(Ordering::SeqCst) || !flush(&shared, &sock, &stream, None) {
            return;
        }
    }
}
