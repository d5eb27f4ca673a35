//! What teractl uses to talk to terad: a channel to the server, and clients of each service
//! that send the bearer token (and, for commands, a fresh W3C `traceparent`; and a deadline
//! as `grpc-timeout`) on every call.

use crate::proto::auth::auth_client::AuthClient;
use crate::proto::health::health_client::HealthClient;
use crate::proto::meta::metadata_client::MetadataClient;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` and, if asked, a `traceparent` and a deadline to each
/// request.
#[derive(Debug, Clone)]
pub struct Bearer {
    header: Option<AsciiMetadataValue>,
    trace: bool,
    deadline: Option<Duration>,
}

impl Bearer {
    /// `token` may be `None` (for calls that need none).
    pub fn new(token: Option<&str>, trace: bool) -> Result<Bearer, String> {
        let header = token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {}", t.trim()))
                    .map_err(|_| "the token has characters a header cannot carry".to_string())
            })
            .transpose()?;
        Ok(Bearer {
            header,
            trace,
            deadline: None,
        })
    }

    /// Send `d` as each call's deadline (`grpc-timeout`), so that the server stops working
    /// on a call the client no longer waits for, and a long poll answers in time. (The
    /// channel's own timeout, [`connect`]'s, only stops the client waiting.)
    pub fn deadline(mut self, d: Duration) -> Bearer {
        self.deadline = Some(d);
        self
    }

    /// The headers this interceptor adds that are the same on every call (authorization and
    /// `grpc-timeout`), for calls made without tonic ([`crate::h2client::H2Channel::unary_bytes`]).
    /// A `traceparent` differs per call and is not among them.
    pub fn fixed_headers(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = &self.header {
            if let Ok(v) = http::HeaderValue::from_bytes(v.as_encoded_bytes()) {
                h.insert(http::header::AUTHORIZATION, v);
            }
        }
        if let Some(d) = self.deadline {
            if let Ok(v) = http::HeaderValue::from_str(&grpc_timeout(d)) {
                h.insert("grpc-timeout", v);
            }
        }
        h
    }
}

/// `d` as gRPC's `grpc-timeout` value: at most 8 digits and a unit, the finest unit that
/// fits (rounded up, so that the server never gets less time than the client waits).
pub fn grpc_timeout(d: Duration) -> String {
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    // The spec asks for a positive value.
    let ns = d.as_nanos().max(1);
    for (per, unit) in units {
        let n = ns.div_ceil(per);
        if n < 100_000_000 {
            return format!("{n}{unit}");
        }
    }
    "99999999H".into()
}

/// A random W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> Option<String> {
    let b = crate::auth::random_bytes::<24>().ok()?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!("00-{}-{}-01", &hex[..32], &hex[32..]))
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(d) = self.deadline {
            req.set_timeout(d);
        }
        if self.trace {
            if let Some(tp) = new_traceparent().and_then(|t| MetadataValue::try_from(t).ok()) {
                req.metadata_mut().insert("traceparent", tp);
            }
        }
        Ok(req)
    }
}

pub type Meta = MetadataClient<InterceptedService<Channel, Bearer>>;
pub type Auth = AuthClient<InterceptedService<Channel, Bearer>>;

/// Connect to `url` (`http://host:port`). Each call builds one HTTP/2 connection.
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("server address {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e} (is terad running? see --server)"))
}

/// The Metadata client over `ch`, sending `bearer`'s headers.
pub fn meta(ch: Channel, bearer: Bearer) -> Meta {
    MetadataClient::with_interceptor(ch, bearer)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The Auth client over `ch`.
pub fn auth(ch: Channel, bearer: Bearer) -> Auth {
    AuthClient::with_interceptor(ch, bearer)
}

/// The Health client over `ch`.
pub fn health(ch: Channel) -> HealthClient<Channel> {
    HealthClient::new(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_take_the_finest_unit_that_fits_in_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_nanos(5)), "5n");
        assert_eq!(grpc_timeout(Duration::ZERO), "1n");
        assert_eq!(grpc_timeout(Duration::from_millis(99)), "99000000n");
        assert_eq!(grpc_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(300)), "300000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            grpc_timeout(Duration::from_nanos(1_500_000_001)),
            "1500001u"
        );
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[test]
    fn fixed_headers_carry_the_token_and_the_deadline() {
        let b = Bearer::new(Some(" tok "), false)
            .unwrap()
            .deadline(Duration::from_secs(5));
        let h = b.fixed_headers();
        assert_eq!(h["authorization"], "Bearer tok");
        assert_eq!(h["grpc-timeout"], "5000000u");
        assert_eq!(h.len(), 2);
        assert!(Bearer::new(None, true).unwrap().fixed_headers().is_empty());
    }
}
