//! What every service of a running terad shares: the database (set once recovery is done),
//! the users and the token key, the configuration, and the drain signal.

use crate::auth::{Claims, TokenError, TokenKey, Users, VerifiedTokens};
use crate::config::Config;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use tera_engine::meta::{MetaError, MetaStore};
use tera_engine::Db;
use tokio::sync::watch;
use tonic::{Request, Status};

/// The open database and its metadata model.
#[derive(Debug)]
pub struct Engine {
    pub db: Db,
    pub meta: MetaStore,
    /// The background reclaimer (`server::spawn_reclaimer`): a namespace sent here has its
    /// trash queue emptied, one atomic step at a time, after a recursive delete returned.
    pub reclaim: std::sync::mpsc::Sender<u64>,
}

/// Shared by every service and the HTTP endpoint.
#[derive(Debug)]
pub struct State {
    engine: OnceLock<Arc<Engine>>,
    pub users: Users,
    pub key: TokenKey,
    pub config: Config,
    /// Set to true when the server starts draining (SIGTERM or ctrl-c): health turns
    /// NOT_SERVING and open streams end.
    pub draining: watch::Sender<bool>,
    /// Whether the server serves (the database is open and it is not draining): what the
    /// health service reports.
    pub serving: watch::Sender<bool>,
    /// Open WatchChanges streams.
    pub watches: AtomicUsize,
    /// Open health Watch streams by connection (no token needed, so they have a limit of
    /// their own: [`crate::health::MAX_HEALTH_WATCHES`] per connection).
    pub health_watches:
        std::sync::Mutex<std::collections::HashMap<Option<std::net::SocketAddr>, usize>>,
    /// Why the database refuses writes (a log failure), once terad noticed: health is then
    /// NOT_SERVING until a restart.
    poisoned: OnceLock<String>,
    /// Tokens already verified (see [`VerifiedTokens`]).
    verified: VerifiedTokens,
}

impl State {
    pub fn new(users: Users, key: TokenKey, config: Config) -> State {
        State {
            engine: OnceLock::new(),
            users,
            key,
            config,
            draining: watch::Sender::new(false),
            serving: watch::Sender::new(false),
            watches: AtomicUsize::new(0),
            health_watches: Default::default(),
            poisoned: OnceLock::new(),
            verified: VerifiedTokens::default(),
        }
    }

    /// The database was poisoned (`why`): health turns NOT_SERVING for good, so that a load
    /// balancer or an orchestrator moves the traffic away and restarts terad (which refuses
    /// writes, and reads of what the failure left undurable, until then).
    pub fn set_poisoned(&self, why: String) {
        let _ = self.poisoned.set(why);
        self.serving.send_replace(false);
    }

    /// Why the database refuses writes, once terad noticed.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.get().map(String::as_str)
    }

    /// Install the database once it is open and recovered.
    pub fn set_engine(&self, e: Arc<Engine>) {
        if self.engine.set(e).is_err() {
            tracing::error!("the database was installed twice; keeping the first");
        }
        if !*self.draining.borrow() && self.poisoned.get().is_none() {
            self.serving.send_replace(true);
        }
    }

    /// Start draining: health turns NOT_SERVING and open streams end.
    pub fn start_draining(&self) {
        // Draining first: a health watcher woken by the status change sees it and ends.
        self.draining.send_replace(true);
        self.serving.send_replace(false);
    }

    /// The database, or UNAVAILABLE while it is still being recovered.
    pub fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.engine.get().cloned().ok_or_else(|| {
            Status::unavailable("terad is recovering its database: retry in a moment")
        })
    }

    /// The engine if it is open (for metrics and shutdown).
    pub fn engine_if_open(&self) -> Option<Arc<Engine>> {
        self.engine.get().cloned()
    }

    /// Whether the server serves: the database is open and it is not draining.
    pub fn serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// The caller's claims, from `authorization: Bearer <token>`.
    pub fn authenticate<T>(&self, req: &Request<T>) -> Result<Claims, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or(TokenError::Missing)
            .map_err(unauthenticated)?;
        let header = header
            .to_str()
            .map_err(|_| unauthenticated(TokenError::Malformed("not ASCII")))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                unauthenticated(TokenError::Malformed(
                    "the authorization metadata must be `Bearer <token>`",
                ))
            })?;
        let claims = self
            .verified
            .verify(&self.key, token.trim(), crate::auth::now_secs())
            .map_err(unauthenticated)?;
        self.users.check_current(&claims).map_err(unauthenticated)?;
        Ok(claims)
    }

    /// The caller's claims and the namespace the request reaches (`requested`, 0 for the
    /// caller's own), or PERMISSION_DENIED.
    pub fn authorize<T>(&self, req: &Request<T>, requested: u64) -> Result<(Claims, u64), Status> {
        let claims = self.authenticate(req)?;
        match claims.namespace(requested) {
            Some(ns) => Ok((claims, ns)),
            None => Err(Status::permission_denied(format!(
                "user {:?} may reach only its own namespace {}, not {requested} (pass 0 for your own; other namespaces need the admin role)",
                claims.sub, claims.ns
            ))),
        }
    }
}

fn unauthenticated(e: TokenError) -> Status {
    Status::unauthenticated(e.to_string())
}

/// The answer of a read made on the calling runtime thread (`MetaStore::*_deferred`), once
/// what it saw is durable. Reads take a partition lock only for microseconds (writers hold it
/// for their in-memory apply, never across an fsync) and the far tier is memory, so a read
/// blocks less than a hop to the blocking pool would cost: that hop (two context switches)
/// was most of a stat's server time. Usually what it saw is durable already (one atomic
/// load); when a batch it saw still waits for its flush, the task awaits that flush (the
/// engine wakes it), so that no thread waits for an fsync. Writes, which may wait for an
/// fsync, and change-feed waits go through [`blocking`].
pub async fn settle<T>(
    engine: &Engine,
    (r, seen): (Result<T, MetaError>, tera_engine::Seen),
) -> Result<T, Status> {
    if !engine.meta.is_durable(seen) {
        engine
            .meta
            .durable(seen)
            .await
            .map_err(crate::error::meta_status)?;
    }
    r.map_err(crate::error::meta_status)
}

/// Run a blocking engine call off the async runtime. It holds the call's place under the
/// concurrency limit until it finishes, even if the call is cancelled or times out first
/// (see [`crate::router::Slot`]).
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, MetaError> + Send + 'static,
{
    let slot = crate::router::current_slot();
    let work = move || {
        let r = f();
        drop(slot);
        r
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(crate::error::meta_status),
        Err(e) => Err(Status::internal(format!("the request's task failed: {e}"))),
    }
}

/// Completes once the server drains.
pub async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// A `State` and an engine in a temporary directory, for the unit tests of the modules that
/// read the state (health, metrics).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A state with an empty users file and no engine yet: what terad has while recovering.
    pub(crate) fn state(dir: &std::path::Path) -> State {
        let (users, _) = Users::open(&dir.join("users.toml"), dir).unwrap();
        State::new(users, TokenKey::new([7; 32]), Config::default())
    }

    /// A small open database (64 MiB, no background maintenance).
    pub(crate) fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let mut c = tera_engine::Config::new(dir.join("far"));
        c.dram_budget_bytes = 64 << 20;
        c.background_maintenance = false;
        let db = Db::open(c).unwrap();
        let meta = MetaStore::open(&db).unwrap();
        let reclaim = crate::server::spawn_reclaimer(meta.clone(), Vec::new()).unwrap();
        Arc::new(Engine { db, meta, reclaim })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{engine, state};

    #[test]
    fn a_poisoned_database_turns_health_not_serving_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        s.set_engine(engine(dir.path()));
        assert!(s.serving());
        assert_eq!(s.poisoned(), None);
        s.set_poisoned("the write-ahead log could not be made durable".into());
        assert!(!s.serving());
        assert_eq!(
            s.poisoned(),
            Some("the write-ahead log could not be made durable")
        );
        // Poisoned before the database is installed (a second install): it stays down.
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = state(dir2.path());
        s2.set_poisoned("x".into());
        s2.set_engine(engine(dir2.path()));
        assert!(!s2.serving());
    }
}
