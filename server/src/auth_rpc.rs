//! `tera.auth.v1.Auth`: tokens for a user name and password, and Ping to see what a token
//! says. The password check (argon2) runs on the blocking pool; a token's first use of its
//! namespace creates it in the engine (idempotently).

use crate::auth::{now_secs, Claims, Role};
use crate::proto::auth::{self as pb, auth_server::Auth};
use crate::state::{blocking, State};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Longest user name or password accepted.
const MAX_CREDENTIAL: usize = 1024;

/// The Auth service.
#[derive(Debug, Clone)]
pub struct AuthService {
    state: Arc<State>,
}

impl AuthService {
    pub fn new(state: Arc<State>) -> AuthService {
        AuthService { state }
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
        let user =
            tokio::task::spawn_blocking(move || state.users.check_password(&r.user, &r.password))
                .await
                .map_err(|e| Status::internal(format!("the password check failed: {e}")))?
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
