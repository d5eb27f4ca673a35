//! Starting and stopping terad: open the users and the token key, bind the ports (and say
//! which on stdout), open and recover the database in the background (health is NOT_SERVING
//! and the metadata calls UNAVAILABLE until it is done), serve, and on the shutdown signal
//! drain: health NOT_SERVING, stop accepting, let in-flight calls finish (up to the drain
//! timeout), end the streams, then flush and checkpoint the database. The calls are served
//! by `io_threads` I/O threads, each a single-threaded runtime with the connections the
//! acceptor dealt it (`IoThread` says why), at most `max_connections` of them (`conns`).

use crate::auth::{TokenKey, Users};
use crate::auth_rpc::AuthService;
use crate::batch::Batched;
use crate::config::{Config, DurabilityMode};
use crate::conns::{self, ConnLimit, Counted, Slot};
use crate::health::HealthService;
use crate::meta_rpc::MetaService;
use crate::proto::auth::auth_server::AuthServer;
use crate::proto::health::health_server::HealthServer;
use crate::proto::meta::metadata_server::MetadataServer;
use crate::proto::reflection::v1::server_reflection_server::ServerReflectionServer as ReflV1Server;
use crate::proto::reflection::v1alpha::server_reflection_server::ServerReflectionServer as ReflV1AlphaServer;
use crate::reflection::{Catalog, ReflectionV1, ReflectionV1Alpha};
use crate::router::{Gate, Router};
use crate::state::{Engine, State};
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tera_engine::meta::MetaStore;
use tera_engine::{Db, Durability};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

/// Why terad could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another terad running? pick another port with --listen)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the database did not open: {0}")]
    Engine(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the descriptor set does not decode: {0}")]
    Descriptors(#[from] prost::DecodeError),
}

/// The engine configuration for a terad configuration.
pub fn engine_config(c: &Config) -> Result<tera_engine::Config, ServerError> {
    let mut e = tera_engine::Config::new(c.far_dir());
    e.dram_budget_bytes = c.dram_budget_mib << 20;
    // 0 keeps the engine's default (a share of the budget).
    e.changelog_bytes = usize::try_from(c.changelog_mib << 20).unwrap_or(usize::MAX);
    e.durability = match c.durability_mode()? {
        DurabilityMode::Commit => Durability::Commit,
        DurabilityMode::Periodic(d) => Durability::Periodic(d),
        DurabilityMode::None => Durability::None,
    };
    e.data_dir = Some(c.data_dir.join("db"));
    Ok(e)
}

/// The thread that empties namespaces' trash queues, one atomic step at a time: first
/// `namespaces` (what a stopped terad left), then each namespace sent on the returned
/// channel (a recursive Delete answers once its folder is detached and sends its namespace
/// here, so that its latency does not grow with the folder). Sending a namespace twice
/// costs one read the second time. The thread ends when every sender is gone; a process
/// that exits meanwhile leaves the rest queued, durably, for the next start.
pub(crate) fn spawn_reclaimer(
    meta: MetaStore,
    namespaces: Vec<u64>,
) -> Result<std::sync::mpsc::Sender<u64>, ServerError> {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::Builder::new()
        .name("terad-reclaim".into())
        .spawn(move || {
            for ns in namespaces.into_iter().chain(rx) {
                match meta.reclaim(ns) {
                    Ok(r) if r.entries > 0 => {
                        tracing::info!(
                            ns,
                            entries = r.entries,
                            steps = r.steps,
                            "reclaimed the entries of deleted folders"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(ns, error = %e, "reclaiming deleted folders' entries failed; the next recursive delete in the namespace, or a restart, tries again")
                    }
                }
            }
        })
        .map_err(|e| ServerError::Engine(format!("reclaim thread: {e}")))?;
    Ok(tx)
}

fn open_engine(c: &Config, users: &[Arc<crate::auth::User>]) -> Result<Engine, ServerError> {
    let ec = engine_config(c)?;
    let started = Instant::now();
    let (db, info) = Db::open_with_info(ec).map_err(|e| ServerError::Engine(e.to_string()))?;
    let meta = MetaStore::open(&db).map_err(|e| ServerError::Engine(e.to_string()))?;
    for u in users {
        meta.create_namespace(u.namespace, crate::meta_rpc::now_us())
            .map_err(|e| ServerError::Engine(format!("namespace {}: {e}", u.namespace)))?;
    }
    // Finish the recursive deletes a stopped terad left half reclaimed (their folders are
    // already gone; this removes what was below them), then those that Delete calls leave
    // to it, in the background.
    let reclaim = spawn_reclaimer(
        meta.clone(),
        users.iter().map(|u| u.namespace).collect::<Vec<_>>(),
    )?;
    tracing::info!(
        checkpoint_records = info.checkpoint_records,
        log_frames = info.log_frames,
        torn_bytes = info.torn_bytes,
        millis = started.elapsed().as_millis() as u64,
        durability = ?db.durability(),
        "database open"
    );
    Ok(Engine { db, meta, reclaim })
}

/// Print a line on stdout at once (tests and scripts read the addresses from it).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Run terad until `shutdown` completes, then drain and checkpoint. Returns once the
/// database is checkpointed (or with the error that stopped it).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let nofile = raise_open_files();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let key = TokenKey::load_or_create(&data_dir.join("token.key"))?;
    let users_file = config.users_file();
    let (users, boot) = Users::open(&users_file, &data_dir)?;
    if let Some(b) = boot {
        tracing::warn!(
            password_file = %b.password_file.display(),
            users_file = %users_file.display(),
            "first start: created user admin; its password is in the password file (mode 0600): log in with `teractl login admin`, then delete the file"
        );
        announce(&format!(
            "terad: created user admin, password in {}",
            b.password_file.display()
        ));
    }
    let state = Arc::new(State::new(users, key, config.clone()));

    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    if let Some(maddr) = config.metrics_addr()? {
        // The recorder only with its endpoint: it keeps each histogram's samples until its
        // upkeep (run by `serve_http`) folds them in, so a recorder nobody serves grows
        // without end (found by the soak, with `metrics_listen = off`: RssAnon past the
        // DRAM budget, rising with every call). With metrics off, recording is a no-op.
        let handle = crate::metrics::install().map_err(ServerError::Metrics)?;
        let ml = tokio::net::TcpListener::bind(maddr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: maddr,
                source,
            })?;
        let mlocal = ml.local_addr().map_err(|source| ServerError::Bind {
            addr: maddr,
            source,
        })?;
        tracing::info!(addr = %mlocal, "serving /metrics and /healthz");
        announce(&format!("terad: metrics on http://{mlocal}/metrics"));
        tokio::spawn(crate::metrics::serve_http(ml, state.clone(), handle));
    }
    tracing::info!(addr = %local, data_dir = %data_dir.display(), "serving gRPC");
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "terad speaks gRPC without TLS: passwords and tokens cross the network in the clear; listen on loopback behind a TLS-terminating proxy, or on a network you trust");
    }
    announce(&format!("terad: listening on {local}"));

    // Open (and recover) the database off the runtime while the server already answers.
    let open = {
        let state = state.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
            let engine = open_engine(&config, &state.users.all())?;
            state.set_engine(Arc::new(engine));
            Ok(())
        })
    };

    let catalog = Arc::new(Catalog::terad()?);
    let max_req = config.max_request_bytes;
    let max_resp = config.max_response_bytes;
    let router = Router {
        meta: MetadataServer::new(MetaService::new(state.clone()))
            .max_decoding_message_size(max_req)
            .max_encoding_message_size(max_resp),
        auth: AuthServer::new(AuthService::new(state.clone()))
            .max_decoding_message_size(max_req)
            .max_encoding_message_size(max_resp),
        health: HealthServer::new(HealthService::new(state.clone())),
        reflection_v1: ReflV1Server::new(ReflectionV1::new(
            catalog.clone(),
            state.draining.subscribe(),
        ))
        .max_decoding_message_size(max_req),
        reflection_v1alpha: ReflV1AlphaServer::new(ReflectionV1Alpha::new(
            catalog,
            state.draining.subscribe(),
        ))
        .max_decoding_message_size(max_req),
    };
    let gate = Gate::new(
        router,
        config.max_concurrent_requests,
        config.max_request_bytes,
        Duration::from_millis(config.request_timeout_ms),
    );
    // The acceptor hands each connection to one I/O thread, round robin; health turning
    // NOT_SERVING (draining) stops it, which closes the listener.
    let threads = config.io_thread_count();
    let limit = connection_limit(&config, nofile);
    let (stop_tx, _) = watch::channel(false);
    let mut feeds = Vec::with_capacity(threads);
    // Each I/O thread reports here when it ends: all of them after a drain, or one that
    // failed, which stops terad.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for i in 0..threads {
        let (feed, conns) = mpsc::unbounded_channel();
        let done = done_tx.clone();
        let io = IoThread {
            gate: gate.clone(),
            conns,
            blocking_threads: blocking_threads(&config),
            max_streams: streams_per_connection(&config),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            keepalive: (config.keepalive_interval_ms > 0).then(|| {
                (
                    Duration::from_millis(config.keepalive_interval_ms),
                    Duration::from_millis(config.keepalive_timeout_ms),
                )
            }),
            draining: state.draining.subscribe(),
            stop: stop_tx.subscribe(),
        };
        std::thread::Builder::new()
            .name(format!("terad-io-{i}"))
            .spawn(move || {
                let _ = done.send((i, io.run()));
            })
            .map_err(|e| ServerError::Engine(format!("cannot start I/O thread {i}: {e}")))?;
        feeds.push(feed);
    }
    drop(done_tx);
    tracing::info!(threads, "gRPC I/O threads started");
    tokio::spawn(accept(
        listener,
        feeds,
        limit.clone(),
        state.draining.subscribe(),
    ));
    let serve = async move {
        for _ in 0..threads {
            match done_rx.recv().await {
                Some((_, Ok(()))) => {}
                Some((i, Err(e))) => {
                    tracing::error!(io_thread = i, error = %e, "an I/O thread failed");
                    return Err(e);
                }
                None => return Err(ServerError::Engine("an I/O thread died".into())),
            }
        }
        Ok::<(), ServerError>(())
    };
    let signal = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight calls");
            state.start_draining();
        }
    };
    let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    let mut draining = state.draining.subscribe();
    let drain_deadline = async move {
        let _ = draining.wait_for(|d| *d).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::pin!(serve, drain_deadline, open, signal);
    let (mut opened, mut signalled) = (false, false);
    loop {
        tokio::select! {
            r = &mut serve => {
                r?;
                break;
            }
            _ = &mut signal, if !signalled => signalled = true,
            _ = &mut drain_deadline => {
                tracing::warn!(timeout_ms = config.drain_timeout_ms, "drain timed out: stopping with calls still in flight");
                let _ = stop_tx.send(true);
                break;
            }
            r = &mut open, if !opened => {
                opened = true;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!("serving");
                        // The database's files are open now: count again what the limit on
                        // open files leaves for connections.
                        if let Ok(fds) = conns::open_descriptors() {
                            limit.rebase(fds);
                            tracing::info!(connections = limit.capacity(), open_files = fds, "connection limit after opening the database");
                        }
                        tokio::spawn(watch_poison(state.clone()));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(ServerError::Engine(format!("the open task failed: {e}"))),
                }
            }
        }
    }
    if !opened {
        // Shutdown came during recovery: let it finish so that the checkpoint below sees it.
        match open.await {
            Ok(r) => r?,
            Err(e) => return Err(ServerError::Engine(format!("the open task failed: {e}"))),
        }
    }
    let durable = !matches!(config.durability_mode()?, DurabilityMode::None);
    if let Some(engine) = state.engine_if_open().filter(|_| durable) {
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            engine.db.sync()?;
            engine.db.checkpoint()
        })
        .await
        .map_err(|e| ServerError::Engine(format!("the checkpoint task failed: {e}")))?;
        match r {
            Ok(info) => tracing::info!(
                records = info.records,
                bytes = info.bytes,
                millis = started.elapsed().as_millis() as u64,
                "checkpoint written; stopped"
            ),
            Err(e) => {
                return Err(ServerError::Engine(format!(
                    "the shutdown checkpoint failed: {e} (acknowledged writes are in the log and replay at the next start)"
                )))
            }
        }
    }
    Ok(())
}

/// The blocking pool of each runtime that serves calls. Every engine write runs on it, and a
/// long poll (Changes with `wait_ms`, a WatchChanges stream) holds a thread while it waits:
/// size it for all of them at once, so that waiters never starve short calls.
fn blocking_threads(c: &Config) -> usize {
    c.max_concurrent_requests + c.max_watches + 64
}

/// The HTTP/2 streams one connection may have open at once (its SETTINGS; a client queues
/// the streams past it). No connection can use more calls than the concurrency limit and the
/// watch limit together; without a bound (tonic sets none), one connection could open
/// streams exempt from both (health Watch, reflection) until memory ran out.
fn streams_per_connection(c: &Config) -> u32 {
    u32::try_from(c.max_concurrent_requests + c.max_watches).unwrap_or(u32::MAX)
}

/// The connection limit: `max_connections`, and descriptors kept for the engine below the
/// limit on open files, which is raised to its hard limit first (`conns` says why).
/// Raise the soft limit on open files (first thing, before the database opens its files).
fn raise_open_files() -> u64 {
    match conns::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the limit on open files; connections are limited by max_connections only");
            u64::MAX
        }
    }
}

/// The connection limit under `nofile` open files, with what is open now; counted again once
/// the database is open (`ConnLimit::rebase`).
fn connection_limit(config: &Config, nofile: u64) -> Arc<ConnLimit> {
    let open_now = conns::open_descriptors().unwrap_or(0);
    let limit = ConnLimit::new(config.max_connections, nofile, open_now);
    let capacity = limit.capacity();
    if capacity < config.max_connections {
        tracing::warn!(
            max_connections = config.max_connections,
            open_files_limit = nofile,
            open_files = open_now,
            reserve = conns::reserve_for(nofile),
            "the limit on open files leaves room for only {capacity} connections (raise it with ulimit -n or LimitNOFILE=)"
        );
    }
    tracing::info!(
        connections = capacity,
        open_files_limit = nofile,
        "connection limits"
    );
    limit
}

/// The `io_thread` label values of `terad_connections_accepted_total` (threads past the last
/// share `other`, so that the label set stays bounded).
const IO_LABELS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

/// Accept connections and deal them out to the I/O threads in turn, until the drain starts
/// (which drops the listener: new connections are refused from then on).
/// Connections past the limits are refused (`ConnLimit::refuse`), with a warning at most
/// every 10 s.
async fn accept(
    listener: tokio::net::TcpListener,
    feeds: Vec<mpsc::UnboundedSender<(std::net::TcpStream, Slot)>>,
    limit: Arc<ConnLimit>,
    mut draining: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;
    let mut next = 0usize;
    let mut warned: Option<Instant> = None;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = draining.wait_for(|d| *d) => return,
        };
        let admitted = conn.and_then(|(s, _)| {
            let fd = u64::try_from(s.as_raw_fd()).unwrap_or(0);
            match limit.admit(fd) {
                Ok(slot) => {
                    s.set_nodelay(true)?;
                    Ok(Some((s.into_std()?, slot)))
                }
                Err(why) => {
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            reason = why.label(),
                            open = limit.open(),
                            "refusing connections (terad_connections_refused_total counts them)"
                        );
                    }
                    limit.refuse(s, why);
                    Ok(None)
                }
            }
        });
        let conn = match admitted {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: say so,
                // and give a full table a moment to drain instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let i = next % feeds.len();
        metrics::counter!("terad_connections_accepted_total", "io_thread" => IO_LABELS.get(i).copied().unwrap_or("other"))
            .increment(1);
        if feeds[i].send(conn).is_err() {
            // That I/O thread stopped (it failed to serve); the server is ending.
            return;
        }
        next = next.wrapping_add(1);
    }
}

/// Health follows the database: once a log failure poisons it, health turns NOT_SERVING
/// (and `/healthz` says why). Checked once a second, until the drain.
async fn watch_poison(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if *state.draining.borrow() {
            return;
        }
        if let Some(why) = state.engine_if_open().and_then(|e| e.db.poisoned()) {
            tracing::error!(reason = %why, "the database is poisoned: health is NOT_SERVING until terad is restarted");
            state.set_poisoned(why);
            return;
        }
    }
}

/// One gRPC I/O thread: a single-threaded tokio runtime serving the connections the acceptor
/// hands it. All of a connection's work (its HTTP/2 state, the calls' handlers, the writes)
/// stays on this thread, so when a read brings in many calls, their handlers all run before
/// the connection task writes, and the answers leave in one system call; on a multi-threaded
/// runtime, the connection task ran (or was stolen) as soon as the first answer was ready,
/// and each answer cost a `writev` and a loopback delivery (a quarter of terad's CPU at
/// concurrency 100; docs/benchmarks.md). Answers of 256 bytes or more (listings), which h2
/// writes one per flush, are batched the same way by [`Batched`].
struct IoThread {
    gate: Gate<Router>,
    conns: mpsc::UnboundedReceiver<(std::net::TcpStream, Slot)>,
    blocking_threads: usize,
    max_streams: u32,
    handshake_timeout: Duration,
    /// HTTP/2 ping interval and timeout.
    keepalive: Option<(Duration, Duration)>,
    draining: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl IoThread {
    /// Serve until the drain ends this thread's connections (or the drain times out).
    fn run(self) -> Result<(), ServerError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(self.blocking_threads)
            .build()
            .map_err(|e| ServerError::Engine(format!("cannot start an I/O runtime: {e}")))?;
        let IoThread {
            gate,
            conns,
            max_streams,
            handshake_timeout,
            keepalive,
            mut draining,
            mut stop,
            ..
        } = self;
        let r = rt.block_on(async move {
            // `from_std` registers the connection with this thread's reactor: it runs here,
            // as the server polls for the next connection.
            // Each keeps its slot in the connection count until tonic drops it.
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(conns).map(
                move |(s, slot)| {
                    tokio::net::TcpStream::from_std(s)
                        .map(|s| Counted::new(Batched::new(s), slot, handshake_timeout))
                },
            );
            let signal = async move {
                let _ = draining.wait_for(|d| *d).await;
            };
            // Deadlines are the gate's (DEADLINE_EXCEEDED; tonic's own timeout answers
            // CANCELLED).
            let serve = tonic::transport::Server::builder()
                .max_concurrent_streams(max_streams)
                .http2_keepalive_interval(keepalive.map(|k| k.0))
                .http2_keepalive_timeout(keepalive.map(|k| k.1))
                .serve_with_incoming_shutdown(gate, incoming, signal);
            tokio::select! {
                r = serve => r.map_err(ServerError::from),
                _ = stop.wait_for(|s| *s) => Ok(()),
            }
        });
        // Calls cut off by a drain timeout may still run on the blocking pool (a write
        // finishing its commit); give them a moment, as the checkpoint follows.
        rt.shutdown_timeout(Duration::from_secs(1));
        r
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A recursive delete left to the reclaim thread: the folder is gone at once, and the
    /// thread removes everything below it once the namespace is sent to it.
    #[test]
    fn the_reclaim_thread_empties_a_namespace_sent_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::state::testing::engine(dir.path());
        let m = &engine.meta;
        m.create_namespace(5, 1).unwrap();
        let keys = || engine.db.get_keyspace("meta").unwrap().len();
        let before = keys();
        m.mkdir(5, "/big", false, 1).unwrap();
        for d in 0..20 {
            m.mkdir(5, &format!("/big/d{d}/e"), true, 1).unwrap();
        }
        assert!(m.delete_deferred(5, "/big", true, None, 2).unwrap());
        assert!(keys() > before + 40, "the entries wait for the thread");
        engine.reclaim.send(5).unwrap();
        let t0 = Instant::now();
        while keys() != before {
            assert!(t0.elapsed() < Duration::from_secs(10), "{} left", keys());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
