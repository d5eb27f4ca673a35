//! A lean HTTP/2 transport for `teractl bench`: [`H2Channel`], a tower service that sends
//! each gRPC call of tonic's generated clients straight onto one HTTP/2 connection of the
//! `h2` crate.
//!
//! Why not tonic's `Channel`: client and server share the machine in the benchmark,
//! so every microsecond the load generator spends is one terad does not get. A `Channel`
//! passes each call through a buffer task (a queue and a wake-up), hyper's dispatch task (a
//! second queue) and a task spawned per call to send the request body; profiles of teractl
//! at concurrency 400 put a third of its CPU there. [`H2Channel`] opens the stream, sends the
//! encoded message from the calling task and hands back the response stream as the body:
//! tonic still encodes, decodes and reads the status. It serves the bench's unary calls (a
//! request body is sent whole before the response is awaited, so a bidirectional stream would
//! stall); teractl's commands keep tonic's `Channel`.

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http_body::{Body, Frame};
use std::future::{poll_fn, Future};
use std::pin::Pin;
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
    /// Connect to `url` (`http://host:port`; terad speaks cleartext HTTP/2 only). A call not
    /// answered within `timeout` fails with the timeout's error (and its stream is reset),
    /// as a `Channel` built by `client::connect` does.
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
        let addr = (authority.host(), authority.port_u16().unwrap_or(80));
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
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| cannot(&e))?;
        // A connection error reaches every call on it as that call's error.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Channel {
            send,
            authority,
            timeout,
        })
    }
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
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
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
                // The request body: a unary call's one encoded message, ready at once.
                let mut body = std::pin::pin!(body);
                loop {
                    match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                        None => {
                            stream.send_data(Bytes::new(), true)?;
                            break;
                        }
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                let last = body.is_end_stream();
                                stream.send_data(data, last)?;
                                if last {
                                    break;
                                }
                            }
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
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
            // Dropping the call on a timeout drops its stream handles, which resets the
            // stream (CANCEL).
            tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| BoxError::from(format!("no answer within {timeout:?}")))?
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
