//! `grpc.health.v1.Health`: SERVING once the database is open and recovered, NOT_SERVING
//! before that and while draining. The overall status (service `""`) and each of terad's
//! services report the same; an unknown service is NOT_FOUND for Check and SERVICE_UNKNOWN
//! for Watch. A Watch stream sends the status at once and on every change, and ends once the
//! server drains (after sending NOT_SERVING). A connection has at most [`MAX_HEALTH_WATCHES`]
//! open at once (they need no token).

use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::Health;
use crate::proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use crate::state::State;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The services health reports on (besides the overall `""`).
pub const SERVICES: &[&str] = &["tera.meta.v1.Metadata", "tera.auth.v1.Auth"];

/// The Health service.
#[derive(Debug, Clone)]
pub struct HealthService {
    state: Arc<State>,
}

impl HealthService {
    pub fn new(state: Arc<State>) -> HealthService {
        HealthService { state }
    }
}

fn known(service: &str) -> bool {
    service.is_empty() || SERVICES.contains(&service)
}

fn response(serving: bool) -> HealthCheckResponse {
    HealthCheckResponse {
        status: if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        } as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        if !known(&service) {
            return Err(Status::not_found(format!(
                "unknown service {service:?}: terad reports on \"\" (overall), {}",
                SERVICES.join(", ")
            )));
        }
        Ok(Response::new(response(self.state.serving())))
    }

    async fn list(
        &self,
        _req: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let serving = self.state.serving();
        let statuses = std::iter::once("")
            .chain(SERVICES.iter().copied())
            .map(|s| (s.to_string(), response(serving)))
            .collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Anyone can open one, and each holds a task: a bound per connection (a client
        // needs one or two), so that memory stays bounded by `max_connections` and no
        // connection can use up another's.
        let conn = req.remote_addr();
        let service = req.into_inner().service;
        let slot = HealthWatchSlot::take(&self.state, conn)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut serving = self.state.serving.subscribe();
        let mut draining = self.state.draining.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            if !known(&service) {
                let unknown = HealthCheckResponse {
                    status: ServingStatus::ServiceUnknown as i32,
                };
                if tx.send(Ok(unknown)).await.is_ok() {
                    tokio::select! {
                        _ = tx.closed() => {}
                        _ = crate::state::drained(&mut draining) => {}
                    }
                }
                return;
            }
            loop {
                // Draining first: `start_draining` sets it before it turns serving off, so a
                // drain that lands between the two reads still ends the stream with
                // NOT_SERVING, never with a SERVING read just before.
                let drained = *draining.borrow_and_update();
                let now = *serving.borrow_and_update() && !drained;
                if tx.send(Ok(response(now))).await.is_err() {
                    return;
                }
                if drained {
                    return;
                }
                tokio::select! {
                    r = serving.changed() => if r.is_err() { return },
                    r = draining.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Health Watch streams one connection may have open at once; past it, RESOURCE_EXHAUSTED.
pub const MAX_HEALTH_WATCHES: usize = 8;

/// Counts an open health Watch stream of a connection (its peer's address and port) until
/// dropped.
struct HealthWatchSlot(Arc<State>, Option<SocketAddr>);

impl HealthWatchSlot {
    fn take(state: &Arc<State>, conn: Option<SocketAddr>) -> Result<HealthWatchSlot, Status> {
        let mut open = state
            .health_watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = open.entry(conn).or_insert(0);
        if *n >= MAX_HEALTH_WATCHES {
            return Err(Status::resource_exhausted(format!(
                "this connection has {n} health Watch streams open, the limit \
                 ({MAX_HEALTH_WATCHES}): close one, or poll with Check"
            )));
        }
        *n += 1;
        Ok(HealthWatchSlot(state.clone(), conn))
    }
}

impl Drop for HealthWatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .0
            .health_watches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{engine, state};
    use tokio_stream::StreamExt;

    fn status(r: Result<Response<HealthCheckResponse>, Status>) -> ServingStatus {
        let code = r.expect("a status").into_inner().status;
        ServingStatus::try_from(code).expect("a known status")
    }

    /// The stream's next status (None once it ended), waiting at most 10 s.
    async fn next(
        w: &mut ReceiverStream<Result<HealthCheckResponse, Status>>,
    ) -> Option<ServingStatus> {
        tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
            .await
            .expect("a status within 10 s")
            .map(|m| ServingStatus::try_from(m.expect("a status").status).expect("known"))
    }

    fn req(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    /// Check, List and Watch through terad's life: NOT_SERVING while the database recovers,
    /// SERVING once it is installed, NOT_SERVING when draining (and Watch then ends); an
    /// unknown service is NOT_FOUND for Check and SERVICE_UNKNOWN for Watch.
    #[tokio::test]
    async fn health_follows_recovery_serving_and_draining() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(state(dir.path()));
        let h = HealthService::new(st.clone());
        for s in ["", SERVICES[0], SERVICES[1]] {
            assert_eq!(
                status(h.check(req(s)).await),
                ServingStatus::NotServing,
                "{s:?}"
            );
        }
        let e = h.check(req("tera.nope.v1.Nothing")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("tera.meta.v1.Metadata"), "{e:?}");
        let mut unknown = h.watch(req("nope")).await.unwrap().into_inner();
        assert_eq!(
            next(&mut unknown).await,
            Some(ServingStatus::ServiceUnknown)
        );

        let mut watch = h.watch(req("")).await.unwrap().into_inner();
        assert_eq!(next(&mut watch).await, Some(ServingStatus::NotServing));

        st.set_engine(engine(dir.path()));
        assert_eq!(status(h.check(req("")).await), ServingStatus::Serving);
        let list = h.list(Request::new(HealthListRequest {})).await.unwrap();
        let statuses = list.into_inner().statuses;
        assert_eq!(statuses.len(), 1 + SERVICES.len());
        assert!(statuses
            .values()
            .all(|r| r.status == ServingStatus::Serving as i32));
        assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving));

        st.start_draining();
        assert_eq!(status(h.check(req("")).await), ServingStatus::NotServing);
        assert_eq!(next(&mut watch).await, Some(ServingStatus::NotServing));
        assert_eq!(
            next(&mut watch).await,
            None,
            "the stream ends once draining"
        );
        assert!(
            next(&mut unknown).await.is_none(),
            "so does the unknown service's"
        );
    }

    /// Watch streams need no token, so they are bounded per connection: past the limit one
    /// more is RESOURCE_EXHAUSTED on that connection, another connection is unaffected, and a
    /// place comes back when a stream's client goes away.
    #[tokio::test]
    async fn watch_streams_are_bounded_and_their_places_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let st = Arc::new(state(dir.path()));
        let h = HealthService::new(st.clone());
        let from = |port: u16| {
            let mut r = req("");
            r.extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(SocketAddr::from(([10, 0, 0, 1], port))),
                });
            r
        };
        let mut open = Vec::new();
        for _ in 0..MAX_HEALTH_WATCHES {
            open.push(h.watch(from(1000)).await.unwrap().into_inner());
        }
        let e = h.watch(from(1000)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("poll with Check"), "{e:?}");
        let mut other = h
            .watch(from(1001))
            .await
            .expect("another connection")
            .into_inner();
        assert_eq!(next(&mut other).await, Some(ServingStatus::NotServing));
        drop(open.pop());
        let t0 = std::time::Instant::now();
        let mut again = loop {
            match h.watch(from(1000)).await {
                Ok(w) => break w.into_inner(),
                Err(e) => assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{e:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        assert_eq!(next(&mut again).await, Some(ServingStatus::NotServing));
    }
}
