//! Writing from the fan-out itself: when a message arrives on its own (no backlog at
//! the hub, [`super::pace`]) and a WebSocket or HTTP/1.1 SSE client has nothing queued
//! and nothing half-written, the hub writes the client's frame (for SSE, the event's
//! chunk) to its socket right away, with one non-blocking `send`, instead of queueing
//! it and waking the client's task. That wake, the task's poll and its `select!` cost
//! as much as the send itself; a message at a time (chat, dashboards, order status)
//! pays them for every delivery. In a burst the hub queues as before, so a client's
//! task writes many events with one send.
//!
//! The socket is shared by two writers, the hub and the client's task, through a
//! [`Gate`] (one atomic byte): frames never interleave, the hub never writes while
//! the task owns unfinished output, and it never writes after the socket closed.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;

use super::event::Event;

/// The hub is in `send`.
const HUB: u8 = 1;
/// The client's task is in a write.
const SESSION: u8 = 2;
/// The client's task has output under way (a batch taken from its queue, a frame half
/// written): the hub queues.
const OWNED: u8 = 4;
/// A close frame went out, or the socket is shutting down: the hub queues for good.
const CLOSING: u8 = 8;
/// The socket is closed (its descriptor may be reused): the hub never touches it.
const CLOSED: u8 = 16;
/// The hub wrote part of a frame: the rest (kept by the client's queue) goes before
/// any other byte of the task's.
const REST: u8 = 32;

/// Who may write to one client's socket: one byte, kept in the client's queue (so the
/// fan-out finds it on a cache line it already reads).
#[derive(Debug)]
pub struct Gate(AtomicU8);

impl Default for Gate {
    /// Starts owned by the client's task, which releases it once its first write is
    /// done (a resume's replay goes first, in order).
    fn default() -> Gate {
        Gate(AtomicU8::new(OWNED))
    }
}

impl Gate {
    /// The hub's turn, if the socket is free and the client's task owns nothing.
    fn hub_begin(&self) -> bool {
        let s = self.0.load(Ordering::Acquire);
        s & (HUB | SESSION | OWNED | CLOSING | CLOSED | REST) == 0
            && self
                .0
                .compare_exchange(s, s | HUB, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The hub's send is over; `partial`: the rest of the frame (which the caller
    /// keeps for the task) goes before anything else.
    fn hub_end(&self, partial: bool) {
        if partial {
            self.0.fetch_or(OWNED | REST, Ordering::AcqRel);
        }
        self.0.fetch_and(!HUB, Ordering::Release);
    }

    /// Whether part of a hub's frame is still to be written.
    pub fn has_rest(&self) -> bool {
        self.0.load(Ordering::Acquire) & REST != 0
    }

    /// The rest of the hub's frame is written.
    pub(super) fn rest_done(&self) {
        self.0.fetch_and(!REST, Ordering::AcqRel);
    }

    /// Waits out a send of the hub's (one non-blocking syscall) and marks the task as
    /// writing.
    pub fn session_begin(&self) {
        self.wait_and_set(SESSION);
    }

    /// The task's write is over; `incomplete`: part of what it wrote is still to go,
    /// so the socket stays the task's until [`Gate::release`].
    pub fn session_end(&self, incomplete: bool) {
        if incomplete {
            self.0.fetch_or(OWNED, Ordering::AcqRel);
        }
        self.0.fetch_and(!SESSION, Ordering::Release);
    }

    /// The task has output under way: the hub queues until [`Gate::release`].
    pub fn own(&self) {
        self.0.fetch_or(OWNED, Ordering::AcqRel);
    }

    /// The task wrote everything it had: the hub may write again.
    pub fn release(&self) {
        self.0.fetch_and(!OWNED, Ordering::AcqRel);
    }

    /// A close frame is going out: no data frame may follow it.
    pub fn closing(&self) {
        self.0.fetch_or(CLOSING, Ordering::AcqRel);
    }

    /// The socket is about to close: waits out a send of the hub's, after which the
    /// hub never touches the descriptor again.
    pub fn close(&self) {
        self.wait_and_set(CLOSED);
    }

    fn wait_and_set(&self, bit: u8) {
        let mut spins = 0u32;
        loop {
            let s = self.0.load(Ordering::Acquire);
            if s & HUB == 0
                && self
                    .0
                    .compare_exchange(s, s | bit, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // The hub's thread may be off the CPU (both share a core): let it run.
                std::thread::yield_now();
            }
        }
    }
}

/// Which of an event's frames a client is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// fanfare's JSON `message` frame.
    Json = 0,
    /// The payload alone (raw mode).
    Raw = 1,
    /// The JSON frame, compressed (permessage-deflate).
    JsonDeflated = 2,
    /// The raw frame, compressed.
    RawDeflated = 3,
    /// The SSE event as an HTTP/1.1 chunk (a raw SSE stream).
    SseChunk = 4,
}

impl FrameKind {
    /// The kind stored as `kind as u8`.
    pub(super) fn from_u8(b: u8) -> FrameKind {
        match b {
            1 => FrameKind::Raw,
            2 => FrameKind::JsonDeflated,
            3 => FrameKind::RawDeflated,
            4 => FrameKind::SseChunk,
            _ => FrameKind::Json,
        }
    }

    /// `event`'s frame of this kind.
    pub fn frame(self, event: &Event) -> &Bytes {
        match self {
            FrameKind::Json => event.ws_frame(),
            FrameKind::Raw => event.raw_frame(),
            FrameKind::JsonDeflated => event.ws_frame_deflated(),
            FrameKind::RawDeflated => event.raw_frame_deflated(),
            FrameKind::SseChunk => event.sse_chunk(),
        }
    }
}

/// A socket the hub may write to: its descriptor and which frames it takes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    pub(super) fd: RawFd,
    pub(super) kind: FrameKind,
}

/// What a write from the hub did.
pub(super) enum Wrote {
    /// The whole frame.
    All,
    /// Part of it: here is the rest, for the client's task to write first.
    Part(Bytes),
    /// Nothing (the socket is busy or full, or the task owns it): queue the event.
    Nothing,
}

/// Writes `event`'s frame to `to` if `gate` lets the hub write now.
///
/// `to.fd` must stay open until `gate` is closed ([`Gate::close`]): the send happens
/// only between a successful `hub_begin` and `hub_end`, and `hub_begin` fails once
/// the gate is closed.
pub(super) fn write(gate: &Gate, to: Target, event: &Event) -> Wrote {
    if !gate.hub_begin() {
        return Wrote::Nothing;
    }
    let frame = to.kind.frame(event);
    let wrote = match send(to.fd, frame) {
        Ok(n) if n == frame.len() => Wrote::All,
        Ok(n) if n > 0 => Wrote::Part(frame.slice(n..)),
        // Would block, or an error the task will meet on its own writes or reads.
        _ => Wrote::Nothing,
    };
    gate.hub_end(matches!(wrote, Wrote::Part(_)));
    wrote
}

/// One non-blocking `send` of `buf` on `fd`, without SIGPIPE.
#[allow(unsafe_code)] // one block, its soundness argued where it stands
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice for `buf.len()` bytes for the whole call. `fd` is
    // an open socket: `write` calls this only after `Gate::hub_begin` succeeded and
    // before `hub_end`, and the descriptor's owner (`transport::WsSocket`) closes the
    // gate with `Gate::close` in its `Drop`, before the descriptor is closed; `close`
    // waits while the HUB bit is set and `hub_begin` fails once CLOSED is set, so no
    // send can overlap or follow the close (the descriptor cannot have been reused
    // for another file). `send` with MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_writes_only_when_the_socket_is_free_and_unowned() {
        let g = Gate::default();
        assert!(!g.hub_begin(), "owned by the task until its first write");
        g.release();
        assert!(g.hub_begin());
        assert!(!g.hub_begin(), "one hub send at a time");
        g.hub_end(false);
        g.session_begin();
        assert!(!g.hub_begin(), "not while the task writes");
        g.session_end(true);
        assert!(!g.hub_begin(), "not while the task's frame is half written");
        g.release();
        assert!(g.hub_begin());
        g.hub_end(true);
        assert!(g.has_rest());
        g.release();
        assert!(
            !g.hub_begin(),
            "the hub's own partial frame is the task's to finish"
        );
        g.rest_done();
        assert!(!g.has_rest());
        assert!(g.hub_begin());
        g.hub_end(false);
        g.closing();
        g.release();
        assert!(!g.hub_begin(), "never after a close frame");
        g.close();
        assert!(!g.hub_begin());
    }

    #[test]
    fn frame_kinds_round_trip_through_a_byte() {
        for k in [
            FrameKind::Json,
            FrameKind::Raw,
            FrameKind::JsonDeflated,
            FrameKind::RawDeflated,
            FrameKind::SseChunk,
        ] {
            assert_eq!(FrameKind::from_u8(k as u8), k);
        }
    }

    #[test]
    fn close_waits_for_a_send_under_way() {
        let g = std::sync::Arc::new(Gate::default());
        g.release();
        assert!(g.hub_begin());
        let closer = {
            let g = g.clone();
            std::thread::spawn(move || g.close())
        };
        // The close cannot finish while the hub holds the gate (a negative: it gets a
        // moment in which it would finish if it could).
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!closer.is_finished());
        g.hub_end(false);
        closer.join().unwrap();
        assert!(!g.hub_begin());
    }
}
