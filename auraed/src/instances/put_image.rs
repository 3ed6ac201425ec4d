//! Giving an image to a running instance over its link (`PutImage`): how a
//! microVM gets a container's image after it booted, where a cell-backed
//! instance has the image bound in. The blobs are read as they are sent, a
//! megabyte at a time; the instance checks each against its digest.

use std::path::Path;

use aurae_proto::runtime as pb;
use pb::put_image_request::Part;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::error::ApiError;
use crate::oci::source::LayoutBlob;

/// The bytes of one `data` message.
const CHUNK: usize = 1 << 20;

fn descriptor(b: &LayoutBlob) -> pb::BlobDescriptor {
    pb::BlobDescriptor {
        digest: b.descriptor.digest().to_string(),
        size: b.descriptor.size(),
        media_type: b.descriptor.media_type().to_string(),
    }
}

/// Sends every blob into `tx`; stops when the instance stops reading
/// (it had the image already, or refused it).
async fn send_blobs(
    blobs: Vec<LayoutBlob>,
    tx: mpsc::Sender<pb::PutImageRequest>,
) -> Result<(), ApiError> {
    let part = |p| pb::PutImageRequest { part: Some(p) };
    let Some(manifest) = blobs.first() else {
        return Ok(());
    };
    if tx
        .send(part(Part::Manifest(descriptor(manifest))))
        .await
        .is_err()
    {
        return Ok(());
    }
    for b in &blobs {
        let read = |e| ApiError::io(format!("reading {}", b.path.display()), e);
        let mut file = tokio::fs::File::open(&b.path).await.map_err(read)?;
        if tx.send(part(Part::Blob(descriptor(b)))).await.is_err() {
            return Ok(());
        }
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let n = (&mut file)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(read)?;
            if n == 0 {
                break;
            }
            if tx.send(part(Part::Data(chunk))).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Gives the image of the OCI layout `layout` (on this host) to the
/// instance at the other end of `channel`; answers where the instance sees
/// it, for `RunCellRequest.image`. `field` names the image in errors.
pub async fn put_image(channel: Channel, layout: &Path, field: &str) -> Result<String, ApiError> {
    let dir = layout.to_path_buf();
    let blobs = crate::blocking::run("reading an image's layout", move || {
        crate::oci::source::layout_blobs(&dir)
    })
    .await?
    .map_err(|e| e.for_field(field))?;
    let (tx, rx) = mpsc::channel(4);
    let sender = tokio::spawn(send_blobs(blobs, tx));
    let answer = pb::runtime_client::RuntimeClient::new(channel)
        .put_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // Once answered, the instance reads no more: a sender still waiting
    // to send is stopped. One that stopped on a blob this host could not
    // read is the cause of any refusal.
    sender.abort();
    match sender.await {
        Ok(sent) => sent?,
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            return Err(ApiError::Internal(format!(
                "{field}: sending the image: {e}"
            )))
        }
    }
    let answer = answer.map_err(|status| {
        // Refused content is this host's copy of the image, which it
        // verified when it stored it: corrupt since, not the caller's fault.
        let status = match status.code() {
            tonic::Code::InvalidArgument => tonic::Status::data_loss(format!(
                "this host's copy of the image was refused: {}",
                status.message()
            )),
            _ => status,
        };
        ApiError::Instance {
            what: format!("{field}: giving the image to the instance"),
            status: Box::new(status),
        }
    })?;
    Ok(answer.into_inner().image)
}
