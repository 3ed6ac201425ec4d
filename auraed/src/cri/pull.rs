//! Pulling images from OCI distribution registries (with `oci-client`)
//! into the [`ImageStore`]: through the configured mirrors first, each blob
//! written no larger than its descriptor says and kept only if its sha256
//! is the one asked for.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::Digest as _;
use tokio::io::AsyncWrite;

use super::config::CriSection;
use super::image_store::{sha256_hex, ImageRecord, ImageStore, StoreError};

/// The manifest kinds asked for.
const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The most a manifest, index or config may be.
const DOCUMENT_LIMIT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image.image: {reference:?} is not an image reference")]
    Reference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("{host}: {what}")]
    Registry {
        host: String,
        what: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// What the registry sent is not what was asked for.
    #[error("{host}: {what}")]
    Verify { host: String, what: String },
    #[error("the image store")]
    Store(#[from] StoreError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image's layout")]
    Task(#[source] crate::error::ApiError),
    #[error("pulling")]
    Client(#[from] super::registry_client::ClientError),
    /// Every host failed: each one's reason.
    #[error("pulling {reference}: {}", .tried.iter().map(|e| crate::error::chain(e)).collect::<Vec<_>>().join("; "))]
    AllFailed {
        reference: String,
        tried: Vec<PullError>,
    },
}

impl PullError {
    /// The gRPC code: a missing image is NOT_FOUND, a refusal
    /// PERMISSION_DENIED, content that doesn't match DATA_LOSS, an
    /// unreachable registry UNAVAILABLE.
    pub fn code(&self) -> tonic::Code {
        use OciDistributionError as O;
        match self {
            PullError::Reference { .. } => tonic::Code::InvalidArgument,
            PullError::Registry { source, .. } => match source.as_ref() {
                O::ImageManifestNotFoundError(_) => tonic::Code::NotFound,
                O::ServerError { code: 404, .. } => tonic::Code::NotFound,
                O::RegistryError { .. } => tonic::Code::NotFound,
                O::UnauthorizedError { .. } | O::AuthenticationFailure(_) => {
                    tonic::Code::PermissionDenied
                }
                O::RequestError(_) | O::IoError(_) => tonic::Code::Unavailable,
                _ => tonic::Code::DataLoss,
            },
            PullError::Verify { .. } => tonic::Code::DataLoss,
            PullError::Store(_)
            | PullError::Io { .. }
            | PullError::Task(_)
            | PullError::Client(_) => tonic::Code::Internal,
            // The most telling of the hosts' reasons: the last (the
            // registry itself, unless it is skipped).
            PullError::AllFailed { tried, .. } => tried
                .last()
                .map(PullError::code)
                .unwrap_or(tonic::Code::NotFound),
        }
    }
}

impl From<PullError> for tonic::Status {
    fn from(e: PullError) -> Self {
        tonic::Status::new(e.code(), crate::error::chain(&e))
    }
}

/// A reference as the store names it: `registry/repository:tag` (the tag
/// `latest` when none is given), or `registry/repository@digest`.
pub fn normalize(image: &str) -> Result<Reference, PullError> {
    let r: Reference = image.parse().map_err(|source| PullError::Reference {
        reference: image.to_string(),
        source,
    })?;
    if r.tag().is_none() && r.digest().is_none() {
        return Ok(Reference::with_tag(
            r.registry().to_string(),
            r.repository().to_string(),
            "latest".into(),
        ));
    }
    Ok(r)
}

pub struct Puller {
    pub cfg: CriSection,
    pub store: Arc<ImageStore>,
    /// The most one image's blobs may hold.
    pub limit: u64,
}

/// Credentials of a `PullImage` request.
pub fn auth_of(a: Option<&aurae_proto::cri::AuthConfig>) -> RegistryAuth {
    match a {
        Some(a) if !a.username.is_empty() => {
            RegistryAuth::Basic(a.username.clone(), a.password.clone())
        }
        Some(a) if !a.auth.is_empty() => {
            // base64 of "user:password", as in a docker config.
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&a.auth)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match decoded.as_deref().and_then(|d| d.split_once(':')) {
                Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
                None => RegistryAuth::Anonymous,
            }
        }
        Some(a) if !a.registry_token.is_empty() => RegistryAuth::Bearer(a.registry_token.clone()),
        Some(a) if !a.identity_token.is_empty() => RegistryAuth::Bearer(a.identity_token.clone()),
        _ => RegistryAuth::Anonymous,
    }
}

impl Puller {
    /// Pulls `image` (unless the store has it by digest), trying each of
    /// its registry's hosts in turn.
    pub async fn pull(&self, image: &str, auth: &RegistryAuth) -> Result<ImageRecord, PullError> {
        let reference = normalize(image)?;
        let hosts = self.cfg.hosts_for(reference.registry());
        let plain: Vec<String> = hosts
            .iter()
            .filter(|h| h.plain_http)
            .map(|h| h.host.clone())
            .collect();
        let client = super::registry_client::client(plain)?;
        let mut tried = Vec::new();
        for host in hosts {
            let mut r = reference.clone();
            if host.host != reference.registry() {
                r.set_mirror_registry(host.host.clone());
            }
            let anonymous = RegistryAuth::Anonymous;
            let auth = credentials_for(&host.host, reference.registry(), auth, &anonymous);
            match self.pull_from(&client, &r, &host.host, auth).await {
                Ok(record) => return Ok(record),
                Err(e @ (PullError::Store(_) | PullError::Io { .. } | PullError::Task(_))) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::info!(
                        "pulling {reference} from {}: {}",
                        host.host,
                        crate::error::chain(&e)
                    );
                    tried.push(e)
                }
            }
        }
        Err(PullError::AllFailed {
            reference: reference.whole(),
            tried,
        })
    }

    /// [`Self::pull_steps`]; if it fails, the blobs it wrote that no image
    /// holds are removed again.
    async fn pull_from(
        &self,
        client: &Client,
        r: &Reference,
        host: &str,
        auth: &RegistryAuth,
    ) -> Result<ImageRecord, PullError> {
        let mut written = Vec::new();
        let pulled = self.pull_steps(client, r, host, auth, &mut written).await;
        if pulled.is_err() && !written.is_empty() {
            let store = self.store.clone();
            let discarded = crate::blocking::run("removing a failed pull's blobs", move || {
                store.discard_unheld(&written)
            })
            .await;
            match discarded {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(
                    "removing the blobs of a failed pull of {r}: {}",
                    crate::error::chain(&e)
                ),
                Err(e) => tracing::error!("removing the blobs of a failed pull of {r}: {e}"),
            }
        }
        pulled
    }

    async fn pull_steps(
        &self,
        client: &Client,
        r: &Reference,
        host: &str,
        auth: &RegistryAuth,
        written: &mut Vec<String>,
    ) -> Result<ImageRecord, PullError> {
        let registry = |what: &str| {
            let (host, what) = (host.to_string(), what.to_string());
            move |source| PullError::Registry {
                host,
                what,
                source: Box::new(source),
            }
        };
        let verify = |what: String| PullError::Verify {
            host: host.to_string(),
            what,
        };
        let (mut bytes, _) = client
            .pull_manifest_raw(r, auth, ACCEPTED)
            .await
            .map_err(registry("fetching the manifest"))?;
        let mut digest = sha256_of(&bytes);
        if let Some(want) = r.digest() {
            if digest != want {
                return Err(verify(format!(
                    "the manifest's digest is {digest}, not {want}"
                )));
            }
        }
        if bytes.len() > DOCUMENT_LIMIT {
            return Err(verify(format!("a manifest of {} bytes", bytes.len())));
        }
        // An index: this host's platform's manifest.
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
            if index.manifests().iter().any(|m| m.platform().is_some()) || looks_like_index(&bytes)
            {
                let entry = index
                    .manifests()
                    .iter()
                    .find(|m| {
                        m.platform().as_ref().is_none_or(|p| {
                            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                        })
                    })
                    .ok_or_else(|| verify("the index has no linux/amd64 image".into()))?;
                let by_digest = r.clone_with_digest(entry.digest().to_string());
                let (inner, _) = client
                    .pull_manifest_raw(&by_digest, auth, ACCEPTED)
                    .await
                    .map_err(registry("fetching the platform's manifest"))?;
                if inner.len() > DOCUMENT_LIMIT {
                    return Err(verify(format!("a manifest of {} bytes", inner.len())));
                }
                digest = sha256_of(&inner);
                if digest != entry.digest().to_string() {
                    return Err(verify(format!(
                        "the platform manifest's digest is {digest}, not {}",
                        entry.digest()
                    )));
                }
                bytes = inner;
            }
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| verify(format!("the manifest is not an image manifest: {e}")))?;
        let media_type = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| ACCEPTED[0].to_string());
        // The manifest itself, then config and layers.
        let manifest_blob = self.store.blob_path(&digest)?;
        if !manifest_blob.exists() {
            write_whole(&manifest_blob, &bytes).await?;
            written.push(digest.clone());
        }
        let mut total = 0u64;
        let mut blobs = vec![digest.clone()];
        let config_desc = manifest.config();
        if config_desc.size() > DOCUMENT_LIMIT as u64 {
            return Err(verify(format!(
                "a config of {} bytes (at most {DOCUMENT_LIMIT})",
                config_desc.size()
            )));
        }
        for desc in std::iter::once(config_desc).chain(manifest.layers().iter()) {
            let d = desc.digest().to_string();
            sha256_hex(&d).map_err(|_| verify(format!("{d:?} is not a sha256 digest")))?;
            total = total.saturating_add(desc.size());
            if total > self.limit {
                return Err(verify(format!(
                    "the image holds more than the {} bytes allowed",
                    self.limit
                )));
            }
            if self.fetch_blob(client, r, &d, desc.size(), &verify).await? {
                written.push(d.clone());
            }
            blobs.push(d);
        }
        let config_path = self.store.blob_path(config_desc.digest().as_ref())?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .map_err(|source| PullError::Io {
                what: format!("reading {}", config_path.display()),
                source,
            })?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| verify(format!("the image config: {e}")))?;
        let user = config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .filter(|u| !u.is_empty());
        let name = format!("{}/{}", r.registry(), r.repository());
        let record = ImageRecord {
            manifest: digest.clone(),
            config: config_desc.digest().to_string(),
            size: total,
            tags: r.tag().map(|t| format!("{name}:{t}")).into_iter().collect(),
            digests: vec![format!("{name}@{digest}")],
            user,
            blobs,
        };
        let store = self.store.clone();
        let rec = record.clone();
        let size = bytes.len() as u64;
        crate::blocking::run("writing an image's layout", move || {
            store.write_layout(&rec, &media_type, size)?;
            store.add(rec)
        })
        .await
        .map_err(PullError::Task)??;
        Ok(record)
    }

    /// Fetches one blob unless the store has it: at most `size` bytes, and
    /// kept only if they hash to `digest`. Returns whether it wrote it.
    async fn fetch_blob(
        &self,
        client: &Client,
        r: &Reference,
        digest: &str,
        size: u64,
        verify: &(dyn Fn(String) -> PullError + Sync),
    ) -> Result<bool, PullError> {
        let path = self.store.blob_path(digest)?;
        if path.exists() {
            return Ok(false);
        }
        let tmp = super::image_store::partial_name(&path)?;
        let file = tokio::fs::File::create_new(&tmp)
            .await
            .map_err(|source| PullError::Io {
                what: format!("creating {}", tmp.display()),
                source,
            })?;
        let mut out = Capped {
            file,
            left: size,
            hasher: sha2::Sha256::new(),
        };
        let pulled = client.pull_blob(r, digest, &mut out).await;
        let got = format!("sha256:{}", hex::encode(out.hasher.clone().finalize()));
        let result = match pulled {
            Err(e) => Err(PullError::Registry {
                host: r.resolve_registry().to_string(),
                what: format!("fetching blob {digest}"),
                source: Box::new(e),
            }),
            Ok(()) if out.left != 0 => Err(verify(format!(
                "blob {digest}: {} bytes short of its {size}",
                out.left
            ))),
            Ok(()) if got != digest => Err(verify(format!("blob {digest} hashes to {got}"))),
            Ok(()) => Ok(()),
        };
        match result {
            Ok(()) => tokio::fs::rename(&tmp, &path)
                .await
                .map(|()| true)
                .map_err(|source| PullError::Io {
                    what: format!("renaming {}", tmp.display()),
                    source,
                }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// The credentials sent to `host`: the request's to the registry itself
/// only, never to a mirror.
fn credentials_for<'a>(
    host: &str,
    registry: &str,
    auth: &'a RegistryAuth,
    anonymous: &'a RegistryAuth,
) -> &'a RegistryAuth {
    if host == registry {
        auth
    } else {
        anonymous
    }
}

fn looks_like_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Kind>(bytes).is_ok_and(|k| {
        k.manifests.is_some()
            || k.media_type
                .is_some_and(|m| m == ACCEPTED[2] || m == ACCEPTED[3])
    })
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

async fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<(), PullError> {
    let tmp = super::image_store::partial_name(path)?;
    let io = |what: &str, p: &std::path::Path| {
        let what = format!("{what} {}", p.display());
        move |source| PullError::Io { what, source }
    };
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(io("writing", &tmp))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(io("renaming", &tmp))
}

/// A blob's file: refuses bytes past the descriptor's size, and hashes
/// what it writes.
struct Capped {
    file: tokio::fs::File,
    left: u64,
    hasher: sha2::Sha256,
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return Poll::Ready(Err(std::io::Error::other(
                "the registry sent more than the blob's size",
            )));
        }
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.left -= n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_the_registry_and_never_to_a_mirror() {
        let auth = RegistryAuth::Basic("u".into(), "p".into());
        let anon = RegistryAuth::Anonymous;
        let sent = credentials_for("registry.k8s.io", "registry.k8s.io", &auth, &anon);
        assert!(matches!(sent, RegistryAuth::Basic(..)));
        let sent = credentials_for("127.0.0.1:5000", "registry.k8s.io", &auth, &anon);
        assert!(matches!(sent, RegistryAuth::Anonymous));
    }

    #[test]
    fn references_are_normalized_as_the_store_names_them() {
        assert_eq!(
            normalize("busybox").unwrap().whole(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("registry.k8s.io/e2e-test-images/busybox:1.29-2")
                .unwrap()
                .whole(),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2"
        );
        let e = normalize("UPPER/Case::").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().starts_with("image.image"), "{e}");
    }
}
