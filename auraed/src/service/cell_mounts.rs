//! A `RunCell` request's mounts, validated: each source an existing
//! absolute path of auraed's own mount namespace, each destination an
//! absolute path without `..`; only a cell with an image (a root of its
//! own) takes them.

use std::path::{Component, Path, PathBuf};

use aurae_proto::runtime as pb;

use crate::cells::security::MAX_PROPAGATING;
use crate::cells::{Bind, Propagation};
use crate::error::ApiError;
use crate::validation as v;

pub fn binds(mounts: &[pb::CellMount], has_image: bool) -> Result<Vec<Bind>, ApiError> {
    if mounts.is_empty() {
        return Ok(Vec::new());
    }
    if !has_image {
        return Err(ApiError::invalid(
            "mounts",
            "only a cell with an image (a root of its own) takes mounts",
        ));
    }
    v::list_len("mounts", mounts.len())?;
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| format!("mounts[{i}].{f}");
            v::absolute_path(&field("source"), &m.source)?;
            v::absolute_path(&field("destination"), &m.destination)?;
            let source = PathBuf::from(&m.source);
            if std::fs::metadata(&source).is_err() {
                return Err(ApiError::invalid(
                    field("source"),
                    format!("{} does not exist", v::shown(&m.source)),
                ));
            }
            let inside = Path::new(&m.destination);
            if inside
                .components()
                .any(|c| matches!(c, Component::ParentDir))
                || inside == Path::new("/")
            {
                return Err(ApiError::invalid(
                    field("destination"),
                    format!(
                        "{} must name a path below / without '..'",
                        v::shown(&m.destination)
                    ),
                ));
            }
            let propagation = match pb::MountPropagation::try_from(m.propagation) {
                Ok(pb::MountPropagation::Private) => Propagation::Private,
                Ok(pb::MountPropagation::HostToCell) => Propagation::Slave,
                Ok(pb::MountPropagation::Bidirectional) => Propagation::Shared,
                Err(_) => {
                    return Err(ApiError::invalid(
                        field("propagation"),
                        format!("{} is not a propagation", m.propagation),
                    ))
                }
            };
            Ok(Bind {
                host: source,
                inside: inside.to_path_buf(),
                read_only: m.read_only,
                propagation,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|binds| {
            let propagating = binds
                .iter()
                .filter(|b| b.propagation != Propagation::Private)
                .count();
            if propagating > MAX_PROPAGATING {
                return Err(ApiError::invalid(
                    "mounts",
                    format!("{propagating} propagate; at most {MAX_PROPAGATING} may"),
                ));
            }
            Ok(binds)
        })
}

/// The request's `masked_paths` or `readonly_paths` (`field`): absolute,
/// without `..`, for a cell with its own mount namespace.
pub fn inside_paths(
    field: &str,
    paths: &[String],
    own_mount_ns: bool,
) -> Result<Vec<PathBuf>, ApiError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    if !own_mount_ns {
        return Err(ApiError::invalid(
            field,
            "needs the cell's own mount namespace (share_host.mount is set)",
        ));
    }
    v::list_len(field, paths.len())?;
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("{field}[{i}]");
            v::absolute_path(&field, p)?;
            let path = Path::new(p);
            if path.components().any(|c| matches!(c, Component::ParentDir))
                || path == Path::new("/")
            {
                return Err(ApiError::invalid(
                    field,
                    format!("{} must name a path below / without '..'", v::shown(p)),
                ));
            }
            Ok(path.to_path_buf())
        })
        .collect()
}

/// A mount made at or under a bind that propagates both ways would reach
/// the host (and stay there after the cell): another bind, a masked or a
/// read-only path there is refused, naming it. Both-ways propagation also
/// needs a privileged cell (as Kubernetes asks), since the cell's mounts
/// reach the host's.
pub fn refuse_under_shared(sec: &crate::cells::Security) -> Result<(), ApiError> {
    let shared: Vec<(usize, &Path)> = sec
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, b)| b.propagation == Propagation::Shared)
        .map(|(i, b)| (i, b.inside.as_path()))
        .collect();
    for (i, _) in &shared {
        if !sec.privileged {
            return Err(ApiError::invalid(
                format!("mounts[{i}].propagation"),
                "propagation both ways needs a privileged cell (its mounts reach the host)",
            ));
        }
    }
    let under = |p: &Path| {
        shared
            .iter()
            .find(|(_, s)| p.starts_with(s))
            .map(|(i, _)| *i)
    };
    for (j, b) in sec.mounts.iter().enumerate() {
        if let Some(i) = under(&b.inside).filter(|i| *i != j) {
            return Err(ApiError::invalid(
                format!("mounts[{j}].destination"),
                format!("is inside mounts[{i}], which propagates to the host"),
            ));
        }
    }
    for (field, paths) in [
        ("masked_paths", &sec.masked_paths),
        ("readonly_paths", &sec.readonly_paths),
    ] {
        for (k, p) in paths.iter().enumerate() {
            if let Some(i) = under(p) {
                return Err(ApiError::invalid(
                    format!("{field}[{k}]"),
                    format!("is inside mounts[{i}], which propagates to the host"),
                ));
            }
        }
    }
    Ok(())
}
