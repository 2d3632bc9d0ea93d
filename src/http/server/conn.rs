//! One connection's phase (waiting for headers, serving, idle, upgraded), read from its socket
//! and its requests, and the deadline that phase sets: headers, keep-alive and write timeouts.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::registry::Ticket;

/// The timeouts a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub keep_alive: Duration,
    pub write: Duration,
}

/// What timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Headers,
    KeepAlive,
    Write,
}

impl Expiry {
    pub fn label(self) -> &'static str {
        match self {
            Self::Headers => "headers",
            Self::KeepAlive => "keep_alive",
            Self::Write => "write",
        }
    }
}

struct Phase {
    /// Requests being served (HTTP/1: at most one).
    in_flight: u32,
    /// Handed over to a WebSocket, which keeps time itself.
    upgraded: bool,
    /// When the last request ended (or the connection was accepted).
    idle_since: Instant,
    /// When the client started its next request: the connection was accepted, or the first
    /// byte after an idle spell arrived. Its headers are due `header_read` later.
    request_started: Option<Instant>,
    /// Since when a write has been waiting for the client to read.
    write_blocked: Option<Instant>,
}

/// The shared state of one connection: its socket, its requests and its timer all update it.
pub struct Conn {
    pub ticket: Ticket,
    phase: Mutex<Phase>,
    /// Woken when a deadline may have moved earlier.
    pub changed: Notify,
}

impl Conn {
    pub fn new(ticket: Ticket, accepted: Instant) -> Self {
        Self {
            ticket,
            phase: Mutex::new(Phase {
                in_flight: 0,
                upgraded: false,
                idle_since: accepted,
                // A new connection is there to send a request: its headers are due at once.
                request_started: Some(accepted),
                write_blocked: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next deadline and what it is for; `None` while nothing can time out.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        let p = self.lock();
        if p.upgraded {
            return None;
        }
        let write = p.write_blocked.map(|at| (at + t.write, Expiry::Write));
        let read = if p.in_flight > 0 {
            None
        } else if let Some(at) = p.request_started {
            Some((at + t.header_read, Expiry::Headers))
        } else {
            Some((p.idle_since + t.keep_alive, Expiry::KeepAlive))
        };
        match (write, read) {
            (Some(w), Some(r)) => Some(if w.0 <= r.0 { w } else { r }),
            (w, r) => w.or(r),
        }
    }

    /// Whether the connection holds no request (so it may be closed without losing one).
    pub fn is_idle(&self) -> bool {
        let p = self.lock();
        p.in_flight == 0 && !p.upgraded
    }

    fn on_read(&self) {
        let mut p = self.lock();
        if p.in_flight == 0 && !p.upgraded && p.request_started.is_none() {
            p.request_started = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    fn on_write(&self, blocked: bool) {
        let mut p = self.lock();
        match (blocked, p.write_blocked) {
            (true, None) => {
                p.write_blocked = Some(Instant::now());
                drop(p);
                self.changed.notify_one();
            }
            (false, Some(_)) => p.write_blocked = None,
            _ => {}
        }
    }

    /// A request's headers arrived: the connection serves it until the returned guard drops
    /// (with the response body, once sent).
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        {
            let mut p = self.lock();
            p.in_flight += 1;
            p.request_started = None;
        }
        self.ticket.busy();
        RequestGuard { conn: self.clone() }
    }
}

/// Holds a connection busy while its request is served.
pub struct RequestGuard {
    conn: Arc<Conn>,
}

impl RequestGuard {
    /// The response switches protocols: the connection now belongs to a WebSocket.
    pub fn upgraded(&self) {
        self.conn.lock().upgraded = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let idle = {
            let mut p = self.conn.lock();
            p.in_flight = p.in_flight.saturating_sub(1);
            let idle = p.in_flight == 0 && !p.upgraded;
            if idle {
                p.idle_since = now;
            }
            idle
        };
        if idle {
            self.conn.ticket.idle(now);
            self.conn.changed.notify_one();
        }
    }
}

/// The socket, reporting reads (a new request begins) and blocked writes to its connection, and
/// holding the connection's place under the caps for as long as it is open.
pub struct Guarded {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Guarded {
    pub fn new(stream: TcpStream, conn: Arc<Conn>) -> Self {
        Self { stream, conn }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.conn.on_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.conn.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
