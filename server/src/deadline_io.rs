//! Deadlines on a connection's bytes. hyper times out only the reading of a request
//! head, so a peer that stops reading our answers (or goes quiet in any state hyper
//! puts no timer on) keeps its connection slot forever: 1,030 peers that pipelined
//! requests and never read held the whole connection limit.
//!
//! [`DeadlineIo`] wraps the stream hyper serves (TCP, or TLS over TCP) and fails its
//! I/O with [`std::io::ErrorKind::TimedOut`], which makes hyper drop the connection:
//! - **write timeout**: the timer starts when a write or flush first has to wait for
//!   the peer, and stops only when a flush completes. A peer that reads a byte now
//!   and then therefore cannot keep a stalled answer alive;
//! - **idle timeout**: no byte moved either way for that long.
//!
//! While written data waits for the peer, it also refuses to read: a peer that
//! pipelines requests and never reads cannot make the server read, answer and buffer
//! request after request. What such a peer can make us hold is what hyper has already
//! read (bounded by its `max_buf_size`), the answer in hyper's write buffer and the
//! kernel's socket buffers, for at most the write timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

/// The two limits, from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Longest time written data may wait for the peer to read it.
    pub write: Duration,
    /// Longest time without a byte read or written.
    pub idle: Duration,
}

/// A stream whose stalled writes and idle periods end in `TimedOut` errors.
#[derive(Debug)]
pub struct DeadlineIo<T> {
    inner: T,
    limits: Deadlines,
    /// When a byte last moved. The idle timer is re-armed from it only when it fires,
    /// so a busy connection costs one clock read per I/O call, not a timer update.
    last_progress: Instant,
    idle: Pin<Box<Sleep>>,
    /// Armed while written data waits for the peer (allocated on the first stall).
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// The reader that was refused during a stall, woken when the stall ends.
    read_waker: Option<Waker>,
}

impl<T> DeadlineIo<T> {
    /// Wraps `inner`; the idle timer starts now.
    pub fn new(inner: T, limits: Deadlines) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            last_progress: now,
            idle: Box::pin(sleep_until(now + limits.idle)),
            stall: None,
            stalled: false,
            read_waker: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Registers the idle timer with `cx`; an error once it has really expired.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_progress + self.limits.idle;
            if deadline <= Instant::now() {
                return Err(timed_out("no byte moved for the idle timeout"));
            }
            // Traffic since the timer was set: wait for the rest of the period.
            self.idle.as_mut().reset(deadline);
        }
        Ok(())
    }

    /// Called when a write, flush or shutdown waits: starts the write timer if it is
    /// not running, registers it with `cx`, and fails once it has expired.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = Instant::now() + self.limits.write;
        let stall = match &mut self.stall {
            Some(s) => {
                if !self.stalled {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self.stall.insert(Box::pin(sleep_until(deadline))),
        };
        self.stalled = true;
        if stall.as_mut().poll(cx).is_ready() {
            return Err(timed_out("the peer did not read our answer within the write timeout"));
        }
        Ok(())
    }

    /// Everything written reached the kernel: reads may go on.
    fn unstall(&mut self) {
        if self.stalled {
            self.stalled = false;
            if let Some(w) = self.read_waker.take() {
                w.wake();
            }
        }
    }
}

fn timed_out(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, why)
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalled {
            // No new requests while the peer leaves our answers unread.
            this.read_waker = Some(cx.waker().clone());
            this.poll_stall(cx)?;
            return Poll::Pending;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.poll_idle(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                this.unstall();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.poll_stall(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => {
                this.poll_stall(cx)?;
                Poll::Pending
            }
            done => done,
        }
    }
}

impl<T> DeadlineIo<T> {
    fn after_write(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                // Progress, but the stall (if any) ends only with a completed flush.
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.poll_stall(cx)?;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Deadlines = Deadlines { write: Duration::from_secs(10), idle: Duration::from_secs(30) };

    fn kind<T>(r: io::Result<T>) -> Option<io::ErrorKind> {
        r.err().map(|e| e.kind())
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_peer_never_reads_times_out() {
        let (server, _peer) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, LIMITS);
        let started = Instant::now();
        let r = io.write_all(&[7; 4096]).await;
        assert_eq!(kind(r), Some(io::ErrorKind::TimedOut));
        assert_eq!(started.elapsed(), LIMITS.write, "paused clock: exactly the write timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_reading_a_byte_now_and_then_does_not_restart_the_write_timer() {
        let (server, mut peer) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            while peer.read(&mut byte).await.is_ok_and(|n| n == 1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut io = DeadlineIo::new(server, LIMITS);
        let started = Instant::now();
        let r = async {
            io.write_all(&[7; 4096]).await?;
            io.flush().await
        }
        .await;
        assert_eq!(kind(r), Some(io::ErrorKind::TimedOut));
        assert!(started.elapsed() <= LIMITS.write + Duration::from_secs(1), "{:?}", started.elapsed());
        drop(io);
        trickle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reads_wait_while_an_answer_is_stalled_and_resume_after_the_flush() {
        let (server, mut peer) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, LIMITS);
        peer.write_all(b"next request").await.unwrap();
        // Fill the pipe: the write waits, the stall starts.
        let big = [7u8; 256];
        let n = io.write(&big).await.unwrap();
        let write = tokio::time::timeout(Duration::from_secs(1), io.write_all(&big[n..])).await;
        assert!(write.is_err(), "the pipe is full");
        let mut got = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(1), io.read(&mut got)).await;
        assert!(read.is_err(), "no reading while our answer is stalled");
        // The peer drains; once everything is flushed, the waiting read goes on.
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 256];
            peer.read_exact(&mut sink).await.unwrap();
            peer
        });
        io.write_all(&big[n..]).await.unwrap();
        io.flush().await.unwrap();
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"next request");
        drop(drain.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_times_out_and_traffic_keeps_it_open() {
        let (server, mut peer) = tokio::io::duplex(64);
        let mut io = DeadlineIo::new(server, LIMITS);
        let mut byte = [0u8; 1];
        for _ in 0..5 {
            // Traffic every 20 s: the 30 s idle timer never expires.
            tokio::time::sleep(Duration::from_secs(20)).await;
            peer.write_all(b"x").await.unwrap();
            io.read_exact(&mut byte).await.unwrap();
        }
        let started = Instant::now();
        assert_eq!(kind(io.read(&mut byte).await), Some(io::ErrorKind::TimedOut));
        assert_eq!(started.elapsed(), LIMITS.idle);
    }
}
