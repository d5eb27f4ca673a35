//! How many connections terad holds: at most `max_connections`, and never so many that the
//! engine could not open a file. Every connection costs a file descriptor, and so does every
//! far-tier segment and log file; a flood of clients that used them all would make the
//! engine's next log file or segment fail to open, which poisons the database. So the
//! connection count is capped below the limit on open files (less the descriptors open at
//! start and a reserve, [`reserve_for`]), and a connection whose descriptor number comes
//! within the reserve of the limit is refused too; refused connections get an HTTP/2 GOAWAY
//! that says why, and are counted. The GOAWAY's code is ENHANCE_YOUR_CALM (overload): tonic
//! reports it as RESOURCE_EXHAUSTED when its request was already on the way, and UNAVAILABLE
//! or CANCELLED when the connection closed first. A connection holds its slot only while it is used: one that has not sent
//! HTTP/2's preface and first SETTINGS frame within `handshake_timeout_ms` is closed
//! ([`Counted`]), and one whose peer stops answering
//! HTTP/2 pings is closed by the server's keepalive. At start terad raises its soft limit on
//! open files to the hard one, as Go's runtime does for its servers.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tonic::transport::server::Connected;

/// Descriptors kept free for the engine (log and checkpoint files, new far segments, the
/// directories it syncs) and for terad's own files, at most: see [`reserve_for`].
pub const FD_RESERVE: u64 = 256;

/// The descriptors kept free under a limit of `nofile` open files: [`FD_RESERVE`], or a
/// quarter of the limit where that is smaller, so that a small limit still admits clients.
pub fn reserve_for(nofile: u64) -> u64 {
    FD_RESERVE.min(nofile / 4)
}

/// The descriptors this process has open (`/proc/self/fd`, less the one reading it).
pub fn open_descriptors() -> io::Result<u64> {
    let n = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(n.saturating_sub(1))
}

/// Refusals answered at once, each holding its socket for up to [`REFUSAL_LINGER`]; past it a
/// refused connection is closed without a word.
const MAX_REFUSING: usize = 64;
/// How long a refusal waits for the client to read the GOAWAY and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Raise the soft limit on open files to the hard limit (or to the kernel's `nr_open` where
/// the hard limit is above it, or unlimited); returns the soft limit in effect.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel refuses (EPERM) a soft limit above `nr_open`, an unlimited hard limit
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    // included, and a hard limit above it too: the second try lowers the hard limit to it.
    let second = nr_open.map(|n| n.min(lim.rlim_max));
    for (want, hard) in [
        (Some(lim.rlim_max), lim.rlim_max),
        (second, second.unwrap_or(0)),
    ] {
        let Some(want) = want.filter(|&w| w > lim.rlim_cur) else {
            continue;
        };
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct passed, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = want;
            break;
        }
    }
    Ok(lim.rlim_cur)
}

/// Why a connection was refused: the `reason` label of `terad_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` were open.
    MaxConnections,
    /// The connections open leave no room under the limit on open files, or the
    /// connection's descriptor came within the reserve of it.
    FileDescriptors,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::FileDescriptors => "file_descriptors",
        }
    }
}

/// The connection count and its limits, shared by the acceptor and every connection's
/// [`Slot`].
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    /// `max_connections`.
    max: usize,
    /// What the limit on open files leaves for connections: the limit, less the reserve and
    /// the descriptors open for other things ([`ConnLimit::rebase`]).
    room: AtomicUsize,
    /// The soft limit on open files. Descriptors are numbered lowest free first, so one
    /// numbered within the reserve of it means the reserve is being used.
    nofile: u64,
    reserve: u64,
    refusing: Arc<AtomicUsize>,
    /// Refusals that may hold their socket at once (a quarter of the reserve, at most 64).
    max_refusing: usize,
}

impl ConnLimit {
    /// A limit of `max` connections in a process that may open `nofile` files and has
    /// `open_now` open for other things.
    pub fn new(max: usize, nofile: u64, open_now: u64) -> Arc<ConnLimit> {
        let reserve = reserve_for(nofile);
        let limit = Arc::new(ConnLimit {
            open: AtomicUsize::new(0),
            max,
            room: AtomicUsize::new(0),
            nofile,
            reserve,
            refusing: Arc::new(AtomicUsize::new(0)),
            max_refusing: MAX_REFUSING.min(usize::try_from(reserve / 4).unwrap_or(0)),
        });
        limit.set_room(open_now);
        limit
    }

    fn set_room(&self, others: u64) {
        let room = self
            .nofile
            .saturating_sub(self.reserve)
            .saturating_sub(others);
        self.room
            .store(usize::try_from(room).unwrap_or(usize::MAX), Relaxed);
    }

    /// Count again what is open besides the connections (`open_fds`, as
    /// [`open_descriptors`] says, less the connections and refusals holding sockets): call
    /// once the database is open, whose files were still being opened at start.
    pub fn rebase(&self, open_fds: u64) {
        let sockets = (self.open.load(Relaxed) + self.refusing.load(Relaxed)) as u64;
        self.set_room(open_fds.saturating_sub(sockets));
    }

    /// The connections the limits allow at once: `max_connections`, or fewer where the limit
    /// on open files leaves less room.
    pub fn capacity(&self) -> usize {
        self.max.min(self.room.load(Relaxed))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Admit a connection whose socket has descriptor `fd`: a slot held as long as the
    /// connection lives, or why not. Only the acceptor admits, so the check and the count
    /// cannot race each other past the limit.
    pub fn admit(self: &Arc<Self>, fd: u64) -> Result<Slot, Refusal> {
        let open = self.open.load(Relaxed);
        if open >= self.max {
            return Err(Refusal::MaxConnections);
        }
        if open >= self.room.load(Relaxed) || fd.saturating_add(self.reserve) >= self.nofile {
            return Err(Refusal::FileDescriptors);
        }
        self.open.fetch_add(1, Relaxed);
        metrics::gauge!("terad_connections_open").increment(1.0);
        Ok(Slot(self.clone()))
    }

    /// Refuse `stream`: an HTTP/2 server preface and a GOAWAY (ENHANCE_YOUR_CALM) whose debug
    /// text says why, then close once the client has read it (or after [`REFUSAL_LINGER`]).
    /// Runs on a task of its own. Past `max_refusing` at once (a quarter of the reserve, so
    /// that lingering refusals leave most of it) the socket is just closed.
    pub fn refuse(&self, stream: tokio::net::TcpStream, why: Refusal) {
        metrics::counter!("terad_connections_refused_total", "reason" => why.label()).increment(1);
        if self.refusing.fetch_add(1, Relaxed) >= self.max_refusing {
            self.refusing.fetch_sub(1, Relaxed);
            return;
        }
        let text = match why {
            Refusal::MaxConnections => format!(
                "terad: too many connections (max_connections = {}); retry later",
                self.max
            ),
            Refusal::FileDescriptors => format!(
                "terad: too many open files (limit {}, {} kept for the database); retry later",
                self.nofile, self.reserve
            ),
        };
        let refusing = self.refusing.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, say_goaway(stream, &text)).await;
            refusing.fetch_sub(1, Relaxed);
        });
    }
}

/// Write the refusal and wait for the client to close. Closing with the client's preface
/// unread would reset the connection, and a reset can reach the client before the GOAWAY it
/// followed, so the client's bytes are read (and dropped) until it closes.
async fn say_goaway(mut s: tokio::net::TcpStream, text: &str) -> io::Result<()> {
    s.write_all(&goaway(text)).await?;
    s.shutdown().await?;
    let mut buf = [0u8; 1024];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// HTTP/2 error code ENHANCE_YOUR_CALM (RFC 9113 §7): the peer is generating excessive load.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A server connection preface (an empty SETTINGS frame) and a GOAWAY frame for no streams
/// (last stream id 0) with `text` as its debug data (RFC 9113 §3.4, §6.5, §6.8).
pub fn goaway(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + 9 + 8 + text.len());
    let frame = |out: &mut Vec<u8>, kind: u8, payload: &[u8]| {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(0); // flags
        out.extend_from_slice(&0u32.to_be_bytes()); // stream 0
        out.extend_from_slice(payload);
    };
    frame(&mut out, 0x4, &[]);
    let mut payload = Vec::with_capacity(8 + text.len());
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    payload.extend_from_slice(text.as_bytes());
    frame(&mut out, 0x7, &payload);
    out
}

/// One admitted connection's place in the count, given back when the connection ends.
#[derive(Debug)]
pub struct Slot(Arc<ConnLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        metrics::gauge!("terad_connections_open").decrement(1.0);
    }
}

/// A connection's stream with its [`Slot`]: what tonic serves, so that the slot is given back
/// when tonic drops the connection. Until the client's HTTP/2 preface and SETTINGS frame have
/// arrived, a read also waits on a deadline (`handshake_timeout_ms`): a connection that says
/// nothing, or a byte or two and then nothing, gets an error and is closed, instead of holding
/// its slot (and a graceful shutdown) for good.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _slot: Slot,
    handshake: Option<Handshake>,
}

/// The start of the client's side of an HTTP/2 connection, until it has all arrived: the
/// 24-byte preface and the SETTINGS frame that must follow it at once (RFC 9113 §3.4). Until
/// then the server's keepalive pings do not run, so the deadline is all that closes a
/// connection whose client sent a byte or two and stopped.
#[derive(Debug)]
struct Handshake {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The first bytes: the preface and the SETTINGS frame's 9-byte header.
    head: [u8; HANDSHAKE_HEAD],
    /// Bytes received so far.
    seen: usize,
}

/// The preface (24 bytes) and a frame header (9 bytes).
const HANDSHAKE_HEAD: usize = 24 + 9;

impl Handshake {
    /// Count bytes received; whether the preface and the whole SETTINGS frame are in.
    fn received(&mut self, bytes: &[u8]) -> bool {
        if self.seen < HANDSHAKE_HEAD {
            let copy = (HANDSHAKE_HEAD - self.seen).min(bytes.len());
            self.head[self.seen..self.seen + copy].copy_from_slice(&bytes[..copy]);
        }
        self.seen += bytes.len();
        if self.seen < HANDSHAKE_HEAD {
            return false;
        }
        let h = &self.head[24..];
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        self.seen >= HANDSHAKE_HEAD + len
    }
}

impl<IO> Counted<IO> {
    /// Call on the runtime that serves the connection (the deadline is its timer's).
    pub fn new(io: IO, slot: Slot, handshake_timeout: Duration) -> Self {
        Counted {
            io,
            _slot: slot,
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep(handshake_timeout)),
                head: [0; HANDSHAKE_HEAD],
                seen: 0,
            }),
        }
    }
}

impl<IO: AsRawFd> AsRawFd for Counted<IO> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(hs) = this.handshake.as_mut() {
            match r {
                // (`received` counts every byte that arrives; the match falls through while
                // the handshake is still incomplete.)
                Poll::Ready(Ok(()))
                    if buf.filled().len() > before && hs.received(&buf.filled()[before..]) =>
                {
                    this.handshake = None;
                }
                Poll::Pending if hs.deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not send its HTTP/2 preface and SETTINGS within \
                         handshake_timeout_ms",
                    )));
                }
                _ => {}
            }
        }
        r
    }
}

crate::batch::delegate_async_write!(Counted);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_admitted_up_to_the_limit_and_slots_come_back() {
        let limit = ConnLimit::new(2, 10_000, 10);
        assert_eq!(limit.capacity(), 2);
        let a = limit.admit(10).expect("first");
        let b = limit.admit(11).expect("second");
        assert_eq!(limit.open(), 2);
        assert_eq!(limit.admit(12).unwrap_err(), Refusal::MaxConnections);
        drop(a);
        assert_eq!(limit.open(), 1);
        let _c = limit.admit(12).expect("a slot came back");
        drop(b);
        assert_eq!(limit.open(), 1);
    }

    #[test]
    fn a_descriptor_too_near_the_process_limit_is_refused() {
        let limit = ConnLimit::new(10_000, 1024, 10);
        let _slot = limit
            .admit(1024 - FD_RESERVE - 1)
            .expect("below the reserve");
        assert_eq!(
            limit.admit(1024 - FD_RESERVE).unwrap_err(),
            Refusal::FileDescriptors
        );
        assert_eq!(limit.open(), 1, "a refusal takes no slot");
    }

    /// Descriptors are handed out lowest free first, so a low number does not prove there is
    /// room: the count of connections is capped below the limit as well, less what was open
    /// at start and the reserve. A small limit keeps a quarter, not 256.
    #[test]
    fn the_count_is_capped_by_what_the_open_file_limit_leaves() {
        let limit = ConnLimit::new(10_000, 1024, 700);
        assert_eq!(limit.capacity(), 1024 - 256 - 700);
        let slots: Vec<Slot> = (0..68).map(|i| limit.admit(10 + i).unwrap()).collect();
        assert_eq!(limit.admit(3).unwrap_err(), Refusal::FileDescriptors);
        drop(slots);
        assert_eq!(reserve_for(384), 96);
        assert_eq!(reserve_for(1 << 20), FD_RESERVE);
        let small = ConnLimit::new(10_000, 384, 40);
        assert_eq!(small.capacity(), 384 - 96 - 40);
        let _s = small.admit(200).expect("room under a small limit");
        let tiny = ConnLimit::new(10, 100, 90);
        assert_eq!(tiny.capacity(), 0);
        assert_eq!(tiny.admit(3).unwrap_err(), Refusal::FileDescriptors);
        // Counted again once more is open: 40 more descriptors besides 10 connections.
        let limit = ConnLimit::new(10_000, 1024, 700);
        let slots: Vec<Slot> = (0..10).map(|i| limit.admit(10 + i).unwrap()).collect();
        limit.rebase(700 + 10 + 40);
        assert_eq!(limit.capacity(), 1024 - 256 - 740);
        drop(slots);
    }

    /// A connection whose client says nothing gets an error from its read once the
    /// handshake deadline passes; one whose client spoke reads on without a deadline.
    #[tokio::test]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        let limit = ConnLimit::new(10, 10_000, 10);
        let deadline = Duration::from_millis(100);
        let (quiet, _quiet_peer) = tokio::io::duplex(64);
        let mut quiet = Counted::new(quiet, limit.admit(5).unwrap(), deadline);
        let mut buf = [0u8; 8];
        // (An outer bound, so that a broken deadline fails the test instead of hanging it.)
        let bounded = Duration::from_secs(10);
        let e = tokio::time::timeout(bounded, quiet.read(&mut buf))
            .await
            .expect("the deadline fired")
            .expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(quiet);
        assert_eq!(limit.open(), 0, "the slot came back");

        // A client that sends part of the preface and stops is closed the same way.
        let (part, mut peer) = tokio::io::duplex(64);
        let mut part = Counted::new(part, limit.admit(6).unwrap(), deadline);
        peer.write_all(b"PRI").await.unwrap();
        assert_eq!(part.read(&mut buf).await.unwrap(), 3);
        let e = tokio::time::timeout(bounded, part.read(&mut buf))
            .await
            .expect("the deadline fired")
            .expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("preface and SETTINGS"), "{e}");
        drop((part, peer));

        // The preface and a SETTINGS frame of 6 bytes (one setting), sent in pieces: no
        // deadline once the frame's last byte is in.
        let (talk, mut peer) = tokio::io::duplex(64);
        let mut talk = Counted::new(talk, limit.admit(7).unwrap(), deadline);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        let mut got = 0;
        for piece in hello.chunks(5) {
            peer.write_all(piece).await.unwrap();
            got += talk.read(&mut buf).await.unwrap();
        }
        assert_eq!(got, hello.len());
        let slow = tokio::time::timeout(deadline * 4, talk.read(&mut buf)).await;
        assert!(slow.is_err(), "no deadline once the handshake is in");
    }

    /// The handshake is complete only with the SETTINGS frame's payload, however the bytes
    /// arrive.
    #[test]
    fn the_handshake_counts_the_preface_and_the_settings_frame() {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        hello.extend_from_slice(&[1; 12]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        for split in 0..hello.len() {
            let mut hs = Handshake {
                deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
                head: [0; HANDSHAKE_HEAD],
                seen: 0,
            };
            let (a, b) = hello.split_at(split);
            let first = hs.received(a);
            assert_eq!(first, split == hello.len(), "{split}");
            assert!(hs.received(b) || b.is_empty() && first, "{split}");
        }
    }

    /// The frames, byte by byte, as RFC 9113 lays them out.
    #[test]
    fn the_refusal_is_a_settings_frame_and_a_goaway_with_the_reason() {
        let b = goaway("why");
        assert_eq!(&b[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0], "empty SETTINGS");
        assert_eq!(
            &b[9..18],
            &[0, 0, 11, 7, 0, 0, 0, 0, 0],
            "GOAWAY of 11 bytes"
        );
        assert_eq!(&b[18..22], &[0, 0, 0, 0], "last stream 0");
        assert_eq!(&b[22..26], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
        assert_eq!(&b[26..], b"why");
    }

    #[test]
    fn the_soft_limit_on_open_files_is_raised_to_the_hard_one() {
        let soft = raise_nofile_limit().expect("getrlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(
            lim.rlim_cur, lim.rlim_max,
            "raised to the hard limit (or both to nr_open)"
        );
    }
}
