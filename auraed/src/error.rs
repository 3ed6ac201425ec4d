//! The error every RPC handler returns, mapped onto gRPC status codes. Each
//! message names the request field (or resource) at fault.

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    /// A resource of the host ran out (e.g. the disk of the image cache).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A system call of auraed's own failed: INTERNAL, or
    /// RESOURCE_EXHAUSTED where the host ran out of something (memory,
    /// file descriptors, processes, disk).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Binding a host folder into a running instance failed (its cause
    /// and the errno are in the message).
    #[error("{what}: {}", chain(source))]
    Mount {
        what: String,
        #[source]
        source: crate::sys::mount_inject::InjectError,
    },
    /// A process or cgroup that did not go away when told to.
    #[error("{0}")]
    Stuck(String),
    /// The instance network (boxed: its errors are large).
    #[error(transparent)]
    Net(Box<crate::net::NetError>),
    /// An instance refused a request this auraed made of it on a caller's
    /// behalf: its status, with what it was asked for. Keeps the
    /// instance's code (boxed: a status is large).
    #[error("{what}: {}", .status.message())]
    Instance {
        what: String,
        status: Box<tonic::Status>,
    },
}

/// `e` and each of its causes, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The most of a message a status carries: an error about a huge field
/// still fits in gRPC trailers (whose limit is 8 KiB by default).
pub const MAX_MESSAGE: usize = 4096;

/// `text` cut at a character boundary to [`MAX_MESSAGE`] bytes.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 32;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!("... ({total} bytes)"));
    }
    text
}

/// Whether an errno says the host ran out of something.
fn exhausted(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EAGAIN | libc::EDQUOT
        )
    )
}

impl ApiError {
    /// A failed system call of auraed's own, and what it was for.
    pub fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        ApiError::Io {
            what: what.into(),
            source: source.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let msg = bounded(e.to_string());
        match e {
            ApiError::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::Unimplemented(_) => tonic::Status::unimplemented(msg),
            ApiError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            ApiError::Io { source, .. } if exhausted(&source) => {
                tonic::Status::resource_exhausted(msg)
            }
            ApiError::Io { .. } | ApiError::Stuck(_) | ApiError::Mount { .. } => {
                tonic::Status::internal(msg)
            }
            ApiError::Instance { status, .. } => tonic::Status::new(status.code(), msg),
            ApiError::Net(e) => {
                use crate::net::NetError as N;
                match *e {
                    N::InvalidName { .. } => tonic::Status::invalid_argument(msg),
                    N::LinkExists { .. } => tonic::Status::already_exists(msg),
                    // A kernel without traffic control can't run plain VMs.
                    N::PrefixClash { .. } | N::NotABridge { .. } | N::Tc { .. } => {
                        tonic::Status::failed_precondition(msg)
                    }
                    _ => tonic::Status::internal(msg),
                }
            }
        }
    }
}

impl From<crate::net::NetError> for ApiError {
    fn from(e: crate::net::NetError) -> Self {
        ApiError::Net(Box::new(e))
    }
}

impl From<crate::cgroup::CgroupError> for ApiError {
    fn from(e: crate::cgroup::CgroupError) -> Self {
        use crate::cgroup::CgroupError as C;
        match e {
            C::MissingController { .. } | C::NoHierarchy | C::Enable { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            C::Exists(_) => ApiError::AlreadyExists(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_message_is_cut_to_fit_in_trailers() {
        let status: tonic::Status = ApiError::NotFound("\u{e9}".repeat(1 << 20)).into();
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(status.message().ends_with("(2097152 bytes)"));
    }

    #[test]
    fn io_failures_are_classified_once() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let status: tonic::Status = ApiError::io("writing x", enospc).into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().starts_with("writing x: "),
            "{}",
            status.message()
        );
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let status: tonic::Status = ApiError::io("reading y", eio).into();
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
