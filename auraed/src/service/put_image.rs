//! `PutImage`: a client stream of an image's blobs, written and checked by
//! [`crate::oci::import`] on a blocking thread of its own as the messages
//! arrive. A stream that stalls longer than [`IDLE`] or breaks is cut
//! short, and what it wrote is removed.

use std::time::Duration;

use aurae_proto::runtime as pb;
use pb::put_image_request::Part;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::error::ApiError;
use crate::oci::import::{Begun, Descriptor, Import, ImportError};
use crate::runtime::Runtime;

/// The longest wait for the stream's next message.
const IDLE: Duration = Duration::from_secs(30);
/// The longest a whole import may take (a 4 GiB image at 5 MiB/s).
const WHOLE: Duration = Duration::from_secs(15 * 60);
/// Imports at once: each holds a blocking thread while it lasts.
const AT_ONCE: usize = 4;

fn slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(AT_ONCE))
}
/// The largest `data` message.
const MAX_CHUNK: usize = 1 << 20;

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        let text = crate::error::chain(&e);
        if e.is_no_space() {
            ApiError::ResourceExhausted(format!("{}: {text}", e.field()))
        } else if e.is_sender_fault() {
            ApiError::invalid(e.field(), text)
        } else {
            ApiError::Internal(text)
        }
    }
}

fn descriptor(d: pb::BlobDescriptor) -> Descriptor {
    Descriptor {
        digest: d.digest,
        size: d.size,
        media_type: d.media_type,
    }
}

/// What the receiving thread is given.
enum Step {
    Blob(Descriptor),
    Data(Vec<u8>),
    /// The stream ended well: finish the import.
    End,
}

/// The stream's next message, within [`IDLE`] (and before `deadline`).
async fn next(
    requests: &mut Streaming<pb::PutImageRequest>,
    deadline: tokio::time::Instant,
) -> Result<Option<pb::PutImageRequest>, Status> {
    let by = deadline.min(tokio::time::Instant::now() + IDLE);
    match tokio::time::timeout_at(by, requests.message()).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(status)) => Err(Status::cancelled(format!(
            "PutImage: the stream broke: {}",
            status.message()
        ))),
        Err(_) if by == deadline => Err(Status::deadline_exceeded(format!(
            "PutImage: not done within {} s",
            WHOLE.as_secs()
        ))),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "PutImage: no message for {} s",
            IDLE.as_secs()
        ))),
    }
}

/// Serves one `PutImage` call.
pub(super) async fn put_image(
    runtime: &Runtime,
    mut requests: Streaming<pb::PutImageRequest>,
) -> Result<pb::PutImageResponse, Status> {
    let ctx = runtime.cells.as_ref().map_err(|e| {
        ApiError::FailedPrecondition(format!("images need cells, unavailable: {e}"))
    })?;
    let (imports, limit) = (ctx.state_dir.join("imports"), ctx.image_unpack_limit_bytes);
    let deadline = tokio::time::Instant::now() + WHOLE;
    let manifest = match next(&mut requests, deadline).await?.and_then(|m| m.part) {
        Some(Part::Manifest(d)) => descriptor(d),
        _ => {
            return Err(ApiError::invalid(
                "manifest",
                "missing: the first message must describe the image's manifest",
            )
            .into())
        }
    };
    let begun = crate::blocking::run("starting an image's import", move || {
        Import::begin(&imports, manifest, limit)
    })
    .await?
    .map_err(ApiError::from)?;
    let import = match begun {
        Begun::Here(layout) => {
            return Ok(pb::PutImageResponse {
                image: layout.display().to_string(),
                received: 0,
            })
        }
        Begun::Import(i) => i,
    };
    // A slot before a thread: waiting for one counts against the deadline.
    let _slot = match tokio::time::timeout_at(deadline, slots().acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(Status::resource_exhausted(format!(
                "PutImage: {AT_ONCE} imports are under way; try again"
            )))
        }
    };
    // The writes and hashes happen on a thread of their own; a closed
    // channel without `End` (an error here, a dropped call) drops the
    // import, which removes what it wrote.
    let (tx, mut rx) = mpsc::channel::<Step>(4);
    let worker = tokio::task::spawn_blocking(move || {
        let mut import = import;
        loop {
            match rx.blocking_recv() {
                Some(Step::Blob(d)) => import.blob(d)?,
                Some(Step::Data(b)) => import.data(&b)?,
                Some(Step::End) => return import.finish(),
                None => return Err(ImportError::Aborted),
            }
        }
    });
    let fed: Result<(), Status> = async {
        while let Some(m) = next(&mut requests, deadline).await? {
            let step = match m.part {
                Some(Part::Blob(d)) => Step::Blob(descriptor(d)),
                Some(Part::Data(b)) if b.len() > MAX_CHUNK => {
                    return Err(ApiError::invalid(
                        "data",
                        format!("{} bytes in one message; at most {MAX_CHUNK}", b.len()),
                    )
                    .into())
                }
                Some(Part::Data(b)) => Step::Data(b),
                Some(Part::Manifest(_)) => {
                    return Err(ApiError::invalid(
                        "manifest",
                        "only the first message describes the manifest",
                    )
                    .into())
                }
                None => return Err(ApiError::invalid("part", "an empty message").into()),
            };
            // A closed channel: the thread stopped on an error, which
            // its result says.
            if tx.send(step).await.is_err() {
                return Ok(());
            }
        }
        // Ignored if the thread already stopped: its result says why.
        tx.send(Step::End).await.ok();
        Ok(())
    }
    .await;
    drop(tx);
    let done = worker
        .await
        .map_err(|e| ApiError::Internal(format!("PutImage: its thread failed: {e}")))?;
    // The stream's own fault first: the thread only saw it end early.
    fed?;
    let (layout, received) = done.map_err(ApiError::from)?;
    tracing::info!("image put into {} ({received} bytes)", layout.display());
    Ok(pb::PutImageResponse {
        image: layout.display().to_string(),
        received,
    })
}
