//! `tera.auth.v1.Auth`: tokens for a user name and password, and Ping to see what a token
//! says. The password check (argon2) runs on the blocking pool, a few at a time (see
//! [`PasswordChecks`]); a token's first use of its namespace creates it in the engine
//! (idempotently).

use crate::auth::{now_secs, Claims, Role};
use crate::proto::auth::{self as pb, auth_server::Auth};
use crate::state::{blocking, State};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// The Auth service.
#[derive(Debug, Clone)]
pub struct AuthService {
    state: Arc<State>,
    checks: PasswordChecks,
}

impl AuthService {
    /// Password checks run one per CPU at once.
    pub fn new(state: Arc<State>) -> AuthService {
        AuthService {
            state,
            checks: PasswordChecks::new(crate::config::or_one_per_cpu(0)),
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
            0 => config.token_ttl_secs,
            t => t.min(config.token_max_ttl_secs),
        };
        let state = self.state.clone();
        let user = self
            .checks
            .run(move || state.users.check_password(&r.user, &r.password))
            .await?
            .ok_or_else(|| Status::unauthenticated("unknown user or wrong password"))?;
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
    use std::time::{Duration, Instant};

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
        // Every call has arrived: two checks run, 64 calls wait, the rest were refused.
        let allowed = 2 * (WAITING_PER_CHECK + 1);
        let t0 = Instant::now();
        while refused.load(Ordering::SeqCst) < 200 - allowed
            || checks.pending.load(Ordering::SeqCst) != allowed
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
