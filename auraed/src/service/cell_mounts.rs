//! A `RunCell` request's mounts, validated: each source an existing
//! absolute path of auraed's own mount namespace, each destination an
//! absolute path without `..`; only a cell with an image (a root of its
//! own) takes them.

use std::path::{Component, Path, PathBuf};

use aurae_proto::runtime as pb;

use crate::cells::Bind;
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
            Ok(Bind {
                host: source,
                inside: inside.to_path_buf(),
                read_only: m.read_only,
            })
        })
        .collect()
}
