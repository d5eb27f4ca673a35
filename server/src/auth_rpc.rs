//! `tera.auth.v1.Auth`: tokens for a user name and password, and Ping to see what a token
//! says. The password check (argon2) runs on the blocking pool, a few at a time (see
//! [`PasswordChecks`]); repeated failures for one user from one address are slowed down
//! (see [`LoginThrottle`]); a token's first use of its namespace creates it in the engine
//! (idempotently).

use crate::auth::{now_secs, Claims, Role};
use crate::proto::auth::{self as pb, auth_server::Auth};
use crate::state::{blocking, State};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

/// Longest user name or password accepted.
const MAX_CREDENTIAL: usize = 1024;

/// Token calls that may wait for a password check, per check that may run at once; past
/// that, RESOURCE_EXHAUSTED.
const WAITING_PER_CHECK: usize = 32;

/// Bounds the password checks in flight. An argon2 check takes the memory its hash's
/// parameters ask for (19 MiB with argon2's defaults) and tens of milliseconds of a CPU, and
/// anyone can ask for one without a token: unbounded, a burst of wrong logins would take
/// gigabytes (the concurrency limit alone lets 1,024 run at once). At most `running` checks
/// run at once (one per CPU: more would not finish sooner), at most `WAITING_PER_CHECK` ×
/// that many calls wait for one, and the rest are refused at once with RESOURCE_EXHAUSTED.
/// A check holds its permit until it ends, also when its caller has gone.
#[derive(Debug, Clone)]
pub struct PasswordChecks {
    running: Arc<Semaphore>,
    max_running: usize,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
}

impl PasswordChecks {
    /// At most `running` checks at once (at least one).
    pub fn new(running: usize) -> PasswordChecks {
        let running = running.max(1);
        PasswordChecks {
            running: Arc::new(Semaphore::new(running)),
            max_running: running,
            pending: Arc::new(AtomicUsize::new(0)),
            max_pending: running * (WAITING_PER_CHECK + 1),
        }
    }

    /// Run `check` on the blocking pool once a permit is free, or refuse when too many calls
    /// wait already.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        /// Counts a call from its arrival until it has a result or is dropped.
        struct Pending<'a>(&'a AtomicUsize);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = Pending(&self.pending);
        if before >= self.max_pending {
            return Err(Status::resource_exhausted(format!(
                "{before} logins are waiting for a password check (at most {} run at once): retry with backoff",
                self.max_running
            )));
        }
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("terad is stopping"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            check()
        })
        .await
        .map_err(|e| Status::internal(format!("the password check failed: {e}")))
    }
}

/// Failed logins for one user from one address that cost nothing more.
const FREE_FAILURES: u32 = 5;
/// Longest wait a run of failures can earn.
const MAX_DELAY: Duration = Duration::from_secs(300);
/// A user and address with no failure for this long start over.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Most (user, address) pairs remembered at once.
const MAX_TRACKED: usize = 65_536;
/// A tracked pair: the user name's keyed hash and the client's address.
type PairKey = (u64, IpAddr);
/// Which pairs go first when the table is full: (held back now, attempts, last attempt).
type EvictOrder = (bool, u32, Instant);
/// Pairs dropped at once when the table is full.
const EVICT_BATCH: usize = MAX_TRACKED / 16;

/// Slows down password guessing. Every login attempt of a (user name, client address) pair
/// counts as a failure from the moment it starts until it succeeds, so that calls in flight
/// together cannot all pass before any has failed. Five are free; each attempt after that
/// makes the pair wait twice as long before its next one, from 1 s up to `MAX_DELAY`, and an
/// attempt during the wait is refused at once, without a password check (so it costs no
/// argon2 hash, and tells nothing about the password, a right one included). A success
/// forgets the pair; so does `FORGET_AFTER` without an attempt.
///
/// Pairs, not user names alone: someone failing on purpose from one address cannot lock the
/// user out from others (behind a proxy every client has the proxy's address, so there the
/// wait is per user: see docs/architecture.md). An IPv6 client counts by its /64, which one
/// holder usually has whole. Names are kept as 64-bit keyed hashes, so that memory stays
/// bounded (at most `MAX_TRACKED` pairs; to make room, `EVICT_BATCH` pairs are dropped at
/// once, those not held back, with the fewest attempts and the oldest first) whatever names
/// are tried.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    hasher: std::collections::hash_map::RandomState,
    pairs: Mutex<HashMap<(u64, IpAddr), Attempts>>,
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    last: Instant,
    until: Instant,
}

/// The address a client counts as: IPv4 (an IPv4-mapped IPv6 address too) whole, IPv6 by
/// its /64.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl LoginThrottle {
    fn key(&self, user: &str, addr: IpAddr) -> (u64, IpAddr) {
        (self.hasher.hash_one(user), client_key(addr))
    }

    /// Start a login attempt of `user` from `addr`: `Err(wait)` while the pair must wait,
    /// otherwise the attempt is counted (as a failure until [`LoginThrottle::succeeded`]).
    pub fn attempt(&self, user: &str, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = self.key(user, addr);
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = pairs.get(&key) {
            if f.until > now {
                return Err(f.until - now);
            }
        } else if pairs.len() >= MAX_TRACKED {
            pairs.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if pairs.len() > MAX_TRACKED - EVICT_BATCH {
                // Room for EVICT_BATCH new pairs at once (one scan of the table per batch,
                // not per call), made by dropping the pairs that matter least: first those
                // not held back now, then those with the fewest attempts, then the oldest.
                // So failing with many other names (one attempt each) cannot push out a
                // pair's wait, nor its count of failures between waits (which would give it
                // its free attempts again); only pairs with as many failures could.
                let mut order: Vec<(EvictOrder, PairKey)> = pairs
                    .iter()
                    .map(|(k, f)| ((f.until > now, f.count, f.last), *k))
                    .collect();
                // Down to EVICT_BATCH below the bound, so that the next scan is that many new
                // pairs away (even when forgetting the quiet ones freed a few).
                let n = order.len() - (MAX_TRACKED - EVICT_BATCH);
                order.select_nth_unstable_by_key(n - 1, |o| o.0);
                for (_, k) in &order[..n] {
                    pairs.remove(k);
                }
            }
        }
        let f = pairs.entry(key).or_insert(Attempts {
            count: 0,
            last: now,
            until: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > FREE_FAILURES {
            let doublings = (f.count - FREE_FAILURES - 1).min(16);
            f.until = now + Duration::from_secs(1 << doublings).min(MAX_DELAY);
        }
        Ok(())
    }

    /// A successful login of `user` from `addr`: its attempts are forgotten.
    pub fn succeeded(&self, user: &str, addr: IpAddr) {
        let key = self.key(user, addr);
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

/// The Auth service.
#[derive(Debug, Clone)]
pub struct AuthService {
    state: Arc<State>,
    checks: PasswordChecks,
    throttle: Arc<LoginThrottle>,
}

impl AuthService {
    /// Password checks run one per CPU at once.
    pub fn new(state: Arc<State>) -> AuthService {
        AuthService {
            state,
            checks: PasswordChecks::new(crate::config::or_one_per_cpu(0)),
            throttle: Arc::new(LoginThrottle::default()),
        }
    }
}

fn role_pb(r: Role) -> pb::Role {
    match r {
        Role::User => pb::Role::User,
        Role::Admin => pb::Role::Admin,
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn token(
        &self,
        req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        // Without a peer address (not TCP), all such callers count as one.
        let addr = req
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let r = req.into_inner();
        if r.user.len() > MAX_CREDENTIAL || r.password.len() > MAX_CREDENTIAL {
            return Err(crate::error::oversized(
                "user or password",
                r.user.len().max(r.password.len()),
                MAX_CREDENTIAL,
            ));
        }
        let engine = self.state.engine()?;
        let config = &self.state.config;
        let ttl = match u64::from(r.ttl_seconds) {
            // A default past the longest allowed gets the longest, as a request would.
            0 => config.token_ttl_secs.min(config.token_max_ttl_secs),
            t => t.min(config.token_max_ttl_secs),
        };
        if let Err(wait) = self.throttle.attempt(&r.user, addr, Instant::now()) {
            metrics::counter!("terad_logins_throttled_total").increment(1);
            return Err(Status::resource_exhausted(format!(
                "too many failed logins for this user from this address: retry in {} s",
                wait.as_secs_f64().ceil()
            )));
        }
        let state = self.state.clone();
        let name = r.user.clone();
        let user = self
            .checks
            .run(move || state.users.check_password(&r.user, &r.password))
            .await?;
        let Some(user) = user else {
            // The name only when it is a user's: an unknown one may be a password typed into
            // the wrong field. Debug-quoted, so that it cannot forge fields of the line.
            if self.state.users.knows(&name) {
                tracing::info!(user = ?name, %addr, "failed login: wrong password");
            } else {
                tracing::info!(%addr, "failed login: unknown user");
            }
            return Err(Status::unauthenticated("unknown user or wrong password"));
        };
        self.throttle.succeeded(&name, addr);
        let ns = user.namespace;
        blocking(move || engine.meta.create_namespace(ns, crate::meta_rpc::now_us())).await?;
        let now = now_secs();
        let claims = Claims {
            sub: user.name.clone(),
            ns,
            role: user.role,
            iat: now,
            exp: now + ttl as i64,
            pwd: crate::auth::fingerprint(&user.password_hash),
        };
        tracing::info!(user = %user.name, namespace = ns, ttl, "token issued");
        Ok(Response::new(pb::TokenResponse {
            token: self.state.key.sign(&claims),
            expires_at: claims.exp,
            namespace: ns,
            role: role_pb(user.role) as i32,
        }))
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let c = self.state.authenticate(&req)?;
        Ok(Response::new(pb::PingResponse {
            user: c.sub,
            namespace: c.ns,
            role: role_pb(c.role) as i32,
            expires_at: c.exp,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// Five attempts are free; each one after that doubles the wait, from 1 s; an attempt
    /// during the wait is refused; the wait is per user and address; a success forgets.
    #[test]
    fn failed_logins_wait_longer_each_time_per_user_and_address() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        for i in 0..=FREE_FAILURES {
            assert_eq!(t.attempt("admin", A, t0), Ok(()), "attempt {i}");
        }
        assert_eq!(t.attempt("admin", A, t0), Err(Duration::from_secs(1)));
        // Others are not held back: the same user elsewhere, another user here.
        assert_eq!(t.attempt("admin", B, t0), Ok(()));
        assert_eq!(t.attempt("bob", A, t0), Ok(()));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.attempt("admin", A, t1), Ok(()));
        assert_eq!(t.attempt("admin", A, t1), Err(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(t.attempt("admin", A, t2), Ok(()));
        assert_eq!(t.attempt("admin", A, t2), Err(Duration::from_secs(4)));
        t.succeeded("admin", A);
        for i in 0..=FREE_FAILURES {
            assert_eq!(
                t.attempt("admin", A, t2),
                Ok(()),
                "after a success, attempt {i}"
            );
        }
        assert!(t.attempt("admin", A, t2).is_err());
    }

    /// Attempts are counted when they start: of many sent together (none has failed yet),
    /// only the free ones and one more get a password check.
    #[test]
    fn attempts_in_flight_together_are_counted() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        let passed = (0..100)
            .filter(|_| t.attempt("admin", A, now).is_ok())
            .count();
        assert_eq!(passed, FREE_FAILURES as usize + 1);
    }

    /// IPv6 clients count by their /64; an IPv4-mapped address is its IPv4 address.
    #[test]
    fn an_ipv6_client_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        let v6 =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        for i in 0..=FREE_FAILURES {
            assert_eq!(t.attempt("admin", v6(i as u16), now), Ok(()));
        }
        assert!(t.attempt("admin", v6(999), now).is_err(), "same /64");
        let other64 = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(t.attempt("admin", other64, now), Ok(()));
        for _ in 0..=FREE_FAILURES {
            t.attempt("bob", A, now).unwrap();
        }
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(
            t.attempt("bob", mapped, now).is_err(),
            "::ffff:10.0.0.1 is 10.0.0.1"
        );
    }

    #[test]
    fn the_wait_is_capped_and_forgotten_after_a_quiet_spell() {
        let t = LoginThrottle::default();
        let mut now = Instant::now();
        for _ in 0..40 {
            match t.attempt("admin", A, now) {
                Ok(()) => {}
                Err(w) => {
                    assert!(w <= MAX_DELAY, "{w:?}");
                    now += w;
                }
            }
        }
        // Past the last wait, one attempt passes and earns the longest wait.
        while let Err(w) = t.attempt("admin", A, now) {
            now += w;
        }
        assert_eq!(t.attempt("admin", A, now), Err(MAX_DELAY));
        // After FORGET_AFTER without an attempt, the count starts over: five free again
        // (without the reset, the first would set a 5-minute wait).
        let later = now + FORGET_AFTER;
        for i in 0..=FREE_FAILURES {
            assert_eq!(t.attempt("admin", A, later), Ok(()), "attempt {i}");
        }
    }

    /// However many names and addresses fail, at most MAX_TRACKED pairs are kept, and a
    /// pair being held back is not the one dropped to make room (failing with many other
    /// names does not clear one's own wait), unless every pair is held back.
    #[test]
    fn memory_is_bounded_whatever_is_tried() {
        let t = LoginThrottle::default();
        let t0 = Instant::now();
        for _ in 0..=FREE_FAILURES {
            t.attempt("admin", A, t0).unwrap();
        }
        let later = t0 + Duration::from_millis(1);
        for i in 0..MAX_TRACKED + 100 {
            let at = later + Duration::from_nanos(i as u64);
            t.attempt(&format!("user{i}"), B, at).unwrap();
        }
        assert!(t.pairs.lock().unwrap().len() <= MAX_TRACKED);
        // admin from A is the oldest pair, but held back: it stays, and so does its wait.
        assert_eq!(
            t.attempt("admin", A, later),
            Err(Duration::from_secs(1) - Duration::from_millis(1))
        );
        // The oldest of the others went first: user0 is gone.
        let user0 = t.key("user0", B);
        assert!(!t.pairs.lock().unwrap().contains_key(&user0));
        // A pair between its waits keeps its count through a flood of new names: its next
        // failure waits longer than the last (2 s), it does not get free attempts again.
        let t = LoginThrottle::default();
        for _ in 0..=FREE_FAILURES {
            t.attempt("admin", A, t0).unwrap();
        }
        let after_wait = t0 + Duration::from_secs(2);
        for i in 0..2 * MAX_TRACKED {
            let at = after_wait + Duration::from_nanos(i as u64);
            t.attempt(&format!("junk{i}"), B, at).unwrap();
        }
        let again = after_wait + Duration::from_millis(1);
        t.attempt("admin", A, again).unwrap();
        assert_eq!(
            t.attempt("admin", A, again),
            Err(Duration::from_secs(2)),
            "the count of failures survived the flood"
        );
        // With every pair held back, the oldest of all go.
        let full = LoginThrottle::default();
        let held = |i: usize| {
            IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                i as u16,
                (i >> 16) as u16,
                0,
                0,
                0,
                1,
            ))
        };
        for i in 0..MAX_TRACKED {
            for _ in 0..=FREE_FAILURES {
                full.attempt("admin", held(i), t0 + Duration::from_nanos(i as u64))
                    .unwrap();
            }
        }
        full.attempt("admin", B, later).unwrap();
        let pairs = full.pairs.lock().unwrap();
        assert_eq!(pairs.len(), MAX_TRACKED - EVICT_BATCH + 1);
        assert!(!pairs.contains_key(&full.key("admin", held(0))));
        assert!(!pairs.contains_key(&full.key("admin", held(EVICT_BATCH - 1))));
        assert!(pairs.contains_key(&full.key("admin", held(EVICT_BATCH))));
        assert!(pairs.contains_key(&full.key("admin", held(MAX_TRACKED - 1))));
    }

    /// However many calls arrive together, no more than the permitted checks run at once,
    /// a bounded number wait, and the rest are refused at once with RESOURCE_EXHAUSTED.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_checks_are_bounded() {
        let checks = PasswordChecks::new(2);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let release = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..200 {
            let (checks, now, most) = (checks.clone(), now.clone(), most.clone());
            let (release, refused) = (release.clone(), refused.clone());
            calls.push(tokio::spawn(async move {
                let r = checks
                    .run(move || {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        while !release.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await;
                if let Err(s) = &r {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                    assert!(s.message().contains("retry with backoff"), "{s:?}");
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                r.is_ok()
            }));
        }
        // Every call has arrived: two checks run, 64 calls wait, the rest were refused. (The
        // second check's closure may start a while after its permit on a loaded machine:
        // wait for both to be inside.)
        let allowed = 2 * (WAITING_PER_CHECK + 1);
        let t0 = Instant::now();
        while refused.load(Ordering::SeqCst) < 200 - allowed
            || checks.pending.load(Ordering::SeqCst) != allowed
            || now.load(Ordering::SeqCst) < 2
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "calls did not settle"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.store(true, Ordering::SeqCst);
        let mut ran = 0;
        for c in calls {
            ran += usize::from(c.await.expect("join"));
        }
        assert_eq!(ran, allowed);
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "two checks at once, never more"
        );
        assert_eq!(
            checks.pending.load(Ordering::SeqCst),
            0,
            "every call counted out"
        );
        // Once the burst is over, a login is served again.
        assert!(checks.run(|| ()).await.is_ok());
    }
}
