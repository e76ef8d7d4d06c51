//! Watch events queued per token.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;

use crate::path::Path;

/// An `XS_WATCH_EVENT`: `path` (a child of the watched path, relative if the watch was)
/// changed, for the watch registered with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The path that changed (`<epath>`), or the watched path itself for the initial fire and
    /// the removal of a parent.
    pub path: Path,
    /// The token given to [`Client::watch`](crate::client::Client::watch).
    pub token: String,
}

/// Counters of what happened to incoming messages outside the request/reply flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Watch events queued.
    pub events_queued: u64,
    /// Watch events dropped because their token's queue was full (the oldest is dropped).
    pub events_overflowed: u64,
    /// Watch events for a token with no registered watch (e.g. after `unwatch`), dropped.
    pub events_stray: u64,
    /// Watch events whose payload did not decode, dropped.
    pub events_malformed: u64,
    /// Late replies to requests that had timed out, discarded.
    pub replies_discarded: u64,
    /// Requests sent (what a client costs its server, and an idle domain its vCPU).
    pub requests_sent: u64,
}

#[derive(Debug, Default)]
struct TokenQueue {
    /// Number of (path, token) watches registered with this token.
    registrations: u32,
    /// Queued events with their arrival sequence number.
    events: VecDeque<(u64, Path)>,
    /// Events dropped from this queue because it was full.
    dropped: u64,
}

/// The per-token queues.
#[derive(Debug)]
pub(crate) struct Watches {
    tokens: BTreeMap<String, TokenQueue>,
    capacity: usize,
    seq: u64,
}

impl Watches {
    pub(crate) fn new(capacity: usize) -> Watches {
        Watches {
            tokens: BTreeMap::new(),
            capacity: capacity.max(1),
            seq: 0,
        }
    }

    pub(crate) fn register(&mut self, token: &str) {
        let q = self.tokens.entry(String::from(token)).or_default();
        q.registrations = q.registrations.saturating_add(1);
    }

    /// Undo one registration; the token's queue goes with its last registration.
    pub(crate) fn unregister(&mut self, token: &str) {
        if let Some(q) = self.tokens.get_mut(token) {
            q.registrations = q.registrations.saturating_sub(1);
            if q.registrations == 0 {
                self.tokens.remove(token);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Queue an event (dropping the oldest if the token's queue is full); an event for a token
    /// with no watch is dropped. Both are counted in `stats`.
    pub(crate) fn push(&mut self, ev: WatchEvent, stats: &mut ClientStats) {
        let Some(q) = self.tokens.get_mut(ev.token.as_str()) else {
            stats.events_stray += 1;
            return;
        };
        if q.events.len() >= self.capacity {
            q.events.pop_front();
            q.dropped += 1;
            stats.events_overflowed += 1;
        }
        self.seq += 1;
        q.events.push_back((self.seq, ev.path));
        stats.events_queued += 1;
    }

    /// The oldest queued event for `token`, or of all tokens.
    pub(crate) fn pop(&mut self, token: Option<&str>) -> Option<WatchEvent> {
        let (name, q) = match token {
            Some(t) => self.tokens.get_key_value_mut(t)?,
            None => self
                .tokens
                .iter_mut()
                .filter(|(_, q)| !q.events.is_empty())
                .min_by_key(|(_, q)| q.events.front().map_or(u64::MAX, |e| e.0))?,
        };
        let (_, path) = q.events.pop_front()?;
        Some(WatchEvent {
            path,
            token: name.clone(),
        })
    }

    pub(crate) fn pending(&self, token: Option<&str>) -> usize {
        match token {
            Some(t) => self.tokens.get(t).map_or(0, |q| q.events.len()),
            None => self.tokens.values().map(|q| q.events.len()).sum(),
        }
    }

    pub(crate) fn dropped(&self, token: &str) -> u64 {
        self.tokens.get(token).map_or(0, |q| q.dropped)
    }
}

/// `BTreeMap::get_key_value` with a mutable value.
trait GetKeyValueMut {
    fn get_key_value_mut(&mut self, k: &str) -> Option<(&String, &mut TokenQueue)>;
}

impl GetKeyValueMut for BTreeMap<String, TokenQueue> {
    fn get_key_value_mut(&mut self, k: &str) -> Option<(&String, &mut TokenQueue)> {
        self.range_mut::<str, _>((core::ops::Bound::Included(k), core::ops::Bound::Included(k)))
            .next()
    }
}
