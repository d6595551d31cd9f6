//! A range request's answer as it arrives: each run of claimed chunks whose bytes are in is handed
//! to a blocking thread to be decoded, verified and cached while the rest is still on the wire. A
//! reader waiting for one chunk of a large request gets it when its bytes land, not when the whole
//! request has, and one request can be large (registries pay per request, not per byte).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::flight::{Failure, Pending};
use super::{Class, Inner};

/// Decoded bytes handed to a decoding thread at once, unless a reader waits for one of them.
const HANDOFF: usize = 512 << 10;

pub(super) struct Landing {
    inner: Arc<Inner>,
    class: Class,
    /// Claims (in blob order) whose bytes are not complete yet.
    pending: Pending,
    /// The answer from blob offset `at`, up to the bytes received.
    buf: BytesMut,
    at: u64,
    /// The end of the requested range: bytes past it are a broken answer.
    end: u64,
    decoding: Vec<JoinHandle<()>>,
    broken: Option<Failure>,
}

impl Landing {
    pub(super) fn new(inner: Arc<Inner>, class: Class, pending: Pending, range: std::ops::Range<u64>) -> Landing {
        let capacity = (range.end - range.start) as usize;
        Landing {
            inner,
            class,
            pending,
            buf: BytesMut::with_capacity(capacity),
            at: range.start,
            end: range.end,
            decoding: Vec::new(),
            broken: None,
        }
    }

    /// The next bytes of the answer.
    pub(super) fn land(&mut self, bytes: Bytes) {
        if self.broken.is_some() {
            return;
        }
        let received = self.at + (self.buf.len() + bytes.len()) as u64;
        if received > self.end {
            self.broken =
                Some(Failure::Corrupt(format!("the answer runs past the requested range's end (byte {})", self.end)));
            return;
        }
        self.buf.extend_from_slice(&bytes);
        self.hand_off(false);
    }

    /// Hands the leading claims whose bytes are all in to a decoding thread: once they make
    /// [`HANDOFF`] bytes, one of them is read, or (`all`) the answer is complete.
    fn hand_off(&mut self, all: bool) {
        let received = self.at + self.buf.len() as u64;
        let claims = self.pending.claims();
        let ready = claims.iter().take_while(|c| c.chunk.end() <= received).count();
        let Some(last) = ready.checked_sub(1).map(|i| &claims[i].chunk) else { return };
        let until = last.end();
        let waited_for = claims[..ready].iter().any(|c| c.label.is_some());
        if !(all || waited_for || (until - self.at) as usize >= HANDOFF) {
            return;
        }
        let span = self.buf.split_to((until - self.at) as usize).freeze();
        let part = self.pending.take_front(ready);
        let (inner, class, start) = (self.inner.clone(), self.class, self.at);
        // If decoding panics, dropping `part` fails its flights: no waiter hangs.
        self.decoding.push(tokio::task::spawn_blocking(move || inner.decode_all(part, class, start, &span)));
        self.at = until;
    }

    /// The answer ended (`Ok`) or failed: what is in is decoded (also after a failure: each
    /// chunk is verified), what is not fails. Returns once every handed-off chunk is decoded and
    /// cached (the caller's node locks cover them).
    pub(super) async fn finish(mut self, answer: Result<(), Failure>) {
        self.hand_off(true);
        if !self.pending.is_empty() {
            let received = self.at + self.buf.len() as u64;
            let why =
                self.broken.take().or(answer.err()).unwrap_or_else(|| {
                    Failure::Corrupt(format!("the answer ended at byte {received} of {}", self.end))
                });
            self.pending.split_off(|_| true).fail(why);
        }
        for task in self.decoding {
            let _ = task.await;
        }
    }
}
