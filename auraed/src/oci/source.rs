//! Reading an image from local files: an OCI image layout directory, an OCI
//! archive (a tarred layout), or a `docker save` archive. Every blob is
//! checked against its digest before it is used.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use sha2::Digest as _;

use super::safe_path::archive_components;
use super::OciError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Debug)]
pub struct Layer {
    pub name: String,
    pub path: PathBuf,
    pub compression: Compression,
}

#[derive(Debug)]
pub struct Image {
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

/// Opens the image at `src`. Archives are first unpacked into `scratch`,
/// which the caller removes afterwards.
pub fn open(src: &Path, scratch: &Path) -> Result<Image, OciError> {
    let meta =
        std::fs::metadata(src).map_err(|e| OciError::Source(format!("{}: {e}", src.display())))?;
    let dir = if meta.is_dir() {
        src.to_path_buf()
    } else {
        std::fs::create_dir_all(scratch)
            .map_err(|e| OciError::Io(format!("{}: {e}", scratch.display())))?;
        let open = || -> std::io::Result<Box<dyn Read>> { open_maybe_gzip(src) };
        super::layer::apply(scratch, &format!("archive {}", src.display()), &open, false)?;
        scratch.to_path_buf()
    };
    if dir.join("index.json").is_file() {
        open_layout(&dir)
    } else if dir.join("manifest.json").is_file() {
        open_docker(&dir)
    } else {
        Err(OciError::Source(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            src.display()
        )))
    }
}

fn open_maybe_gzip(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let file = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(file)))
    } else {
        Ok(Box::new(file))
    }
}

/// Hex SHA-256 of a file.
fn sha256_file(path: &Path) -> Result<(String, u64), OciError> {
    let mut file =
        File::open(path).map_err(|e| OciError::Source(format!("{}: {e}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let n = std::io::copy(&mut file, &mut hasher)
        .map_err(|e| OciError::Source(format!("{}: {e}", path.display())))?;
    Ok((hex::encode(hasher.finalize()), n))
}

fn sha512_file(path: &Path) -> Result<String, OciError> {
    let mut file =
        File::open(path).map_err(|e| OciError::Source(format!("{}: {e}", path.display())))?;
    let mut hasher = sha2::Sha512::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| OciError::Source(format!("{}: {e}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The verified path of the blob `desc` points to.
fn blob(dir: &Path, desc: &Descriptor) -> Result<PathBuf, OciError> {
    let digest = desc.digest();
    let (alg, path) = match digest.algorithm() {
        DigestAlgorithm::Sha256 => ("sha256", dir.join("blobs/sha256").join(digest.digest())),
        DigestAlgorithm::Sha512 => ("sha512", dir.join("blobs/sha512").join(digest.digest())),
        other => {
            return Err(OciError::Digest(format!(
                "{digest}: unsupported digest algorithm {other}"
            )))
        }
    };
    if !path.is_file() {
        return Err(OciError::Source(format!(
            "blob {digest} is missing ({})",
            path.display()
        )));
    }
    let (actual, size) = if alg == "sha256" {
        sha256_file(&path)?
    } else {
        (
            sha512_file(&path)?,
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        )
    };
    if actual != digest.digest() {
        return Err(OciError::Digest(format!(
            "blob {digest} has digest {alg}:{actual}: the content is corrupt"
        )));
    }
    if size != desc.size() {
        return Err(OciError::Digest(format!(
            "blob {digest} is {size} bytes, the descriptor says {}",
            desc.size()
        )));
    }
    Ok(path)
}

/// The verified digest of the manifest an image layout's index points to,
/// or `None` when `dir` is not an image layout.
pub fn layout_manifest_digest(dir: &Path) -> Result<Option<String>, OciError> {
    if !dir.join("index.json").is_file() {
        return Ok(None);
    }
    let index = ImageIndex::from_file(dir.join("index.json"))
        .map_err(|e| OciError::Source(format!("index.json: {e}")))?;
    let desc = manifest_descriptor(dir, &index, 0)?;
    blob(dir, &desc)?;
    Ok(Some(desc.digest().to_string()))
}

fn open_layout(dir: &Path) -> Result<Image, OciError> {
    let index = ImageIndex::from_file(dir.join("index.json"))
        .map_err(|e| OciError::Source(format!("index.json: {e}")))?;
    let manifest = find_manifest(dir, &index)?;
    let config_path = blob(dir, manifest.config())?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| OciError::Source(format!("image config: {e}")))?;
    let mut layers = Vec::new();
    for desc in manifest.layers() {
        let compression = match desc.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Compression::Gzip
            }
            MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Compression::Gzip
            }
            other => {
                return Err(OciError::Source(format!(
                    "layer {}: media type {other} is not supported (plain or gzip tar only)",
                    desc.digest()
                )))
            }
        };
        layers.push(Layer {
            name: desc.digest().to_string(),
            path: blob(dir, desc)?,
            compression,
        });
    }
    Ok(Image { config, layers })
}

/// The descriptor of the image manifest an index points to (the first
/// linux/amd64 one, or the first one), following nested indexes.
fn manifest_descriptor(dir: &Path, index: &ImageIndex, depth: u32) -> Result<Descriptor, OciError> {
    if depth > 4 {
        return Err(OciError::Source(
            "image indexes nest more than 4 levels".into(),
        ));
    }
    let amd64 = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| p.architecture().to_string() == "amd64" && p.os().to_string() == "linux")
            .unwrap_or(true)
    };
    let desc = index
        .manifests()
        .iter()
        .find(amd64)
        .or_else(|| index.manifests().first())
        .ok_or_else(|| OciError::Source("index.json lists no manifest".into()))?;
    match desc.media_type() {
        MediaType::ImageIndex => {
            let path = blob(dir, desc)?;
            let nested = ImageIndex::from_file(&path)
                .map_err(|e| OciError::Source(format!("nested index: {e}")))?;
            manifest_descriptor(dir, &nested, depth + 1)
        }
        _ => Ok(desc.clone()),
    }
}

fn find_manifest(dir: &Path, index: &ImageIndex) -> Result<ImageManifest, OciError> {
    let desc = manifest_descriptor(dir, index, 0)?;
    let path = blob(dir, &desc)?;
    ImageManifest::from_file(&path)
        .map_err(|e| OciError::Source(format!("manifest {}: {e}", desc.digest())))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

fn open_docker(dir: &Path) -> Result<Image, OciError> {
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| OciError::Source(format!("manifest.json: {e}")))?;
    let manifests: Vec<DockerManifest> =
        serde_json::from_str(&text).map_err(|e| OciError::Source(format!("manifest.json: {e}")))?;
    let manifest = manifests
        .into_iter()
        .next()
        .ok_or_else(|| OciError::Source("manifest.json lists no image".into()))?;
    let inside = |p: &str| -> Result<PathBuf, OciError> {
        let parts = archive_components(Path::new(p))
            .map_err(|e| OciError::Source(format!("manifest.json: {e}")))?;
        Ok(parts.iter().fold(dir.to_path_buf(), |acc, c| acc.join(c)))
    };
    let config_path = inside(&manifest.config)?;
    let (config_hash, _) = sha256_file(&config_path)?;
    let stem = config_path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string());
    if stem
        .as_deref()
        .is_some_and(|s| s.len() == 64 && s != config_hash)
    {
        return Err(OciError::Digest(format!(
            "config {} has digest sha256:{config_hash}: the content is corrupt",
            manifest.config
        )));
    }
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| OciError::Source(format!("image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(OciError::Source(format!(
            "manifest.json lists {} layers, the config {}",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let path = inside(layer)?;
        let (hash, _) = sha256_file(&path)?;
        if diff_id.strip_prefix("sha256:") != Some(hash.as_str()) {
            return Err(OciError::Digest(format!(
                "layer {layer} has digest sha256:{hash}, the config says {diff_id}: the content is corrupt"
            )));
        }
        layers.push(Layer {
            name: layer.clone(),
            path,
            compression: Compression::None,
        });
    }
    Ok(Image { config, layers })
}

/// Opens a layer's decompressed stream.
pub fn open_layer(layer: &Layer) -> std::io::Result<Box<dyn Read>> {
    let file = BufReader::new(File::open(&layer.path)?);
    Ok(match layer.compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
    })
}
