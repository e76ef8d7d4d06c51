//! A streaming framer: feed it bytes as they arrive (from a socket or a xenstore ring), get
//! complete [`Message`]s out.
//!
//! Bounded by construction: it buffers at most one header (16 bytes) and one payload, and
//! allocates the payload only after the header's `len` was checked against
//! `XENSTORE_PAYLOAD_MAX` (4096). A header claiming more is a protocol violation: C xenstored
//! logs "Client tried to feed us %i" and drops the connection, setting the ring's error field
//! to `XENSTORE_ERROR_PROTO` (tools/xenstored/core.c `handle_input()`; xs_wire.h). The framer
//! reports [`CodecError::PayloadTooLarge`] (whose [`CodecError::xs_error`] is `E2BIG`) and
//! stays *poisoned* — the stream is out of sync and no later byte can be trusted — until
//! [`Framer::reset`], which a transport calls only when it reconnects.
//!
//! Message types are not judged here: an unknown type frames fine, so a server can answer it
//! `ENOSYS` as xenstored does.

use alloc::vec::Vec;

use crate::error::CodecError;
use crate::wire::{Header, Message, HEADER_LEN};

/// See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Framer {
    hdr: [u8; HEADER_LEN],
    hdr_used: usize,
    /// Set once the header is complete and its `len` accepted.
    header: Option<(Header, usize)>,
    body: Vec<u8>,
    poisoned: Option<CodecError>,
}

impl Framer {
    /// An idle framer.
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Consume bytes from the front of `input` until one message completes, the input runs
    /// out, or an error. Returns how many bytes were consumed and the completed message, if
    /// any. Bytes after a completed message are left for the next call.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), CodecError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let mut used = 0;
        if self.header.is_none() {
            let want = HEADER_LEN.saturating_sub(self.hdr_used);
            let take = want.min(input.len());
            let (src, dst) = match (
                input.get(..take),
                self.hdr.get_mut(self.hdr_used..self.hdr_used + take),
            ) {
                (Some(s), Some(d)) => (s, d),
                _ => return Err(self.poison(CodecError::Poisoned)),
            };
            dst.copy_from_slice(src);
            self.hdr_used += take;
            used += take;
            if self.hdr_used < HEADER_LEN {
                return Ok((used, None));
            }
            let header = Header::from_array(&self.hdr);
            let len = match header.check_len() {
                Ok(len) => len,
                Err(e) => return Err(self.poison(e)),
            };
            self.body = Vec::with_capacity(len);
            self.header = Some((header, len));
        }
        let Some((header, len)) = self.header else {
            return Ok((used, None));
        };
        let rest = input.get(used..).unwrap_or(&[]);
        let take = len.saturating_sub(self.body.len()).min(rest.len());
        self.body.extend_from_slice(rest.get(..take).unwrap_or(&[]));
        used += take;
        if self.body.len() < len {
            return Ok((used, None));
        }
        let msg = Message {
            header,
            payload: core::mem::take(&mut self.body),
        };
        self.header = None;
        self.hdr_used = 0;
        Ok((used, Some(msg)))
    }

    /// Feed `input`, returning an iterator over the messages it completes. Bytes of a trailing
    /// partial message stay buffered for the next call. After an error the iterator ends.
    pub fn feed<'f, 'i>(&'f mut self, input: &'i [u8]) -> Frames<'f, 'i> {
        Frames {
            framer: self,
            input,
            done: false,
        }
    }

    /// No partial message buffered (and not poisoned).
    pub fn is_idle(&self) -> bool {
        self.hdr_used == 0 && self.header.is_none() && self.poisoned.is_none()
    }

    /// The error that poisoned the stream, if any.
    pub fn error(&self) -> Option<&CodecError> {
        self.poisoned.as_ref()
    }

    /// Forget any partial message and a poisoned state (for a fresh connection).
    pub fn reset(&mut self) {
        *self = Framer::default();
    }

    fn poison(&mut self, e: CodecError) -> CodecError {
        self.poisoned = Some(e.clone());
        self.body = Vec::new();
        e
    }
}

/// Iterator returned by [`Framer::feed`].
#[derive(Debug)]
pub struct Frames<'f, 'i> {
    framer: &'f mut Framer,
    input: &'i [u8],
    done: bool,
}

impl Iterator for Frames<'_, '_> {
    type Item = Result<Message, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.input.is_empty() {
                self.done = true;
                return None;
            }
            match self.framer.push(self.input) {
                Ok((n, msg)) => {
                    self.input = self.input.get(n..).unwrap_or(&[]);
                    if let Some(m) = msg {
                        return Some(Ok(m));
                    }
                    if n == 0 {
                        self.done = true;
                        return None;
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
