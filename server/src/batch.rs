//! Write batching for a served connection: the answers that one turn of the connection's
//! HTTP/2 task writes leave in one system call, however large they are.
//!
//! h2 writes a frame of 256 bytes or more (a listing's DATA frame) straight from the
//! answer's buffer and flushes before it takes the next frame, so each listing cost a
//! `writev` and a loopback delivery of its own. [`Batched`] takes what h2 writes into a
//! buffer of its own (up to [`BATCH_MAX`]), and a flush while the buffer holds bytes is put
//! off until h2 next reads from the connection, which it does at the start of every turn
//! of its task: the flush wakes the task, so that turn comes as soon as the thread has run
//! the other tasks that were ready (the handlers whose answers then join the batch). Bytes
//! therefore wait at most one turn of the I/O thread, never for the peer. A shutdown, a
//! buffer over [`BATCH_MAX`], or [`MAX_DEFERS`] flushes in a row with no read in between
//! (a safety net: h2 reads every turn) write the buffer out at once.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The most bytes held back: past this a write first sends what is held (and waits for the
/// socket if it is full), so a connection's buffer never holds more than this plus one
/// write.
pub const BATCH_MAX: usize = 256 * 1024;

/// Flushes put off in a row with no read in between before one writes the buffer out.
pub const MAX_DEFERS: u32 = 64;

/// A stream whose writes are batched until its reader's next turn (see the module's docs).
#[derive(Debug)]
pub struct Batched<IO> {
    io: IO,
    /// Bytes accepted from writes and not yet sent: `buf[sent..]`.
    buf: Vec<u8>,
    sent: usize,
    /// Flushes put off since the last read, and whether the task was woken for them.
    defers: u32,
}

impl<IO> Batched<IO> {
    pub fn new(io: IO) -> Self {
        Batched {
            io,
            buf: Vec::new(),
            sent: 0,
            defers: 0,
        }
    }

    /// Bytes written to this stream and not yet sent.
    pub fn held(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncWrite + Unpin> Batched<IO> {
    /// Send everything held; `Pending` (with the task registered for the socket) while the
    /// socket is full.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > 2 * BATCH_MAX {
            // One write larger than the batch grew it: give that back.
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsRawFd> AsRawFd for Batched<IO> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

impl<IO: Connected> Connected for Batched<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<IO> {
    /// A read is the start of a new turn: what earlier turns wrote is sent first (as much
    /// as the socket takes; the rest waits for the next write, read or flush).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.defers = 0;
        if this.held() > 0 {
            if let Poll::Ready(Err(e)) = this.poll_send_held(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        if this.held() + n > BATCH_MAX {
            ready!(this.poll_send_held(cx))?;
            if n > BATCH_MAX {
                // Nothing is held now, and this write alone is past the cap: straight through.
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Put off while bytes are held (the task is woken, and its next read sends them), up to
    /// [`MAX_DEFERS`] in a row.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() > 0 {
            if this.defers < MAX_DEFERS {
                if this.defers == 0 {
                    cx.waker().wake_by_ref();
                }
                this.defers += 1;
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_send_held(cx))?;
            this.defers = 0;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The most bytes one read of [`ReadAhead`] asks the socket for.
pub const READ_AHEAD: usize = 64 * 1024;

/// A stream whose reads ask the socket for up to [`READ_AHEAD`] bytes and hand them out
/// from memory: h2 reads a frame's header and then the rest of the frame, so a batch of
/// answers otherwise took two `recv` calls per answer (`teractl bench` uses it; terad's
/// reads are requests, small and already read many at a time).
#[derive(Debug)]
pub struct ReadAhead<IO> {
    io: IO,
    /// Bytes read and not yet handed out: `buf[at..]`.
    buf: Box<[u8]>,
    at: usize,
    end: usize,
}

impl<IO> ReadAhead<IO> {
    pub fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: vec![0; READ_AHEAD].into_boxed_slice(),
            at: 0,
            end: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at == this.end {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            this.at = 0;
            this.end = rb.filled().len();
        }
        let n = out.remaining().min(this.end - this.at);
        out.put_slice(&this.buf[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the peer can read without waiting.
    fn readable(peer: &mut DuplexStream) -> Vec<u8> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *peer).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    out.extend_from_slice(rb.filled())
                }
                _ => return out,
            }
        }
    }

    fn flush(b: &mut Batched<DuplexStream>, waker: &Arc<Count>) -> Poll<io::Result<()>> {
        let waker = Waker::from(waker.clone());
        Pin::new(b).poll_flush(&mut Context::from_waker(&waker))
    }

    /// A flush with bytes held is put off and wakes the task once; the next read sends
    /// everything written meanwhile, in one piece.
    #[tokio::test]
    async fn a_flush_is_put_off_until_the_next_read_and_wakes_the_task() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut b = Batched::new(ours);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        b.write_all(b"first answer").await.unwrap();
        assert!(flush(&mut b, &count).is_ready());
        b.write_all(b", second").await.unwrap();
        assert!(flush(&mut b, &count).is_ready());
        assert_eq!(
            readable(&mut peer),
            b"",
            "nothing sent before the next read"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once for the turn");
        assert_eq!(b.held(), 20);
        // The next turn's read sends what is held (and finds nothing to read yet).
        let waker = Waker::noop();
        let mut buf = [0u8; 8];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut b)
            .poll_read(&mut Context::from_waker(waker), &mut rb)
            .is_pending());
        assert_eq!(readable(&mut peer), b"first answer, second");
        assert_eq!(b.held(), 0);
        // With nothing held a flush is the stream's own, and wakes no one.
        assert!(flush(&mut b, &count).is_ready());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// The safety net: with no read, the flush after MAX_DEFERS put-off ones sends.
    #[tokio::test]
    async fn flushes_without_a_read_send_after_max_defers() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut b = Batched::new(ours);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        for i in 0..MAX_DEFERS {
            b.write_all(&[i as u8]).await.unwrap();
            assert!(flush(&mut b, &count).is_ready());
        }
        assert_eq!(readable(&mut peer).len(), 0);
        b.write_all(b"!").await.unwrap();
        assert!(flush(&mut b, &count).is_ready());
        assert_eq!(readable(&mut peer).len(), MAX_DEFERS as usize + 1);
    }

    /// A shutdown sends what is held first; so does a write that would take the batch past
    /// BATCH_MAX, and one larger than BATCH_MAX goes straight through after it.
    #[tokio::test]
    async fn shutdown_and_a_full_batch_send_what_is_held() {
        let (ours, mut peer) = tokio::io::duplex(4 << 20);
        let mut b = Batched::new(ours);
        b.write_all(b"held").await.unwrap();
        b.shutdown().await.unwrap();
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"held");

        let (ours, mut peer) = tokio::io::duplex(4 << 20);
        let mut b = Batched::new(ours);
        b.write_all(&[1; BATCH_MAX - 10]).await.unwrap();
        assert_eq!(readable(&mut peer).len(), 0);
        b.write_all(&[2; 20]).await.unwrap();
        assert_eq!(readable(&mut peer), vec![1; BATCH_MAX - 10]);
        // Straight through (a socket may take part of it; the rest is a write of its own).
        b.write_all(&[3; BATCH_MAX + 1]).await.unwrap();
        let got = readable(&mut peer);
        assert!(
            got.len() > 20 + BATCH_MAX / 2,
            "sent, not held: {}",
            got.len()
        );
        b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        let all = [got, rest].concat();
        assert_eq!(all.len(), 20 + BATCH_MAX + 1);
        assert!(all[..20].iter().all(|&x| x == 2) && all[20..].iter().all(|&x| x == 3));
    }

    /// A peer that reads slowly: writes wait for room (the batch never holds more than
    /// BATCH_MAX plus one write), and every byte arrives in order.
    #[tokio::test]
    async fn a_slow_peer_gets_every_byte_in_order() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut b = Batched::new(ours);
        let writer = tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..2000u32 {
                let chunk = vec![i as u8; (i as usize * 37) % 3000 + 1];
                b.write_all(&chunk).await.unwrap();
                assert!(b.held() <= BATCH_MAX + 3000);
                if i % 7 == 0 {
                    b.flush().await.unwrap();
                }
                sent.extend_from_slice(&chunk);
            }
            b.shutdown().await.unwrap();
            sent
        });
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, writer.await.unwrap());
    }

    proptest! {
        /// ReadAhead hands out exactly the bytes written, in order, whatever the sizes of
        /// the writes and of the reads.
        #[test]
        fn read_ahead_hands_out_every_byte_in_order(
            writes in proptest::collection::vec(1usize..100_000, 1..12),
            reads in proptest::collection::vec(1usize..100_000, 1..12),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (mut peer, ours) = tokio::io::duplex(1 << 16);
                let mut sent = Vec::new();
                for (i, n) in writes.iter().enumerate() {
                    sent.extend((0..*n).map(|j| (i * 31 + j) as u8));
                }
                let all = sent.clone();
                let w = tokio::spawn(async move {
                    peer.write_all(&all).await.unwrap();
                    peer.shutdown().await.unwrap();
                });
                let mut r = ReadAhead::new(ours);
                let mut got = Vec::new();
                let mut i = 0;
                loop {
                    let mut buf = vec![0; reads[i % reads.len()]];
                    i += 1;
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                w.await.unwrap();
                assert_eq!(got, sent);
            });
        }
    }
}
