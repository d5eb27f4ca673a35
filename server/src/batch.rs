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
//! (a safety net: h2 reads every turn) write the buffer out at once. Between batches a
//! connection keeps at most [`KEEP_BYTES`] of buffer (32 MiB over terad's default 4,096
//! connections); larger buffers go back to a pool of the I/O thread's, and the next batch
//! takes one with room for as much as the connection's last batch. A connection dropped
//! with bytes held sends what its socket takes, without waiting.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// `AsyncWrite` for a wrapper whose `io` field does the writing: every method delegates,
/// `poll_write_vectored` and `is_write_vectored` included (HTTP/2 writes a batch with one
/// `writev` only if the stream says it can).
macro_rules! delegate_async_write {
    ($wrapper:ident) => {
        impl<IO: ::tokio::io::AsyncWrite + Unpin> ::tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
            fn poll_flush(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }
            fn poll_shutdown(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use delegate_async_write;

/// The most bytes held back: past this a write first sends what is held (and waits for the
/// socket if it is full). A write of more than this goes straight to the socket once nothing
/// is held, so the buffer never holds more than this.
pub const BATCH_MAX: usize = 256 * 1024;

/// Flushes put off in a row with no read in between before one writes the buffer out: a
/// safety net (h2 reads at the start of every turn). h2 flushes once per frame of 256 bytes
/// or more, so a batch reaches [`BATCH_MAX`] first.
pub const MAX_DEFERS: u32 = 1024;

/// A buffer of at most this capacity stays with its connection once its batch is sent; a
/// larger one goes back to its thread's pool ([`POOL_MAX`] buffers), so that a connection
/// holds no more than this between batches (terad serves up to `max_connections` of them),
/// and busy connections reuse buffers instead of allocating one per batch.
pub const KEEP_BYTES: usize = 8 * 1024;

/// Buffers a thread keeps for its connections' next batches.
pub const POOL_MAX: usize = 8;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool (or a new one) with room for `want` bytes.
fn take_buf(want: usize) -> Vec<u8> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.reserve(want);
    v
}

/// Give `v` (emptied) to this thread's pool, unless the pool is full, `v` is small, or it
/// grew past a batch (one write larger than BATCH_MAX went through it).
fn give_buf(mut v: Vec<u8>) {
    v.clear();
    if v.capacity() > KEEP_BYTES && v.capacity() <= 2 * BATCH_MAX {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(v);
            }
        });
    }
}

/// A stream whose writes are batched until its reader's next turn (see the module's docs).
#[derive(Debug)]
pub struct Batched<IO: AsyncWrite + Unpin> {
    io: IO,
    /// Bytes accepted from writes and not yet sent: `buf[sent..]`.
    buf: Vec<u8>,
    sent: usize,
    /// Flushes put off since the last read.
    defers: u32,
    /// Whether the task was woken for this turn's put-off flushes.
    woken: bool,
    /// Whether the last send left bytes because the socket was full: the socket then wakes
    /// the task when it has room, and a put-off flush must not (the task would spin).
    stalled: bool,
    /// The size of the last batch sent: what a new buffer reserves.
    last: usize,
}

impl<IO: AsyncWrite + Unpin> Batched<IO> {
    pub fn new(io: IO) -> Self {
        Batched {
            io,
            buf: Vec::new(),
            sent: 0,
            defers: 0,
            woken: false,
            stalled: false,
            last: 0,
        }
    }

    /// Bytes written to this stream and not yet sent.
    pub fn held(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Send everything held; `Pending` (with the task registered for the socket) while the
    /// socket is full.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Pending => {
                    self.stalled = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
            }
        }
        self.stalled = false;
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.last = self.buf.len();
        self.sent = 0;
        if self.buf.capacity() > KEEP_BYTES {
            give_buf(std::mem::take(&mut self.buf));
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection dropped with bytes held (the drain's timeout, a peer that closed its side
/// first) sends what its socket takes at once, without waiting: answers already complete
/// are not lost for want of a flush.
impl<IO: AsyncWrite + Unpin> Drop for Batched<IO> {
    fn drop(&mut self) {
        if self.held() > 0 {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_send_held(&mut cx);
        }
    }
}

impl<IO: AsyncWrite + Unpin + AsRawFd> AsRawFd for Batched<IO> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

impl<IO: AsyncWrite + Unpin + Connected> Connected for Batched<IO> {
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
        this.woken = false;
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
        if this.sent > 0 {
            // Part of the batch went out before the socket filled: drop that part, so that
            // the buffer holds only what is still to send (at most BATCH_MAX).
            this.buf.drain(..this.sent);
            this.sent = 0;
        }
        if this.held() + n > BATCH_MAX {
            ready!(this.poll_send_held(cx))?;
            if n > BATCH_MAX {
                // Nothing is held now, and this write alone is past the cap: straight through.
                return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
            }
        }
        if this.buf.capacity() - this.buf.len() < n {
            // Once per batch, as large as the last one was (at most BATCH_MAX).
            let want = n.max(this.last.min(BATCH_MAX));
            if this.buf.is_empty() {
                give_buf(std::mem::replace(&mut this.buf, take_buf(want)));
            } else {
                this.buf.reserve(want);
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

    /// Put off while bytes are held (the task is woken, or the full socket wakes it when it
    /// has room, and its next read sends them), up to [`MAX_DEFERS`] in a row.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() > 0 {
            if this.defers < MAX_DEFERS {
                if !this.woken && !this.stalled {
                    cx.waker().wake_by_ref();
                    this.woken = true;
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

delegate_async_write!(ReadAhead);

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
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(readable(&mut peer).len(), 0);
        b.write_all(b"!").await.unwrap();
        assert!(flush(&mut b, &count).is_ready());
        assert_eq!(readable(&mut peer).len(), MAX_DEFERS as usize + 1);
    }

    /// Between batches a connection keeps at most KEEP_BYTES of buffer, and a new batch
    /// reserves the size of the last one at once.
    #[tokio::test]
    async fn a_sent_batch_gives_its_buffer_back() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut b = Batched::new(ours);
        b.write_all(&[7; 100_000]).await.unwrap();
        assert!(b.buf.capacity() >= 100_000);
        let waker = Waker::noop();
        let mut buf = [0u8; 8];
        let mut rb = ReadBuf::new(&mut buf);
        let _ = Pin::new(&mut b).poll_read(&mut Context::from_waker(waker), &mut rb);
        assert_eq!(readable(&mut peer).len(), 100_000);
        assert_eq!(b.buf.capacity(), 0, "given back");
        b.write_all(&[8; 10]).await.unwrap();
        assert!(b.buf.capacity() >= 100_000, "sized as the last batch");
        let mut rb = ReadBuf::new(&mut buf);
        let _ = Pin::new(&mut b).poll_read(&mut Context::from_waker(waker), &mut rb);
        b.write_all(&[9; 10]).await.unwrap();
        let mut rb = ReadBuf::new(&mut buf);
        let _ = Pin::new(&mut b).poll_read(&mut Context::from_waker(waker), &mut rb);
        assert!(
            b.buf.capacity() <= KEEP_BYTES,
            "small batches keep a small buffer"
        );
        assert_eq!(readable(&mut peer), [[8u8; 10], [9u8; 10]].concat());
    }

    /// A connection dropped with bytes held sends what its socket takes.
    #[tokio::test]
    async fn a_dropped_connection_sends_what_it_held() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut b = Batched::new(ours);
        b.write_all(b"complete answer").await.unwrap();
        assert_eq!(readable(&mut peer), b"");
        drop(b);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"complete answer");
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

    /// With the socket full, a put-off flush does not wake the task (the socket will, when
    /// it has room): no spinning while a peer is slow to read.
    #[tokio::test]
    async fn a_full_socket_wakes_the_task_and_a_flush_does_not() {
        let (ours, mut peer) = tokio::io::duplex(16);
        let mut b = Batched::new(ours);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        b.write_all(&[5; 100]).await.unwrap();
        let waker = Waker::from(count.clone());
        let mut buf = [0u8; 8];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut b)
            .poll_read(&mut Context::from_waker(&waker), &mut rb)
            .is_pending());
        assert_eq!(b.held(), 100 - 16, "the socket took 16 bytes");
        let before = count.0.load(Ordering::SeqCst);
        assert!(flush(&mut b, &count).is_ready());
        assert!(flush(&mut b, &count).is_ready());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            before,
            "no wake from a flush"
        );
        // The peer reads: the socket wakes the task, whose next read sends more.
        assert_eq!(readable(&mut peer).len(), 16);
        assert!(
            count.0.load(Ordering::SeqCst) > before,
            "woken by the socket"
        );
        let mut got = 16;
        while got < 100 {
            let mut rb = ReadBuf::new(&mut buf);
            let _ = Pin::new(&mut b).poll_read(&mut Context::from_waker(&waker), &mut rb);
            got += readable(&mut peer).len();
        }
        assert_eq!(b.held(), 0);
    }

    /// A peer that reads slowly: writes wait for room (the buffer never holds more than
    /// BATCH_MAX, nor grows past it with bytes already sent), and every byte arrives in
    /// order.
    #[tokio::test]
    async fn a_slow_peer_gets_every_byte_in_order() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut b = Batched::new(ours);
        let writer = tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..2000u32 {
                let chunk = vec![i as u8; (i as usize * 37) % 3000 + 1];
                b.write_all(&chunk).await.unwrap();
                assert!(b.buf.len() <= BATCH_MAX, "{}", b.buf.len());
                assert!(b.buf.capacity() <= 2 * BATCH_MAX, "{}", b.buf.capacity());
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
