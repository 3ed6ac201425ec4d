//! Routing to instances: a request whose `aurae-instance` metadata names a
//! path of instances (`a/b/c`) is passed, whole and unparsed (any RPC,
//! streaming ones included), over this auraed's mTLS link to the first
//! one (`a`), with the rest of the path (`b/c`) left in the metadata for
//! it to route further. The caller was authorized here first; each hop
//! authorizes its parent.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

use crate::runtime::Runtime;

/// The metadata key that names the instance a request is for.
pub const INSTANCE_HEADER: &str = "aurae-instance";

/// The first instance of a path and the rest: `a/b/c` → (`a`, `b/c`).
pub fn split_path(path: &str) -> Result<(&str, Option<&str>), String> {
    let path = path.trim_matches('/');
    let (first, rest) = match path.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (path, None),
    };
    crate::validation::name(INSTANCE_HEADER, first).map_err(|e| e.to_string())?;
    Ok((first, rest.filter(|r| !r.is_empty())))
}

/// The one call a routed request may not make: an instance's parent gives
/// it an identity, and a request routed through the parent would carry the
/// parent's.
const ASSUME_PATH: &str = "/aurae.metadata.v0.Metadata/Assume";

#[derive(Clone)]
pub struct RouteLayer {
    runtime: Arc<Runtime>,
}

impl RouteLayer {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

fn refuse(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

impl<S> Service<http::Request<Body>> for Route<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let Some(target) = req.headers().get(INSTANCE_HEADER).cloned() else {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        };
        if req.uri().path() == ASSUME_PATH {
            return Box::pin(async move {
                Ok(refuse(tonic::Status::permission_denied(
                    "Assume is a parent's own call to its instance; it is not routed",
                )))
            });
        }
        let runtime = self.runtime.clone();
        Box::pin(async move {
            let path = match target.to_str() {
                Ok(p) => p.to_string(),
                Err(_) => {
                    return Ok(refuse(tonic::Status::invalid_argument(format!(
                        "{INSTANCE_HEADER}: not ASCII"
                    ))))
                }
            };
            let (first, rest) = match split_path(&path) {
                Ok(parts) => parts,
                Err(e) => return Ok(refuse(tonic::Status::invalid_argument(e))),
            };
            let instance = match runtime.instance(first) {
                Ok(i) => i,
                Err(e) => return Ok(refuse(e.into())),
            };
            match rest.map(http::HeaderValue::from_str) {
                Some(Ok(v)) => {
                    req.headers_mut().insert(INSTANCE_HEADER, v);
                }
                Some(Err(_)) => {
                    return Ok(refuse(tonic::Status::invalid_argument(format!(
                        "{INSTANCE_HEADER}: not a header value"
                    ))))
                }
                None => {
                    req.headers_mut().remove(INSTANCE_HEADER);
                }
            }
            let channel = instance.channel();
            match channel.oneshot(req).await {
                Ok(resp) => Ok(resp),
                Err(e) => Ok(refuse(tonic::Status::unavailable(format!(
                    "instance {first}: {e}"
                )))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_the_first_hop() {
        assert_eq!(split_path("a").expect("a"), ("a", None));
        assert_eq!(split_path("a/b/c").expect("abc"), ("a", Some("b/c")));
        assert_eq!(split_path("/a/").expect("slashes"), ("a", None));
        assert!(split_path("").is_err());
        assert!(split_path("A/b").is_err());
        assert!(split_path("../b").is_err());
    }
}
