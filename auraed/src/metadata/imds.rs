//! The link-local metadata endpoint, `http://169.254.169.254/`, for
//! unmodified workloads in a cell-backed instance (a pod's containers
//! share its network): the IMDSv2 protocol, serving the instance's own
//! record.
//!
//! The listening socket is in a network namespace of its own, reached only
//! from the instance's network namespace over a veth pair
//! ([`crate::net::metadata_listener`]; it takes no port in the instance,
//! whose workloads may listen on port 80), so whatever connects is in the
//! instance: the caller is identified by where it is, never by anything it
//! sends, and a nested instance has a namespace (and an endpoint) of its
//! own. For a cell-backed instance the parent makes that
//! socket and answers from its records ([`Source::Records`]); in a microVM
//! the instance's own auraed does, asking its parent for the record over
//! the bridge with its SVID ([`Source::Parent`]).
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds:
//!   1..=21600` gives a session token ([`MAX_TOKENS`] live at most, the
//!   oldest dropped first);
//! - `GET /latest/meta-data/` (a listing), `/latest/meta-data/<key>`,
//!   `/latest/meta-data/tags/` and `/latest/meta-data/tags/<key>` (the
//!   record's key/values), and `/aurae/v0/record` (JSON) need
//!   `X-aws-ec2-metadata-token`; without a live token: 401;
//! - a request carrying `X-Forwarded-For` is refused (403), as IMDSv2 does,
//!   so that a proxy in the workload can't relay outside requests to it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use aurae_proto::metadata as pb;
use tonic::transport::Channel;

use super::{Record, Store};

/// Where the endpoint gets the record it serves.
#[derive(Clone)]
pub enum Source {
    /// The parent's records, for instance `name`.
    Records { store: Arc<Store>, name: String },
    /// The instance's own auraed asks its parent (`Own`).
    Parent(Channel),
}

impl Source {
    async fn record(&self) -> Option<Record> {
        match self {
            Source::Records { store, name } => store.get(name).ok(),
            Source::Parent(channel) => {
                let mut client = pb::metadata_client::MetadataClient::new(channel.clone());
                let asked = client.own(pb::OwnRequest {});
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(Ok(r)) => Some(Record::from_pb(r.into_inner())),
                    Ok(Err(e)) => {
                        tracing::warn!("metadata endpoint: the parent refused: {}", e.message());
                        None
                    }
                    Err(_) => {
                        tracing::warn!("metadata endpoint: the parent did not answer in 5 s");
                        None
                    }
                }
            }
        }
    }
}

pub const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;
/// Live session tokens per instance, at most.
pub const MAX_TOKENS: usize = 32;
/// The longest a token lives (IMDSv2's limit): six hours.
pub const MAX_TTL_SECS: u64 = 21_600;
/// Connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// The session tokens of one instance's endpoint.
#[derive(Default)]
struct Tokens {
    live: Mutex<VecDeque<(String, Instant)>>,
}

impl Tokens {
    fn issue(&self, ttl: Duration) -> String {
        let mut raw = [0u8; 24];
        // The same source rustls draws its secrets from.
        let random = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut raw);
        if random.is_err() {
            // No randomness: no token (the caller gets 503).
            return String::new();
        }
        let token = hex::encode(raw);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        live.retain(|(_, until)| *until > now);
        while live.len() >= MAX_TOKENS {
            live.pop_front();
        }
        live.push_back((token.clone(), now + ttl));
        token
    }

    fn valid(&self, token: &str) -> bool {
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().any(|(t, until)| t == token && *until > now)
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The listing and the values of `/latest/meta-data/`.
fn meta_data(record: &Record, key: &str) -> Option<String> {
    let tags = || {
        record
            .metadata
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match key {
        "" => "name\npath\nspiffe-id\naddress\nparent-address\nbackend\nvcpus\nmemory-mib\ntags/"
            .to_string(),
        "name" => record.name.clone(),
        "path" => record.path.clone(),
        "spiffe-id" => record.spiffe_id.clone(),
        "address" => record.address.clone(),
        "parent-address" => record.parent_address.clone(),
        "backend" => record.backend.clone(),
        "vcpus" => record.vcpus.to_string(),
        "memory-mib" => record.memory_mib.to_string(),
        "tags" | "tags/" => tags(),
        other => record.metadata.get(other.strip_prefix("tags/")?)?.clone(),
    })
}

async fn answer(
    req: &Request<Incoming>,
    source: &Source,
    tokens: &Tokens,
) -> Response<Full<Bytes>> {
    if req.headers().contains_key("x-forwarded-for") {
        return reply(StatusCode::FORBIDDEN, "forwarded requests are refused\n");
    }
    let path = req.uri().path();
    if path == "/latest/api/token" {
        if req.method() != Method::PUT {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "a token is asked for with PUT\n",
            );
        }
        let ttl = req
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TTL_SECS).contains(t));
        let Some(ttl) = ttl else {
            return reply(
                StatusCode::BAD_REQUEST,
                format!("{TTL_HEADER}: 1 to {MAX_TTL_SECS} seconds\n"),
            );
        };
        let token = tokens.issue(Duration::from_secs(ttl));
        if token.is_empty() {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no randomness for a token\n",
            );
        }
        return reply(StatusCode::OK, token);
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET, with a token\n");
    }
    let token = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !tokens.valid(token) {
        return reply(
            StatusCode::UNAUTHORIZED,
            "a live token is needed: PUT /latest/api/token first\n",
        );
    }
    let Some(record) = source.record().await else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance's record can't be read now\n",
        );
    };
    if path == "/aurae/v0/record" {
        let json = serde_json::json!({
            "name": record.name,
            "path": record.path,
            "spiffe_id": record.spiffe_id,
            "address": record.address,
            "parent_address": record.parent_address,
            "backend": record.backend,
            "vcpus": record.vcpus,
            "memory_mib": record.memory_mib,
            "metadata": record.metadata,
        });
        return reply(StatusCode::OK, json.to_string());
    }
    let key = path
        .strip_prefix("/latest/meta-data")
        .map(|k| k.trim_start_matches('/'));
    match key.and_then(|k| meta_data(&record, k)) {
        Some(value) => reply(StatusCode::OK, value),
        None => reply(StatusCode::NOT_FOUND, "no such key\n"),
    }
}

/// Serves the record `source` gives on `listener` (made in the instance's
/// network namespace) until the task is aborted; aborting it closes every
/// connection too.
pub fn serve(
    listener: std::net::TcpListener,
    source: Source,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let tokens = Arc::new(Tokens::default());
    Ok(tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("metadata endpoint: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (source, tokens) = (source.clone(), tokens.clone());
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (source, tokens) = (source.clone(), tokens.clone());
                    async move { Ok::<_, Infallible>(answer(&req, &source, &tokens).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("metadata endpoint: a connection: {e}");
                }
                drop(slot);
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_are_bounded() {
        let t = Tokens::default();
        let first = t.issue(Duration::from_secs(60));
        assert_eq!(first.len(), 48);
        assert!(t.valid(&first));
        assert!(!t.valid("nope"));
        let gone = t.issue(Duration::ZERO);
        assert!(!t.valid(&gone), "an expired token");
        for _ in 0..MAX_TOKENS {
            t.issue(Duration::from_secs(60));
        }
        assert!(!t.valid(&first), "the oldest went first");
    }

    #[test]
    fn keys_and_tags_are_served_from_the_record() {
        let r = Record {
            name: "a".into(),
            path: "a".into(),
            spiffe_id: "spiffe://td/auraed/a".into(),
            address: "[fd00::2]:8443".into(),
            parent_address: "[fd00::1]:8444".into(),
            backend: "cell".into(),
            vcpus: 1,
            memory_mib: 256,
            metadata: [("role".to_string(), "db".to_string())].into(),
        };
        assert_eq!(
            meta_data(&r, "spiffe-id").as_deref(),
            Some("spiffe://td/auraed/a")
        );
        assert_eq!(meta_data(&r, "tags/").as_deref(), Some("role"));
        assert_eq!(meta_data(&r, "tags/role").as_deref(), Some("db"));
        assert_eq!(meta_data(&r, "tags/nope"), None);
        assert_eq!(meta_data(&r, "nope"), None);
        assert!(meta_data(&r, "").is_some_and(|l| l.contains("tags/")));
    }
}
