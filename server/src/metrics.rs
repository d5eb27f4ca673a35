//! Prometheus metrics and the health endpoint, over a minimal HTTP/1.1 server on their own
//! port: `GET /metrics` (the recorder's text format, with the engine's figures read from
//! `Db::stats` at each scrape) and `GET /healthz` (200 `serving`, or 503 with the reason).
//! One request per connection; anything else is 404 or 405.

use crate::state::State;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Latency buckets, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Install the process's metrics recorder. Call once.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("terad_rpc_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!(
        "terad_rpc_requests_total",
        "RPCs answered, by method and status code"
    );
    metrics::describe_histogram!(
        "terad_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "RPC latency, by method (from the request's arrival to its response headers)"
    );
    metrics::describe_counter!(
        "terad_logins_throttled_total",
        "Token calls refused without a password check, after repeated failed logins for the user from the address"
    );
    metrics::describe_gauge!(
        "terad_heap_in_use_bytes",
        "Heap bytes allocated and not freed, by glibc's count (the engine's frames and index tables are mapped apart and not included)"
    );
    metrics::describe_gauge!(
        "terad_heap_free_bytes",
        "Heap bytes freed but kept by the allocator (glibc only)"
    );
    metrics::describe_counter!(
        "terad_connections_accepted_total",
        "gRPC connections accepted, by the I/O thread they were handed to (io_threads)"
    );
    Ok(handle)
}

/// Copy the engine's counters into gauges and counters, just before a scrape renders them.
fn record_engine(state: &State) {
    use metrics::{counter, gauge};
    gauge!("terad_serving").set(if state.serving() { 1.0 } else { 0.0 });
    gauge!("terad_watches_open").set(state.watches.load(Ordering::Relaxed) as f64);
    let Some(engine) = state.engine_if_open() else {
        return;
    };
    let s = engine.db.stats();
    for (tier, t) in [("dram", s.dram), ("far", s.far)] {
        gauge!("terad_tier_bytes", "tier" => tier).set(t.bytes as f64);
        gauge!("terad_tier_records", "tier" => tier).set(t.records as f64);
        counter!("terad_tier_reads_total", "tier" => tier).absolute(t.reads);
    }
    gauge!("terad_dram_hit_ratio").set(s.dram_hit_ratio());
    counter!("terad_promotions_total").absolute(s.promotions);
    counter!("terad_readmissions_total").absolute(s.readmissions);
    counter!("terad_pages_demoted_total").absolute(s.pages_demoted);
    counter!("terad_compaction_bytes_total").absolute(s.compaction_bytes);
    counter!("terad_segments_compacted_total").absolute(s.segments_compacted);
    gauge!("terad_far_file_bytes").set(s.far_file_bytes as f64);
    gauge!("terad_dram_budget_bytes").set(s.dram_budget_bytes as f64);
    gauge!("terad_dram_used_bytes").set(s.dram_used_bytes as f64);
    gauge!("terad_dram_index_bytes").set(s.index_bytes as f64);
    gauge!("terad_dram_ordered_index_bytes").set(s.ordered_index_bytes as f64);
    gauge!("terad_dram_frame_bytes").set(s.frame_bytes as f64);
    gauge!("terad_dram_largest_share_bytes").set(s.largest_share_bytes as f64);
    counter!("terad_dram_shares_moved_bytes_total").absolute(s.shares_moved_bytes);
    gauge!("terad_dram_changelog_bytes").set(s.changelog_bytes as f64);
    counter!("terad_wal_fsyncs_total").absolute(s.wal_fsyncs);
    counter!("terad_checkpoints_total").absolute(s.checkpoints);
    gauge!("terad_keys").set(s.keys as f64);
    if let Some(h) = heap() {
        gauge!("terad_heap_in_use_bytes").set(h.in_use as f64);
        gauge!("terad_heap_free_bytes").set(h.free as f64);
    }
}

/// The allocator's view of the process heap: bytes handed out and not yet freed, and bytes
/// freed but kept by the allocator. Next to `terad_dram_used_bytes` they tell memory the
/// engine does not account for (live) from memory glibc holds on to (free). Only with
/// glibc, whose `mallinfo2` counts every arena (it locks each in turn and walks its free
/// lists, so it runs per scrape, not per call).
struct Heap {
    in_use: usize,
    free: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<Heap> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; glibc takes
    // each arena's lock while it reads that arena.
    let m = unsafe { libc::mallinfo2() };
    Some(Heap {
        in_use: m.uordblks + m.hblkhd,
        free: m.fordblks,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<Heap> {
    None
}

/// terad's fixed glibc mmap threshold: allocations of this size or more get mappings of
/// their own, returned to the system when freed.
pub const MMAP_THRESHOLD: usize = 256 << 10;

/// terad's glibc trim threshold: free space a heap keeps at its top before giving it back to
/// the system.
pub const TRIM_THRESHOLD: usize = 8 << 20;

/// What [`tune_malloc`] set: each threshold it fixed, `None` where the operator had set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MallocTuning {
    pub mmap_threshold: Option<usize>,
    pub trim_threshold: Option<usize>,
}

/// Fix glibc's mmap threshold at [`MMAP_THRESHOLD`] and its trim threshold at
/// [`TRIM_THRESHOLD`], each unless the operator set it (`glibc.malloc.mmap_threshold` or
/// `glibc.malloc.trim_threshold` in `GLIBC_TUNABLES`, or `MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`; `env` looks a variable up). Call it before the threads start.
///
/// - By default glibc raises the mmap threshold each time a mapped block is freed (up to
///   32 MiB), after which large blocks come from its heaps, and a heap keeps its freed
///   space. Under the soak's load at 128 MiB that kept terad's `RssAnon` about 43 MiB above
///   the engine's accounting after 4 minutes, against 17 MiB with the threshold fixed
///   (docs/benchmarks.md, issue 5, "Where the rest of RssAnon was").
/// - Fixing it also stops glibc's matching rise of the trim threshold, which then stays at
///   128 KiB: a heap whose top held more free space than that gave it back at once, and
///   the next calls' buffers faulted it in again, about 2.5 page faults per 100-entry
///   listing, inside the namespace's lock too. At 8 MiB almost none are left, and
///   listings/s rose 1-10% in A/B rounds (docs/benchmarks.md, issue 5, "Heap trimming").
///   The cost: each glibc arena may keep up to 8 MiB of free space at its heap's top.
pub fn tune_malloc(env: &dyn Fn(&str) -> Option<String>) -> MallocTuning {
    let tunables = env("GLIBC_TUNABLES").unwrap_or_default();
    let mut out = MallocTuning {
        mmap_threshold: None,
        trim_threshold: None,
    };
    if !tunables.contains("mmap_threshold")
        && env("MALLOC_MMAP_THRESHOLD_").is_none()
        && set_malloc_param(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    {
        out.mmap_threshold = Some(MMAP_THRESHOLD);
    }
    if !tunables.contains("trim_threshold")
        && env("MALLOC_TRIM_THRESHOLD_").is_none()
        && set_malloc_param(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    {
        out.trim_threshold = Some(TRIM_THRESHOLD);
    }
    out
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use libc::{M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const M_MMAP_THRESHOLD: i32 = 0;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const M_TRIM_THRESHOLD: i32 = 0;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc_param(param: libc::c_int, bytes: usize) -> bool {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes glibc's allocation parameters (under its own lock); it
    // returns 1 on success and 0 for a value out of range.
    unsafe { libc::mallopt(param, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc_param(_param: i32, _bytes: usize) -> bool {
    false
}

/// Connections the metrics port serves at once.
pub const METRICS_CONNECTIONS: usize = 64;

/// Serve `/metrics` and `/healthz` on `listener` until the process ends, at most
/// [`METRICS_CONNECTIONS`] connections at once, each for at most 10 s.
pub async fn serve_http(listener: TcpListener, state: Arc<State>, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    // A scraper needs one connection at a time; past this many, a new one is closed at once,
    // so that the port cannot use the descriptors kept for the database (`conns.rs`).
    let open = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            tracing::debug!(
                "metrics listener: {METRICS_CONNECTIONS} connections open, closing a new one"
            );
            drop(conn);
            continue;
        };
        let state = state.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), answer(conn, &state, &handle));
            if let Ok(Err(e)) = r.await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
            drop(slot);
        });
    }
}

async fn answer(
    mut conn: TcpStream,
    state: &State,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            record_engine(state);
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        ("GET", "/healthz") => {
            if state.serving() {
                ("200 OK", "text/plain", "serving\n".to_string())
            } else if let Some(why) = state.poisoned() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("poisoned (restart terad): {why}\n"),
                )
            } else if *state.draining.borrow() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "draining\n".to_string(),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "recovering\n".to_string(),
                )
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET path` over a socket: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut out = String::new();
        conn.read_to_string(&mut out).await.expect("response");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, body.to_string())
    }

    /// `/healthz` through terad's life: 503 `recovering` before the database is open, 200
    /// `serving` once it is, 503 `draining` after a shutdown signal; other paths 404, other
    /// methods 405.
    #[tokio::test]
    async fn healthz_follows_recovery_serving_and_draining() {
        use crate::state::testing::{engine, state};
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(state(dir.path()));
        // A handle of its own: the process-wide recorder is not installed in unit tests.
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_http(listener, state.clone(), handle));

        assert_eq!(
            get(addr, "/healthz").await,
            (
                "HTTP/1.1 503 Service Unavailable".into(),
                "recovering\n".into()
            )
        );
        state.set_engine(engine(dir.path()));
        assert_eq!(
            get(addr, "/healthz").await,
            ("HTTP/1.1 200 OK".into(), "serving\n".into())
        );
        assert!(get(addr, "/metrics").await.0.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nothing").await.0.starts_with("HTTP/1.1 404"));
        state.start_draining();
        assert_eq!(
            get(addr, "/healthz").await,
            (
                "HTTP/1.1 503 Service Unavailable".into(),
                "draining\n".into()
            )
        );
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    }

    /// The port serves [`METRICS_CONNECTIONS`] connections at once: one more is closed
    /// unanswered, and once one of them closes, a request is answered again.
    #[tokio::test]
    async fn the_metrics_port_serves_a_bounded_number_of_connections() {
        use crate::state::testing::state;
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(state(dir.path()));
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_http(listener, state, handle));
        let mut idle = Vec::new();
        for _ in 0..METRICS_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Each idle one is being served (its 10 s have not passed): the next is closed.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut out))
            .await
            .expect("closed at once");
        assert!(n.is_err() || out.is_empty(), "{out:?}");
        drop(idle.pop());
        let t0 = std::time::Instant::now();
        loop {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
            let mut out = String::new();
            let _ = conn.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 503") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "served again: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn malloc_thresholds_are_fixed_unless_the_operator_set_them() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        let both = MallocTuning {
            mmap_threshold: glibc.then_some(MMAP_THRESHOLD),
            trim_threshold: glibc.then_some(TRIM_THRESHOLD),
        };
        let only_trim = MallocTuning {
            mmap_threshold: None,
            ..both
        };
        let only_mmap = MallocTuning {
            trim_threshold: None,
            ..both
        };
        let none = MallocTuning {
            mmap_threshold: None,
            trim_threshold: None,
        };
        let cases: [(&'static [(&str, &str)], MallocTuning); 7] = [
            (&[], both),
            (&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")], both),
            (
                &[(
                    "GLIBC_TUNABLES",
                    "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576",
                )],
                only_trim,
            ),
            (&[("MALLOC_MMAP_THRESHOLD_", "65536")], only_trim),
            (
                &[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")],
                only_mmap,
            ),
            (&[("MALLOC_TRIM_THRESHOLD_", "1048576")], only_mmap),
            (
                &[
                    ("MALLOC_TRIM_THRESHOLD_", "1048576"),
                    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576"),
                ],
                none,
            ),
        ];
        for (vars, want) in cases {
            assert_eq!(tune_malloc(&env(vars)), want, "{vars:?}");
        }
    }
}
