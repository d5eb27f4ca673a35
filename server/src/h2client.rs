//! A lean HTTP/2 transport for `teractl bench`: [`H2Channel`], a tower service that sends
//! each gRPC call of tonic's generated clients straight onto one HTTP/2 connection of the
//! `h2` crate.
//!
//! Why not tonic's `Channel`: client and server share the machine in the benchmark,
//! so every microsecond the load generator spends is one terad does not get. A `Channel`
//! passes each call through a buffer task (a queue and a wake-up), hyper's dispatch task (a
//! second queue) and a task spawned per call to send the request body; profiles of teractl
//! at concurrency 400 put a quarter of its CPU there. [`H2Channel`] opens the stream, sends the
//! encoded message from the calling task and hands back the response stream as the body:
//! tonic still encodes, decodes and reads the status. [`H2Channel::unary_bytes`] goes
//! further for the calls the bench times: no tonic at all, the request's message in and the
//! answer's message out. It serves the bench's unary calls (a
//! request body is sent whole before the response is awaited, so a bidirectional stream would
//! stall); teractl's commands keep tonic's `Channel`.

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http_body::{Body, Frame};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The error of a call or a response body: the connection's, or the request body's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection to terad. Clones share the connection (each clone may have one
/// stream waiting for the server's stream limit); the connection is driven by a task on the
/// runtime that made it, and closes when every clone is dropped.
#[derive(Clone)]
pub struct H2Channel {
    send: h2::client::SendRequest<Bytes>,
    authority: Authority,
    timeout: Duration,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
    /// The connection's error once `poll_ready` has seen it: each call then fails with it
    /// (UNAVAILABLE) instead of the readiness check, so every method reports it alike.
    lost: Option<Arc<str>>,
}

impl std::fmt::Debug for H2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Channel")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Stream and connection flow-control windows: hyper's client defaults, so that the
/// responses of both transports flow alike.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

impl H2Channel {
    /// Connect to `url` (`http://host:port`; terad speaks cleartext HTTP/2 only). A call whose
    /// response headers do not come within `timeout` fails with DEADLINE_EXCEEDED and its
    /// stream is reset (a `Channel` built by `client::connect` stops waiting too, with
    /// CANCELLED). Once the connection is lost, every call fails with UNAVAILABLE.
    pub async fn connect(url: &str, timeout: Duration) -> Result<H2Channel, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("server address {url:?}: {e}"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(format!(
                "server address {url:?}: the bench speaks http:// (cleartext HTTP/2) only"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("server address {url:?} names no host"))?;
        // An IPv6 host comes in brackets, which a lookup does not take.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = (host, authority.port_u16().unwrap_or(80));
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot connect to {url}: {e} (is terad running? see --server)")
        };
        let tcp =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|e| cannot(&e))?
                .map_err(|e| cannot(&e))?;
        tcp.set_nodelay(true).map_err(|e| cannot(&e))?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(crate::batch::ReadAhead::new(tcp))
            .await
            .map_err(|e| cannot(&e))?;
        // A connection error reaches every call on it as that call's error.
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            flag.store(true, Ordering::Release);
        });
        Ok(H2Channel {
            send,
            authority,
            timeout,
            closed,
            lost: None,
        })
    }

    /// Whether the connection has ended (terad closed it, or it failed): no call on it can
    /// succeed any more.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl H2Channel {
    /// One unary call without tonic's client machinery: `message` is the request's encoded
    /// protobuf message, `headers` go out with the call (authorization, `grpc-timeout`), and
    /// the answer is the response's message, undecoded, or the call's status as tonic's
    /// clients report it (`grpc-status` from the trailers, or from a trailers-only answer;
    /// a stream or connection error mapped as tonic maps it). The answer is not copied when
    /// it arrives in one DATA frame. What `teractl bench` calls for the operations it times.
    pub async fn unary_bytes(
        &mut self,
        path: &'static str,
        headers: &http::HeaderMap,
        message: &[u8],
    ) -> Result<Bytes, tonic::Status> {
        if let Some(e) = &self.lost {
            return Err(lost(e));
        }
        let h2err = |e: h2::Error| tonic::Status::from_error(Box::new(e));
        poll_fn(|cx| self.send.poll_ready(cx)).await.map_err(|e| {
            let s = lost(&e);
            self.lost = Some(e.to_string().into());
            s
        })?;
        let uri = Uri::from_parts({
            let mut u = http::uri::Parts::default();
            u.scheme = Some(Scheme::HTTP);
            u.authority = Some(self.authority.clone());
            u.path_and_query = Some(http::uri::PathAndQuery::from_static(path));
            u
        })
        .map_err(|e| tonic::Status::internal(format!("request URI: {e}")))?;
        let mut req = http::Request::post(uri)
            .body(())
            .map_err(|e| tonic::Status::internal(format!("request: {e}")))?;
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        for (k, v) in headers {
            h.append(k, v.clone());
        }
        let (response, mut stream) = self.send.send_request(req, false).map_err(h2err)?;
        let len = u32::try_from(message.len())
            .map_err(|_| tonic::Status::invalid_argument("request message over 4 GiB"))?;
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0); // not compressed
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(message);
        stream.send_data(framed.into(), true).map_err(h2err)?;
        let timeout = self.timeout;
        // As for tonic's calls (see `call`): the timeout covers the answer's headers.
        let response = tokio::time::timeout(timeout, response)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded(format!("no answer within {timeout:?}")))?
            .map_err(h2err)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(tonic::Status::from_header_map(&parts.headers)
                .unwrap_or_else(|| status_of_http(parts.status)));
        }
        // A trailers-only answer: the status is in the headers, and there is no message.
        if let Some(s) = tonic::Status::from_header_map(&parts.headers) {
            return Err(if s.code() == tonic::Code::Ok {
                tonic::Status::internal("an answer with status OK and no message")
            } else {
                s
            });
        }
        let mut first: Option<Bytes> = None;
        let mut rest = bytes::BytesMut::new();
        while let Some(data) = poll_fn(|cx| body.poll_data(cx)).await {
            let data = data.map_err(h2err)?;
            let _ = body.flow_control().release_capacity(data.len());
            if rest.len() + first.as_ref().map_or(0, Bytes::len) + data.len() > MAX_ANSWER + 5 {
                return Err(tonic::Status::out_of_range(format!(
                    "an answer over {MAX_ANSWER} bytes"
                )));
            }
            match &first {
                None if rest.is_empty() => first = Some(data),
                _ => {
                    if let Some(f) = first.take() {
                        rest.extend_from_slice(&f);
                    }
                    rest.extend_from_slice(&data);
                }
            }
        }
        let trailers = poll_fn(|cx| body.poll_trailers(cx)).await.map_err(h2err)?;
        match trailers.as_ref().and_then(tonic::Status::from_header_map) {
            Some(s) if s.code() == tonic::Code::Ok => {}
            Some(s) => return Err(s),
            // As tonic: a 200 answer without a status is UNKNOWN.
            None => {
                return Err(tonic::Status::unknown(
                    "the answer ended without grpc-status",
                ))
            }
        }
        let all = first.unwrap_or_else(|| rest.freeze());
        grpc_message(all)
    }
}

/// The status of a call on a connection that is lost (`why`).
fn lost(why: &dyn std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(format!("the connection to terad is lost: {why}"))
}

/// The largest answer `unary_bytes` takes (the bench's tonic clients' decoding limit).
const MAX_ANSWER: usize = 64 << 20;

/// The status tonic gives an answer whose HTTP status is not 200 and that carries no
/// `grpc-status` (the gRPC spec's mapping of HTTP to gRPC codes).
fn status_of_http(status: http::StatusCode) -> tonic::Status {
    use tonic::Code;
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    tonic::Status::new(code, format!("HTTP status {status} from terad"))
}

/// The one message of a unary answer's body: a gRPC frame (flag byte 0, length `u32`
/// big-endian, the message) and nothing after it (stricter than tonic, which reads the
/// first message of a unary answer and drops the rest: the bench checks what it gets).
fn grpc_message(body: Bytes) -> Result<Bytes, tonic::Status> {
    let bad = |why: &str| tonic::Status::internal(format!("a malformed answer: {why}"));
    if body.len() < 5 {
        return Err(bad("no message frame"));
    }
    if body[0] != 0 {
        return Err(bad("a compressed message (none was asked for)"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != len {
        return Err(bad(&format!(
            "a frame of {len} bytes in a body of {}",
            body.len() - 5
        )));
    }
    Ok(body.slice(5..))
}

impl<B> Service<http::Request<B>> for H2Channel
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<H2Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.lost.is_none() {
            if let Err(e) = ready!(self.send.poll_ready(cx)) {
                self.lost = Some(e.to_string().into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(e) = &self.lost {
            let s = lost(e);
            return Box::pin(std::future::ready(Err(BoxError::from(s))));
        }
        let (mut parts, body) = req.into_parts();
        // tonic's clients send the path alone; HTTP/2 wants the scheme and authority too.
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        let opened = Uri::from_parts(uri).map_err(BoxError::from).and_then(|u| {
            parts.uri = u;
            self.send
                .send_request(http::Request::from_parts(parts, ()), false)
                .map_err(BoxError::from)
        });
        let timeout = self.timeout;
        Box::pin(async move {
            let (response, mut stream) = opened?;
            let call = async move {
                // The request body: a unary call's one encoded message, ready at once. Each
                // frame is held until the next poll, so that the last one carries
                // END_STREAM (tonic's body does not say it has ended until polled again).
                let mut body = std::pin::pin!(body);
                let mut held: Option<Bytes> = None;
                loop {
                    match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                        None => {
                            stream.send_data(held.take().unwrap_or_default(), true)?;
                            break;
                        }
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                if let Some(before) = held.replace(data) {
                                    stream.send_data(before, false)?;
                                }
                            }
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    if let Some(before) = held.take() {
                                        stream.send_data(before, false)?;
                                    }
                                    stream.send_trailers(trailers)?;
                                    break;
                                }
                            }
                        },
                        Some(Err(e)) => {
                            stream.send_reset(h2::Reason::CANCEL);
                            return Err(e.into());
                        }
                    }
                }
                let (parts, recv) = response.await?.into_parts();
                Ok::<_, BoxError>(http::Response::from_parts(
                    parts,
                    H2Body {
                        recv: Some(recv),
                        data_done: false,
                        done: false,
                    },
                ))
            };
            // The timeout covers the request and the response's headers; the body is read by
            // tonic afterwards (terad sends a unary answer's message and trailers at once).
            // Dropping the call on a timeout drops its stream handles, which resets the
            // stream (CANCEL). tonic passes a `Status` error on as the call's status.
            tokio::time::timeout(timeout, call).await.map_err(|_| {
                BoxError::from(tonic::Status::deadline_exceeded(format!(
                    "no answer within {timeout:?}"
                )))
            })?
        })
    }
}

/// A response's body: its DATA frames (each released to the flow-control window as it is
/// handed on), then its trailers, which carry the gRPC status. The default is an empty body
/// (tonic's interceptor answers its refusals with one).
#[derive(Debug, Default)]
pub struct H2Body {
    recv: Option<h2::RecvStream>,
    data_done: bool,
    done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Only fails once the stream is gone, which the next poll reports.
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let r = ready!(recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match r {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Bearer;
    use crate::proto::meta as pb;
    use pb::metadata_client::MetadataClient;
    use prost::Message;
    use tonic::Code;

    /// How the test server answers a call.
    #[derive(Clone, Copy)]
    enum Reply {
        /// An `Entry` named after the request's path, then status 0 in the trailers.
        Entry,
        /// `Entry`'s answer cut into three DATA frames.
        Split,
        /// `Entry`'s message, then trailers without a `grpc-status`.
        NoStatus,
        /// A trailers-only NOT_FOUND, as terad sends its errors.
        NotFound,
        /// Never: the stream is held open.
        Silent,
        /// The connection is closed without an answer.
        Close,
    }

    /// What the server saw of a call: its :path, :authority and authorization header.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

    /// A one-connection HTTP/2 server on a free loopback port, written with h2's server
    /// half so that the transport is checked against HTTP/2 itself, not against itself.
    async fn server(reply: Reply) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Seen::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(tcp).await.expect("handshake");
            // Each call is answered by a task of its own, so that this loop keeps driving
            // the connection while a call's body is read.
            while let Some(Ok((req, respond))) = conn.accept().await {
                if let Reply::Close = reply {
                    return;
                }
                let header = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                log.lock().unwrap().push((
                    req.uri().path().to_string(),
                    req.uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    header("authorization"),
                ));
                tokio::spawn(answer(req, respond, reply));
            }
        });
        (url, seen)
    }

    async fn answer(
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        reply: Reply,
    ) {
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("request data");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        match reply {
            Reply::Entry | Reply::Split | Reply::NoStatus => {
                let asked = pb::StatRequest::decode(&got[5..]).expect("a StatRequest");
                let Some(pb::stat_request::Target::Path(path)) = asked.target else {
                    panic!("no path in {asked:?}");
                };
                let entry = pb::Entry {
                    id: 7,
                    name: path,
                    ..Default::default()
                };
                let mut frame = vec![0u8];
                frame.extend_from_slice(&(entry.encoded_len() as u32).to_be_bytes());
                entry.encode(&mut frame).expect("encode");
                let head = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("head");
                let mut out = respond.send_response(head, false).expect("respond");
                let frame = Bytes::from(frame);
                if let Reply::Split = reply {
                    for part in [frame.slice(..2), frame.slice(2..7), frame.slice(7..)] {
                        out.send_data(part, false).expect("data");
                    }
                } else {
                    out.send_data(frame, false).expect("data");
                }
                let mut trailers = http::HeaderMap::new();
                if !matches!(reply, Reply::NoStatus) {
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                }
                out.send_trailers(trailers).expect("trailers");
            }
            Reply::NotFound => {
                let head = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "5")
                    .header("grpc-message", "no%20such%20entry")
                    .body(())
                    .expect("head");
                respond.send_response(head, true).expect("respond");
            }
            Reply::Silent => {
                // Hold the stream open for good.
                std::future::pending::<()>().await;
                drop(respond);
            }
            Reply::Close => unreachable!("closed before answering"),
        }
    }

    /// A channel to a new test server answering as `reply`.
    async fn channel(reply: Reply, timeout: Duration) -> H2Channel {
        let (url, _) = server(reply).await;
        H2Channel::connect(&url, timeout).await.expect("connect")
    }

    fn client(
        ch: H2Channel,
    ) -> MetadataClient<tonic::service::interceptor::InterceptedService<H2Channel, Bearer>> {
        MetadataClient::with_interceptor(ch, Bearer::new(Some("tok"), false).expect("bearer"))
    }

    /// Wait (up to 10 s) until the channel says its connection has ended.
    async fn until_closed(ch: &H2Channel) {
        let t0 = std::time::Instant::now();
        while !ch.is_closed() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stat(path: &str) -> pb::StatRequest {
        pb::StatRequest {
            namespace: 3,
            target: Some(pb::stat_request::Target::Path(path.into())),
        }
    }

    #[tokio::test]
    async fn a_call_reaches_the_server_whole_and_its_answer_comes_back() {
        let (url, seen) = server(Reply::Entry).await;
        let ch = H2Channel::connect(&url, Duration::from_secs(10))
            .await
            .expect("connect");
        let mut m = client(ch);
        // Twice on one connection, the second from a clone, as the bench's tasks do.
        let e = m.stat(stat("/a/b")).await.expect("stat").into_inner();
        assert_eq!((e.id, e.name.as_str()), (7, "/a/b"));
        let e = m.clone().stat(stat("/c")).await.expect("stat").into_inner();
        assert_eq!(e.name, "/c");
        let seen = seen.lock().unwrap().clone();
        let authority = url.trim_start_matches("http://").to_string();
        let want = (
            "/tera.meta.v1.Metadata/Stat".to_string(),
            authority,
            "Bearer tok".to_string(),
        );
        assert_eq!(seen, vec![want.clone(), want]);
    }

    /// A call of `unary_bytes`: the Stat of `path`, with the bench's fixed headers.
    async fn raw_stat(ch: &mut H2Channel, path: &str) -> Result<pb::Entry, tonic::Status> {
        let headers = Bearer::new(Some("tok"), false)
            .expect("bearer")
            .deadline(Duration::from_secs(5))
            .fixed_headers();
        let b = ch
            .unary_bytes(
                "/tera.meta.v1.Metadata/Stat",
                &headers,
                &stat(path).encode_to_vec(),
            )
            .await?;
        Ok(pb::Entry::decode(b).expect("an entry"))
    }

    /// The call without tonic: the same request on the wire, the message back whether it
    /// comes in one DATA frame or several, and each way a call can fail reported as tonic
    /// reports it.
    #[tokio::test]
    async fn unary_bytes_calls_as_tonic_does() {
        for reply in [Reply::Entry, Reply::Split] {
            let (url, seen) = server(reply).await;
            let mut ch = H2Channel::connect(&url, Duration::from_secs(10))
                .await
                .expect("connect");
            let e = raw_stat(&mut ch, "/a/b").await.expect("stat");
            assert_eq!((e.id, e.name.as_str()), (7, "/a/b"));
            let e = raw_stat(&mut ch.clone(), "/c").await.expect("stat");
            assert_eq!(e.name, "/c");
            let authority = url.trim_start_matches("http://").to_string();
            let want = (
                "/tera.meta.v1.Metadata/Stat".to_string(),
                authority,
                "Bearer tok".to_string(),
            );
            assert_eq!(seen.lock().unwrap().clone(), vec![want.clone(), want]);
        }

        let mut ch = channel(Reply::NotFound, Duration::from_secs(10)).await;
        let s = raw_stat(&mut ch, "/x").await.expect_err("an error");
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no such entry"));

        let mut ch = channel(Reply::NoStatus, Duration::from_secs(10)).await;
        let s = raw_stat(&mut ch, "/x").await.expect_err("no status");
        assert_eq!(s.code(), Code::Unknown, "{s:?}");
        assert!(s.message().contains("without grpc-status"), "{s:?}");
        // tonic's client says the same of that answer.
        let ch = channel(Reply::NoStatus, Duration::from_secs(10)).await;
        let s = client(ch).stat(stat("/x")).await.expect_err("no status");
        assert_eq!(s.code(), Code::Unknown, "{s:?}");

        let mut ch = channel(Reply::Silent, Duration::from_millis(200)).await;
        let s = raw_stat(&mut ch, "/x").await.expect_err("no answer");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");

        let ch = channel(Reply::Close, Duration::from_secs(60)).await;
        let s = raw_stat(&mut ch.clone(), "/x").await.expect_err("closed");
        assert_ne!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert_ne!(s.code(), Code::Ok, "{s:?}");
        until_closed(&ch).await;
        let s = raw_stat(&mut ch.clone(), "/x").await.expect_err("lost");
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    }

    #[test]
    fn http_statuses_map_to_grpc_codes_as_the_spec_says() {
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
        ] {
            let s = status_of_http(http::StatusCode::from_u16(http).unwrap());
            assert_eq!(s.code(), code, "{http}");
        }
    }

    #[test]
    fn a_body_that_is_not_one_uncompressed_message_is_refused() {
        let ok = grpc_message(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 7])).expect("one message");
        assert_eq!(&ok[..], &[8, 7]);
        assert_eq!(
            &grpc_message(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap()[..],
            b""
        );
        for (bad, why) in [
            (&[0, 0, 0][..], "no message frame"),
            (&[1, 0, 0, 0, 1, 8][..], "compressed"),
            (
                &[0, 0, 0, 0, 3, 8, 7][..],
                "a frame of 3 bytes in a body of 2",
            ),
            (
                &[0, 0, 0, 0, 1, 8, 7][..],
                "a frame of 1 bytes in a body of 2",
            ),
        ] {
            let s = grpc_message(Bytes::copy_from_slice(bad)).expect_err(why);
            assert_eq!(s.code(), Code::Internal);
            assert!(s.message().contains(why), "{s:?}");
        }
    }

    #[tokio::test]
    async fn a_trailers_only_error_is_the_calls_status() {
        let ch = channel(Reply::NotFound, Duration::from_secs(10)).await;
        let s = client(ch).stat(stat("/x")).await.expect_err("an error");
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no such entry"));
    }

    #[tokio::test]
    async fn an_unanswered_call_ends_at_its_timeout_with_deadline_exceeded() {
        let ch = channel(Reply::Silent, Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        let s = client(ch).stat(stat("/x")).await.expect_err("no answer");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(s.message().contains("no answer within 200ms"), "{s:?}");
        assert!(t0.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_closed_connection_fails_the_call_without_waiting_for_the_timeout() {
        let ch = channel(Reply::Close, Duration::from_secs(60)).await;
        let mut m = client(ch.clone());
        let s = m.stat(stat("/x")).await.expect_err("closed");
        assert_ne!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert_ne!(s.code(), Code::Ok, "{s:?}");
        // Once the connection has ended, the channel says so, and every later call fails
        // at once with UNAVAILABLE, whichever method it is.
        until_closed(&ch).await;
        for _ in 0..2 {
            let s = m.stat(stat("/x")).await.expect_err("lost");
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(
                s.message().contains("the connection to terad is lost"),
                "{s:?}"
            );
            let s = m
                .get_usage(pb::GetUsageRequest::default())
                .await
                .expect_err("lost");
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        }
    }

    #[tokio::test]
    async fn bad_addresses_and_refused_connections_are_told_apart() {
        let e = H2Channel::connect("https://127.0.0.1:1", Duration::from_secs(1))
            .await
            .expect_err("https");
        assert!(e.contains("http:// (cleartext HTTP/2) only"), "{e}");
        let e = H2Channel::connect("not a url", Duration::from_secs(1))
            .await
            .expect_err("garbage");
        assert!(e.contains("server address \"not a url\""), "{e}");
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = H2Channel::connect(&format!("http://127.0.0.1:{port}"), Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert!(
            e.contains("cannot connect to") && e.contains("is terad running"),
            "{e}"
        );
    }
}
