//! `tera-server`: terad, the gRPC metadata server of Teraservices (DESIGN.md §6), and
//! teractl, its command-line client and load generator.
//!
//! terad puts the metadata model of [`tera_engine::meta`] behind `tera.meta.v1.Metadata`, with
//! tokens from `tera.auth.v1.Auth`, the standard `grpc.health.v1.Health` and server
//! reflection, Prometheus metrics and `/healthz` on a second port. The protos are under
//! `server/proto`; docs/architecture.md ("Server") has the code map, the token format, the
//! configuration's precedence and the error table.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tera_server::config::Config;
//! let config = Config::resolve(None, &|k| std::env::var(k).ok(), &[])?;
//! tera_server::server::run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod auth_rpc;
pub mod batch;
pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod conns;
pub mod error;
pub mod h2client;
pub mod health;
pub mod meta_rpc;
pub mod metrics;
pub mod proto;
pub mod reflection;
pub mod router;
pub mod server;
pub mod state;
pub mod wire;
