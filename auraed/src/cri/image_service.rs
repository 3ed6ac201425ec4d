//! The CRI `ImageService`: images pulled into the [`ImageStore`].

use aurae_proto::cri;
use aurae_proto::cri::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::image_store::ImageRecord;
use super::pull::{auth_of, normalize};
use super::{Cri, CriService};

/// The store's name for what a request calls `name`: the normalized
/// reference when it is one, else `name` itself (an id or a prefix).
fn store_name(name: &str) -> String {
    match normalize(name) {
        Ok(r) if !looks_like_id(name) => r.whole(),
        _ => name.to_string(),
    }
}

/// A bare id (or `sha256:` id), which parses as a reference too.
fn looks_like_id(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    hex.len() >= 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn image_of(r: &ImageRecord) -> cri::Image {
    let (uid, username) = match r.user.as_deref() {
        None => (None, String::new()),
        Some(u) => {
            // The user part of "user[:group]": numeric is a uid, else a name.
            let user = u.split(':').next().unwrap_or(u);
            match user.parse::<i64>() {
                Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
                Err(_) => (None, user.to_string()),
            }
        }
    };
    cri::Image {
        id: r.config.clone(),
        repo_tags: r.tags.clone(),
        repo_digests: r.digests.clone(),
        size: r.size,
        uid,
        username,
        spec: None,
        pinned: false,
    }
}

fn image_field(spec: Option<&cri::ImageSpec>, field: &str) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image.clone()),
        _ => Err(Status::invalid_argument(format!("{field}: missing"))),
    }
}

impl Cri {
    /// The pulled image `name` names, if any.
    pub(super) fn find_image(&self, name: &str) -> Option<ImageRecord> {
        self.store
            .find(&store_name(name))
            .or_else(|| self.store.find(name))
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let wanted = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match wanted {
            Some(name) => self.find_image(&name).iter().map(image_of).collect(),
            None => self.store.list().iter().map(image_of).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let list = self
            .list_images(Request::new(cri::ListImagesRequest {
                filter: r.into_inner().filter,
            }))
            .await?
            .into_inner();
        Ok(Response::new(super::pages::pages(list.images, |images| {
            cri::StreamImagesResponse { images }
        })))
    }

    type StreamImagesStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<cri::StreamImagesResponse, Status>> + Send>,
    >;

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = r.into_inner();
        let name = image_field(r.image.as_ref(), "image.image")?;
        // An image that isn't here is no error: the status is empty.
        let image = self.find_image(&name).map(|i| image_of(&i));
        Ok(Response::new(cri::ImageStatusResponse {
            image,
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = r.into_inner();
        let name = image_field(r.image.as_ref(), "image.image")?;
        let record = self.puller.pull(&name, &auth_of(r.auth.as_ref())).await?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.config,
        }))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_field(r.into_inner().image.as_ref(), "image.image")?;
        // Removing an image that isn't here is no error, as the CRI asks.
        if let Some(found) = self.find_image(&name) {
            let store = self.store.clone();
            crate::blocking::run("removing an image", move || store.remove(&found.manifest))
                .await?
                .map_err(|e| Status::internal(crate::error::chain(&e)))?;
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let (bytes, inodes) = self.store.usage();
        let usage = cri::FilesystemUsage {
            timestamp: super::state::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.store.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}
