//! The service terad hands to tonic: [`Gate`] around [`Router`].
//!
//! [`Router`] sends each request to its service by the path's service name (tonic's own
//! router would bring in axum). [`Gate`] does what every call shares: it opens the request's
//! tracing span (with the W3C `traceparent`'s trace and parent ids), sheds load past the
//! concurrency limit at once with RESOURCE_EXHAUSTED (health, reflection and the long-lived
//! WatchChanges streams are exempt; WatchChanges has its own limit; a call's place is held
//! until its engine work is done too, see [`Slot`]), enforces the call's
//! [`Deadline`] (answering DEADLINE_EXCEEDED past it), and records per-RPC counts and
//! latencies.

use crate::auth_rpc::AuthService;
use crate::error::code_label;
use crate::health::HealthService;
use crate::meta_rpc::MetaService;
use crate::proto::auth::auth_server::AuthServer;
use crate::proto::health::health_server::HealthServer;
use crate::proto::meta::metadata_server::MetadataServer;
use crate::proto::reflection::v1::server_reflection_server::ServerReflectionServer as ReflV1Server;
use crate::proto::reflection::v1alpha::server_reflection_server::ServerReflectionServer as ReflV1AlphaServer;
use crate::reflection::{ReflectionV1, ReflectionV1Alpha};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;
use tracing::Instrument;

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// Dispatches requests to terad's services by path.
#[derive(Debug, Clone)]
pub struct Router {
    pub meta: MetadataServer<MetaService>,
    pub auth: AuthServer<AuthService>,
    pub health: HealthServer<HealthService>,
    pub reflection_v1: ReflV1Server<ReflectionV1>,
    pub reflection_v1alpha: ReflV1AlphaServer<ReflectionV1Alpha>,
}

/// The service part of a gRPC path (`/pkg.Service/Method` → `pkg.Service`).
fn service_of(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

impl Service<http::Request<Body>> for Router {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        match service_of(req.uri().path()) {
            "tera.meta.v1.Metadata" => self.meta.call(req),
            "tera.auth.v1.Auth" => self.auth.call(req),
            "grpc.health.v1.Health" => self.health.call(req),
            "grpc.reflection.v1.ServerReflection" => self.reflection_v1.call(req),
            "grpc.reflection.v1alpha.ServerReflection" => self.reflection_v1alpha.call(req),
            other => {
                let s = Status::unimplemented(format!(
                    "terad has no service {other:?} (see server reflection for the list)"
                ));
                Box::pin(async move { Ok(s.into_http()) })
            }
        }
    }
}

/// The methods that are metrics labels (any other path is recorded as `unknown`, so that a
/// client cannot grow the label set).
fn method_label(path: &str) -> &'static str {
    const METHODS: &[&str] = &[
        "/tera.meta.v1.Metadata/Stat",
        "/tera.meta.v1.Metadata/List",
        "/tera.meta.v1.Metadata/CreateFolder",
        "/tera.meta.v1.Metadata/Move",
        "/tera.meta.v1.Metadata/Delete",
        "/tera.meta.v1.Metadata/CommitUpload",
        "/tera.meta.v1.Metadata/SetAttributes",
        "/tera.meta.v1.Metadata/Changes",
        "/tera.meta.v1.Metadata/WatchChanges",
        "/tera.meta.v1.Metadata/GetUsage",
        "/tera.auth.v1.Auth/Token",
        "/tera.auth.v1.Auth/Ping",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    METHODS
        .iter()
        .find(|m| **m == path)
        .map(|m| &m[1..])
        .unwrap_or("unknown")
}

/// A call's place under the concurrency limit. It is shared with the engine work the call
/// hands to the blocking pool, which goes on when the call is cancelled or runs out of time
/// (so that a write stays atomic) and must go on counting: the place is given back when both
/// the handler and that work have ended, so that the limit bounds the work in flight, not
/// just the handlers. (A response body not yet sent does not hold it: a client that stops
/// reading would then hold places for as long as its connection lives.)
pub(crate) type Slot = Arc<OwnedSemaphorePermit>;

tokio::task_local! {
    /// The slot of the call whose handler is running on this task (none for exempt calls).
    static SLOT: Slot;
}

/// The running call's slot, for work that outlives its handler (see [`Slot`]).
pub(crate) fn current_slot() -> Option<Slot> {
    SLOT.try_with(Arc::clone).ok()
}

/// Whether a call is exempt from the concurrency limit.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
        || path == "/tera.meta.v1.Metadata/WatchChanges"
}

/// The trace id and parent span id of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), if it is well formed and not all zeros.
pub fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    ok.then_some((trace, parent))
}

/// When a call must be answered by: the sooner of terad's `request_timeout_ms` and the
/// client's `grpc-timeout`, from the call's arrival. The gate puts it in the request's
/// extensions; a handler that waits (a Changes long poll) answers before it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// A `grpc-timeout` value (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u` or `n`), as a
/// duration; `None` if it is not one.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

thread_local! {
    /// This thread's handles of the per-call metrics, by method and status code. Looking a
    /// labelled metric up builds its key (two allocations) and searches the recorder's
    /// registry; a handle is an atomic to bump. Methods and codes are a few dozen, so the
    /// map stays small.
    static CALL_METRICS: std::cell::RefCell<CallMetrics> = std::cell::RefCell::new(CallMetrics::new());
}

/// Handles of a call's count and latency metrics, by method and status code.
type CallMetrics =
    std::collections::HashMap<(&'static str, i32), (metrics::Counter, metrics::Histogram)>;

/// Records one call's count and latency when dropped: also when the call is cut short by
/// its deadline or a client's cancel (recorded as DEADLINE_EXCEEDED or CANCELLED: tonic
/// drops the future either way, and a deadline is the likely cause when one was set).
struct CallRecord {
    method: &'static str,
    start: Instant,
    code: Option<Code>,
    had_deadline: bool,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(if self.had_deadline {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
        let secs = self.start.elapsed().as_secs_f64();
        let method = self.method;
        let register = || {
            (
                metrics::counter!("terad_rpc_requests_total", "method" => method, "code" => code_label(code)),
                metrics::histogram!("terad_rpc_duration_seconds", "method" => method),
            )
        };
        let record = |(calls, latency): &(metrics::Counter, metrics::Histogram)| {
            calls.increment(1);
            latency.record(secs);
        };
        CALL_METRICS.with(|m| match m.try_borrow_mut() {
            Ok(mut m) => record(m.entry((method, code as i32)).or_insert_with(register)),
            Err(_) => record(&register()),
        });
        tracing::debug!(
            method = self.method,
            code = code_label(code),
            micros = (secs * 1e6) as u64,
            "rpc done"
        );
    }
}

/// Tracing, load shedding and metrics around a service. See the module docs.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    limit: Arc<Semaphore>,
    max: usize,
    max_request_bytes: usize,
    request_timeout: Duration,
}

impl<S> Gate<S> {
    /// `max_concurrent` calls at once; requests up to `max_request_bytes`; each call answered
    /// within `request_timeout` (or the client's shorter `grpc-timeout`).
    pub fn new(
        inner: S,
        max_concurrent: usize,
        max_request_bytes: usize,
        request_timeout: Duration,
    ) -> Gate<S> {
        Gate {
            inner,
            limit: Arc::new(Semaphore::new(max_concurrent)),
            max: max_concurrent,
            max_request_bytes,
            request_timeout,
        }
    }
}

/// The status to send instead of one tonic's codec made for a client's mistake, in the
/// terms of terad's contract (server/proto): a request over the size limit is
/// RESOURCE_EXHAUSTED naming the setting (tonic says OUT_OF_RANGE, which the protos reserve
/// for a change cursor that is too old), and a request that does not parse is
/// INVALID_ARGUMENT (tonic says INTERNAL, which would count a client's bytes as a server
/// fault).
pub fn client_fault(status: &Status, max_request_bytes: usize) -> Option<Status> {
    let msg = status.message();
    match status.code() {
        Code::OutOfRange if msg.contains("message length too large") => {
            Some(Status::resource_exhausted(format!(
                "the request is larger than terad accepts (max_request_bytes = {max_request_bytes}): {msg}; send less in one call"
            )))
        }
        Code::Internal if msg.starts_with("failed to decode Protobuf message") => Some(
            Status::invalid_argument(format!("the request does not parse: {msg}")),
        ),
        _ => None,
    }
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> BoxFuture {
        let path = req.uri().path();
        let method = method_label(path);
        let exempt = exempt(path);
        let span = tracing::info_span!(
            "rpc",
            method,
            trace_id = tracing::field::Empty,
            parent_id = tracing::field::Empty
        );
        if let Some((trace, parent)) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            span.record("trace_id", trace);
            span.record("parent_id", parent);
        }
        let client_timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let start = Instant::now();
        let (budget, whose) = match client_timeout {
            Some(t) if t < self.request_timeout => (t, "the client's grpc-timeout"),
            _ => (self.request_timeout, "terad's request_timeout_ms"),
        };
        let deadline = start + budget;
        req.extensions_mut().insert(Deadline(deadline));
        let mut record = CallRecord {
            method,
            start,
            code: None,
            had_deadline: client_timeout.is_some(),
        };
        let slot: Option<Slot> = if exempt {
            None
        } else {
            match self.limit.clone().try_acquire_owned() {
                Ok(p) => Some(Arc::new(p)),
                Err(_) => {
                    record.code = Some(Code::ResourceExhausted);
                    let s = Status::resource_exhausted(format!(
                        "terad is serving its limit of {} requests at once: retry with backoff",
                        self.max
                    ));
                    return Box::pin(async move {
                        drop(record);
                        Ok(s.into_http())
                    });
                }
            }
        };
        let fut = self.inner.call(req);
        let fut: Pin<Box<dyn Future<Output = _> + Send>> = match &slot {
            Some(slot) => Box::pin(SLOT.scope(slot.clone(), fut)),
            None => Box::pin(fut),
        };
        let max_request_bytes = self.max_request_bytes;
        Box::pin(
            async move {
                let mut res = match tokio::time::timeout_at(deadline, fut).await {
                    Ok(r) => r,
                    // The handler is dropped: an engine call on the blocking pool finishes
                    // (a write stays atomic), holding the call's slot, and its answer is not
                    // sent.
                    Err(_) => Ok(Status::deadline_exceeded(format!(
                        "the call did not finish within its deadline of {} ms ({whose})",
                        budget.as_millis()
                    ))
                    .into_http()),
                };
                drop(slot);
                // A trailers-only error made by tonic's codec for a client's mistake is
                // restated in terad's terms.
                let fix = res
                    .as_ref()
                    .ok()
                    .and_then(|r| Status::from_header_map(r.headers()))
                    .and_then(|s| client_fault(&s, max_request_bytes));
                if let Some(s) = fix {
                    res = Ok(s.into_http());
                }
                if let Ok(r) = &res {
                    // An error is sent trailers-only, its status in the headers; a success
                    // (or a stream's later status) comes in the trailers.
                    record.code = Some(
                        r.headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i32>().ok())
                            .map(Code::from)
                            .unwrap_or(Code::Ok),
                    );
                }
                drop(record);
                res
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        assert_eq!(parse_traceparent("00-abc-def-01"), None);
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn codec_errors_are_restated_as_client_faults() {
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 2097165 bytes, the limit is: 1048576 bytes",
        );
        let s = client_fault(&big, 1 << 20).expect("restated");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("max_request_bytes = 1048576"),
            "{}",
            s.message()
        );
        let bad = Status::internal(
            "failed to decode Protobuf message: StatRequest.target: invalid string value",
        );
        assert_eq!(
            client_fault(&bad, 1).map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
        // Our own statuses pass through.
        assert!(client_fault(&Status::out_of_range("cursor 3 is too old"), 1).is_none());
        assert!(client_fault(&Status::internal("disk on fire"), 1).is_none());
    }

    #[test]
    fn grpc_timeouts_are_parsed_strictly() {
        assert_eq!(parse_grpc_timeout("20m"), Some(Duration::from_millis(20)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "10 m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    /// A service that answers after `.0`, with OK, and says whether it saw a deadline.
    #[derive(Clone)]
    struct Slow(Duration);

    impl Service<http::Request<Body>> for Slow {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
            let wait = self.0;
            let left = req
                .extensions()
                .get::<Deadline>()
                .map(|d| d.0.saturating_duration_since(Instant::now()));
            Box::pin(async move {
                tokio::time::sleep(wait).await;
                let mut r = http::Response::new(Body::empty());
                r.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("0"));
                if let Some(l) = left {
                    r.headers_mut()
                        .insert("x-left-ms", (l.as_millis() as u64).into());
                }
                Ok(r)
            })
        }
    }

    /// A service whose calls run engine work on the blocking pool (as the metadata handlers
    /// do) that lasts until `.0` is set.
    #[derive(Clone)]
    struct Works(Arc<std::sync::atomic::AtomicBool>);

    impl Service<http::Request<Body>> for Works {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> BoxFuture {
            let done = self.0.clone();
            Box::pin(async move {
                let r = crate::state::blocking(move || {
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(())
                })
                .await;
                Ok(match r {
                    Ok(()) => {
                        let mut r = http::Response::new(Body::empty());
                        r.headers_mut()
                            .insert("grpc-status", http::HeaderValue::from_static("0"));
                        r
                    }
                    Err(s) => s.into_http(),
                })
            })
        }
    }

    /// A body of one data frame (tonic sends an empty body as nothing at all).
    struct OneFrame(Option<bytes::Bytes>);

    impl http_body::Body for OneFrame {
        type Data = bytes::Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    /// A service that answers at once with a body to send.
    #[derive(Clone)]
    struct Answers;

    impl Service<http::Request<Body>> for Answers {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> BoxFuture {
            let body = OneFrame(Some(bytes::Bytes::from_static(b"page")));
            Box::pin(async move { Ok(http::Response::new(Body::new(body))) })
        }
    }

    fn code_of(res: &http::Response<Body>) -> Code {
        Status::from_header_map(res.headers()).map_or(Code::Ok, |s| s.code())
    }

    /// A call's place under the limit is held by the engine work it left running when it ran
    /// out of time (the work goes on, and must count), and given back once that ends; a
    /// response body not yet sent does not hold it.
    #[tokio::test]
    async fn the_limit_counts_work_that_outlives_its_handler() {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Ends the work even if an assertion fails, so that the runtime's shutdown (which
        // waits for blocking work) does not hang the test.
        struct Release(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _release = Release(done.clone());
        let mut gate = Gate::new(Works(done.clone()), 1, 1 << 20, Duration::from_millis(30));
        let res = gate.call(call_to(None)).await.expect("infallible");
        assert_eq!(code_of(&res), Code::DeadlineExceeded);
        drop(res);
        // The handler is gone, its work is not: the one place is still taken.
        let res = gate.call(call_to(None)).await.expect("infallible");
        assert_eq!(code_of(&res), Code::ResourceExhausted);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        while gate.limit.available_permits() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "the work ended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A response not yet sent does not hold a place (a client that stops reading would
        // hold it for as long as its connection lives).
        let mut gate = Gate::new(Answers, 1, 1 << 20, Duration::from_secs(5));
        let first = gate.call(call_to(None)).await.expect("infallible");
        assert_eq!(code_of(&first), Code::Ok);
        let res = gate.call(call_to(None)).await.expect("infallible");
        assert_eq!(code_of(&res), Code::Ok);
        drop(first);
    }

    fn call_to(timeout: Option<&'static str>) -> http::Request<Body> {
        let mut b = http::Request::builder().uri("/tera.meta.v1.Metadata/Stat");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(Body::empty()).expect("request")
    }

    /// A call past its deadline is answered DEADLINE_EXCEEDED, naming whose deadline it
    /// was; one within it passes, and its handler sees the deadline.
    #[tokio::test]
    async fn deadlines_are_enforced_and_handed_to_handlers() {
        let mut slow = Gate::new(
            Slow(Duration::from_secs(30)),
            8,
            1 << 20,
            Duration::from_millis(50),
        );
        let t0 = std::time::Instant::now();
        let res = slow.call(call_to(None)).await.expect("infallible");
        let s = Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(
            s.message().contains("50 ms (terad's request_timeout_ms)"),
            "{s:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        // The client's shorter deadline wins.
        let mut slow = Gate::new(
            Slow(Duration::from_secs(30)),
            8,
            1 << 20,
            Duration::from_secs(60),
        );
        let res = slow.call(call_to(Some("20m"))).await.expect("infallible");
        let s = Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(
            s.message().contains("20 ms (the client's grpc-timeout)"),
            "{s:?}"
        );
        // A fast call passes, and sees how long it has (the server's 60 s, not the client's
        // longer 100 s).
        let mut fast = Gate::new(Slow(Duration::ZERO), 8, 1 << 20, Duration::from_secs(60));
        let res = fast.call(call_to(Some("100S"))).await.expect("infallible");
        assert_eq!(res.headers()["grpc-status"], "0");
        let left: u64 = res.headers()["x-left-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((50_000..=60_000).contains(&left), "{left} ms left");
    }

    #[test]
    fn metrics_labels_are_bounded() {
        assert_eq!(
            method_label("/tera.meta.v1.Metadata/Stat"),
            "tera.meta.v1.Metadata/Stat"
        );
        assert_eq!(method_label("/evil/x"), "unknown");
        assert!(exempt("/grpc.health.v1.Health/Check"));
        assert!(!exempt("/tera.meta.v1.Metadata/List"));
        assert_eq!(
            service_of("/tera.meta.v1.Metadata/List"),
            "tera.meta.v1.Metadata"
        );
    }
}
