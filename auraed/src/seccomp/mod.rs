//! Seccomp profiles for a cell's processes: none (unconfined), the
//! runtime's default, or one the user writes (OCI or Docker JSON), compiled
//! to BPF with `seccompiler` for the capabilities the processes keep.

mod compile;
mod profile;
mod runtime_default;

use std::sync::Arc;

pub use compile::{compile, CompileError};
pub use profile::{Action, Profile, ProfileError, MAX_PROFILE_BYTES};

use crate::error::ApiError;

/// The profile a cell asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// No filter (but a jailed cell's own).
    #[default]
    Unconfined,
    /// [`runtime_default::profile`].
    RuntimeDefault,
    Custom(Arc<Profile>),
}

impl Seccomp {
    /// The request's `seccomp`, parsed; errors name `field`.
    pub fn from_request(
        req: Option<&aurae_proto::runtime::SeccompProfile>,
        field: &str,
    ) -> Result<Seccomp, ApiError> {
        use aurae_proto::runtime::seccomp_profile::Kind;
        let Some(req) = req else {
            return Ok(Seccomp::Unconfined);
        };
        let kind = Kind::try_from(req.kind).map_err(|_| {
            ApiError::invalid(
                format!("{field}.kind"),
                format!("{} is not a kind", req.kind),
            )
        })?;
        if kind != Kind::Custom && !req.json.is_empty() {
            return Err(ApiError::invalid(
                format!("{field}.json"),
                "only a CUSTOM profile has one",
            ));
        }
        Ok(match kind {
            Kind::Unconfined => Seccomp::Unconfined,
            Kind::RuntimeDefault => Seccomp::RuntimeDefault,
            Kind::Custom => Seccomp::Custom(Arc::new(Profile::parse(&req.json).map_err(|e| {
                ApiError::invalid(format!("{field}.json"), crate::error::chain(&e))
            })?)),
        })
    }

    /// The BPF programs for processes holding the capabilities `caps`.
    pub fn programs(&self, caps: u64) -> Result<Vec<Vec<libc::sock_filter>>, CompileError> {
        match self {
            Seccomp::Unconfined => Ok(Vec::new()),
            Seccomp::RuntimeDefault => compile(&runtime_default::profile(), caps),
            Seccomp::Custom(p) => compile(p, caps),
        }
    }
}

/// A `seccompiler` program as the kernel's `sock_filter`s.
pub fn to_sock_filters(prog: seccompiler::BpfProgram) -> Vec<libc::sock_filter> {
    prog.into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

#[cfg(test)]
mod enforced;
