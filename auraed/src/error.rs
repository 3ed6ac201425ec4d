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
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    /// A resource of the host ran out (e.g. the disk of the image cache).
    #[error("{0}")]
    ResourceExhausted(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            ApiError::Unimplemented(_) => tonic::Status::unimplemented(msg),
            ApiError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
        }
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
