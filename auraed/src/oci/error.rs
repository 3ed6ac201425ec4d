//! What can go wrong reading and unpacking an image, classified once: a
//! fault of the image (the caller's input), a full disk, or a failure of
//! the host. `From<OciError> for ApiError` is the one place that turns
//! each into a gRPC code.

use std::io;
use std::path::PathBuf;

use super::safe_path::SafePathError;
use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    // The source files.
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        path.display()
    )]
    NotAnImage { path: PathBuf },
    #[error("{what} {}: larger than the cap of {limit} bytes", path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
    #[error("{what} {}: {source}", path.display())]
    Parse {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {} lists no image manifest", path.display())]
    NoManifest { what: &'static str, path: PathBuf },
    #[error("image indexes nest more than {limit} levels")]
    NestedIndex { limit: u32 },
    #[error("manifest.json lists {manifest} layers, the config {config}")]
    LayerCount { manifest: usize, config: usize },
    #[error("layer {layer}: media type {media_type} is not supported (plain or gzip tar only)")]
    MediaType { layer: String, media_type: String },
    #[error("{digest}: unsupported digest algorithm")]
    DigestAlgorithm { digest: String },
    #[error("blob {digest} is missing ({})", path.display())]
    MissingBlob { digest: String, path: PathBuf },
    #[error("{what} has digest {actual}, expected {expected}: the content is corrupt")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("blob {digest} is {actual} bytes, the descriptor says {expected}")]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{}: {source}", path.display())]
    ManifestPath {
        path: PathBuf,
        #[source]
        source: SafePathError,
    },

    // Layers.
    #[error("layer {layer}: reading the archive: {source}")]
    LayerRead {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {source}")]
    EntryPath {
        layer: String,
        #[source]
        source: SafePathError,
    },
    #[error("layer {layer}: {op} {}: {source}", entry.display())]
    Write {
        layer: String,
        op: &'static str,
        entry: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: hard link {} has no target", entry.display())]
    LinkTarget { layer: String, entry: PathBuf },
    #[error("layer {layer}: hard link {} -> {}: {source}", entry.display(), target.display())]
    HardLink {
        layer: String,
        entry: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: whiteout {} names '.' or '..'", entry.display())]
    Whiteout { layer: String, entry: PathBuf },
    #[error(
        "layer {layer}: {} is a device node outside /dev (images get no device nodes)",
        entry.display()
    )]
    Device { layer: String, entry: PathBuf },
    #[error("layer {layer}: {}: entries of type {kind:?} are not supported", entry.display())]
    EntryType {
        layer: String,
        entry: PathBuf,
        kind: tar::EntryType,
    },
    #[error(
        "layer {layer}: the unpacked image crosses the limit of {limit} bytes \
         (runtime.image_unpack_limit_bytes)"
    )]
    UnpackLimit { layer: String, limit: u64 },
    #[error(
        "{}{} has {free} bytes free, {reserve} of which are kept for the host",
        layer.as_ref().map(|l| format!("layer {l}: ")).unwrap_or_default(),
        path.display()
    )]
    NoSpace {
        layer: Option<String>,
        path: PathBuf,
        free: u64,
        reserve: u64,
    },
    #[error("statvfs {}: {source}", path.display())]
    FreeSpace {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    // The cache.
    #[error("image cache: {op} {}: {source}", path.display())]
    Cache {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image cache: encoding defaults.json: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },

    // The image's user.
    #[error("user {name:?} is not in the image's /etc/passwd")]
    UnknownUser { name: String },
    #[error("group {name:?} is not in the image's /etc/group")]
    UnknownGroup { name: String },
}

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The image: INVALID_ARGUMENT on the `image` field.
    Image,
    /// The disk of the cache is full: RESOURCE_EXHAUSTED.
    NoSpace,
    /// The host (an I/O error, permissions of auraed's own files): INTERNAL.
    Host,
}

/// The errno of an I/O error, looking through the wrappers the `tar`
/// crate adds. Errors made by a decoder (corrupt gzip, bad tar header)
/// have none.
fn errno(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

/// Errnos caused by what an image contains (a file where a directory
/// must be, a missing link target, a name too long) rather than by the
/// host.
const IMAGE_ERRNOS: [i32; 9] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::EISDIR,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::ELOOP,
    libc::ENAMETOOLONG,
    libc::EINVAL,
    libc::EMLINK,
];

/// Classifies an I/O error while reading or writing an image's files.
fn io_fault(e: &io::Error) -> Fault {
    match errno(e) {
        // Made by a decoder: the bytes of the image are bad.
        None => Fault::Image,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Fault::NoSpace,
        Some(n) if IMAGE_ERRNOS.contains(&n) => Fault::Image,
        Some(_) => Fault::Host,
    }
}

impl OciError {
    pub fn fault(&self) -> Fault {
        use OciError as E;
        match self {
            E::Read { source, .. }
            | E::LayerRead { source, .. }
            | E::Write { source, .. }
            | E::HardLink { source, .. } => io_fault(source),
            E::EntryPath { source, .. } | E::ManifestPath { source, .. } => match source {
                SafePathError::Io { source, .. } => io_fault(source),
                SafePathError::Escapes(_) | SafePathError::Loop(_) => Fault::Image,
            },
            E::NoSpace { .. } => Fault::NoSpace,
            E::Cache { source, .. } => match errno(source) {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Fault::NoSpace,
                _ => Fault::Host,
            },
            E::FreeSpace { .. } | E::Encode { .. } => Fault::Host,
            E::NotAnImage { .. }
            | E::TooLarge { .. }
            | E::Parse { .. }
            | E::NoManifest { .. }
            | E::NestedIndex { .. }
            | E::LayerCount { .. }
            | E::MediaType { .. }
            | E::DigestAlgorithm { .. }
            | E::MissingBlob { .. }
            | E::Digest { .. }
            | E::Size { .. }
            | E::LinkTarget { .. }
            | E::Whiteout { .. }
            | E::Device { .. }
            | E::EntryType { .. }
            | E::UnpackLimit { .. }
            | E::UnknownUser { .. }
            | E::UnknownGroup { .. } => Fault::Image,
        }
    }
}

impl OciError {
    /// The API's error for an image given in request field `field`: the
    /// image's fault is an invalid argument; the host's is not.
    pub fn for_field(self, field: &str) -> ApiError {
        match self.fault() {
            Fault::Image => ApiError::invalid(field, self.to_string()),
            Fault::NoSpace => ApiError::ResourceExhausted(format!("{field}: {self}")),
            Fault::Host => ApiError::Internal(format!("{field}: {self}")),
        }
    }
}

impl From<OciError> for ApiError {
    fn from(e: OciError) -> Self {
        e.for_field("image")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: OciError) -> tonic::Code {
        tonic::Status::from(ApiError::from(e)).code()
    }

    #[test]
    fn each_failure_maps_to_its_code() {
        let layer = || "sha256:ab".to_string();
        let read = |errno: i32| OciError::LayerRead {
            layer: layer(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(code(read(libc::EIO)), tonic::Code::Internal);
        // Decoder errors (no errno) are the image's fault, also when the
        // tar crate wraps them.
        let corrupt = io::Error::new(io::ErrorKind::InvalidInput, "corrupt deflate stream");
        assert_eq!(
            code(OciError::LayerRead {
                layer: layer(),
                source: corrupt
            }),
            tonic::Code::InvalidArgument
        );
        // An errno wrapped by another error is still found.
        let wrapped = io::Error::other(io::Error::from_raw_os_error(libc::ENOSPC));
        let write = OciError::Write {
            layer: layer(),
            op: "unpacking",
            entry: "a".into(),
            source: wrapped,
        };
        assert_eq!(code(write), tonic::Code::ResourceExhausted);
        let cache = |errno: i32| OciError::Cache {
            op: "creating",
            path: "/c".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(code(cache(libc::EACCES)), tonic::Code::Internal);
        // ENOENT in the cache is auraed's problem, not the image's.
        assert_eq!(code(cache(libc::ENOENT)), tonic::Code::Internal);
        let limit = OciError::UnpackLimit {
            layer: layer(),
            limit: 10,
        };
        let msg = tonic::Status::from(ApiError::from(limit));
        assert_eq!(msg.code(), tonic::Code::InvalidArgument);
        assert!(
            msg.message().starts_with("image: layer sha256:ab:"),
            "{msg:?}"
        );
    }
}
