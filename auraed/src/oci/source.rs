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

use super::limits::{read_capped, read_json, Budget, DOCUMENT_CAP};
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

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the image at `src`. Archives are first unpacked into `scratch`
/// (charged to `budget`), which the caller removes afterwards.
pub fn open(src: &Path, scratch: &Path, budget: &mut Budget) -> Result<Image, OciError> {
    let meta = std::fs::metadata(src).map_err(read_err(src))?;
    let dir = if meta.is_dir() {
        src.to_path_buf()
    } else {
        std::fs::create_dir_all(scratch).map_err(|source| OciError::Cache {
            op: "creating",
            path: scratch.to_path_buf(),
            source,
        })?;
        let open = || -> std::io::Result<Box<dyn Read>> { open_maybe_gzip(src) };
        let name = format!("archive {}", src.display());
        super::layer::apply(scratch, &name, &open, false, budget)?;
        scratch.to_path_buf()
    };
    if dir.join("index.json").is_file() {
        open_layout(&dir)
    } else if dir.join("manifest.json").is_file() {
        open_docker(&dir)
    } else {
        Err(OciError::NotAnImage {
            path: src.to_path_buf(),
        })
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
    let mut file = File::open(path).map_err(read_err(path))?;
    let mut hasher = sha2::Sha256::new();
    let n = std::io::copy(&mut file, &mut hasher).map_err(read_err(path))?;
    Ok((hex::encode(hasher.finalize()), n))
}

fn sha512_file(path: &Path) -> Result<(String, u64), OciError> {
    let mut file = File::open(path).map_err(read_err(path))?;
    let mut hasher = sha2::Sha512::new();
    let n = std::io::copy(&mut file, &mut hasher).map_err(read_err(path))?;
    Ok((hex::encode(hasher.finalize()), n))
}

/// The verified path of the blob `desc` points to.
fn blob(dir: &Path, desc: &Descriptor) -> Result<PathBuf, OciError> {
    let digest = desc.digest();
    let (alg, path) = match digest.algorithm() {
        DigestAlgorithm::Sha256 => ("sha256", dir.join("blobs/sha256").join(digest.digest())),
        DigestAlgorithm::Sha512 => ("sha512", dir.join("blobs/sha512").join(digest.digest())),
        _ => {
            return Err(OciError::DigestAlgorithm {
                digest: digest.to_string(),
            })
        }
    };
    if !path.is_file() {
        return Err(OciError::MissingBlob {
            digest: digest.to_string(),
            path,
        });
    }
    let size_err = |actual| OciError::Size {
        digest: digest.to_string(),
        expected: desc.size(),
        actual,
    };
    // Before hashing: a blob of the wrong size is not read at all.
    let len = std::fs::metadata(&path).map_err(read_err(&path))?.len();
    if len != desc.size() {
        return Err(size_err(len));
    }
    let (actual, size) = if alg == "sha256" {
        sha256_file(&path)?
    } else {
        sha512_file(&path)?
    };
    if actual != digest.digest() {
        return Err(OciError::Digest {
            what: format!("blob {digest}"),
            expected: digest.to_string(),
            actual: format!("{alg}:{actual}"),
        });
    }
    if size != desc.size() {
        return Err(size_err(size));
    }
    Ok(path)
}

/// The verified path of a JSON document's blob (a manifest, config or
/// nested index), refused before reading when its descriptor says it is
/// larger than the cap.
fn document_blob(what: &'static str, dir: &Path, desc: &Descriptor) -> Result<PathBuf, OciError> {
    if desc.size() > DOCUMENT_CAP {
        return Err(OciError::TooLarge {
            what,
            path: PathBuf::from(desc.digest().to_string()),
            limit: DOCUMENT_CAP,
        });
    }
    blob(dir, desc)
}

/// The verified digest of the manifest an image layout's index points to,
/// or `None` when `dir` is not an image layout.
pub fn layout_manifest_digest(dir: &Path) -> Result<Option<String>, OciError> {
    if !dir.join("index.json").is_file() {
        return Ok(None);
    }
    let index: ImageIndex = read_json("index.json", &dir.join("index.json"))?;
    let desc = manifest_descriptor(dir, &index, 0)?;
    document_blob("manifest", dir, &desc)?;
    Ok(Some(desc.digest().to_string()))
}

/// A blob of an image layout: its descriptor and file.
#[derive(Debug, Clone)]
pub struct LayoutBlob {
    pub descriptor: Descriptor,
    pub path: PathBuf,
}

/// The blobs of the image an OCI layout's index points to: its manifest
/// first, then its config and layers, each once (a manifest may list a
/// layer twice, as older images do the empty one).
pub fn layout_blobs(dir: &Path) -> Result<Vec<LayoutBlob>, OciError> {
    let index: ImageIndex = read_json("index.json", &dir.join("index.json"))?;
    let desc = manifest_descriptor(dir, &index, 0)?;
    let path = document_blob("manifest", dir, &desc)?;
    let manifest: ImageManifest = read_json("manifest", &path)?;
    let mut blobs = vec![LayoutBlob {
        descriptor: desc,
        path,
    }];
    for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
        if blobs.iter().any(|b| b.descriptor.digest() == d.digest()) {
            continue;
        }
        blobs.push(LayoutBlob {
            descriptor: d.clone(),
            path: blob(dir, d)?,
        });
    }
    Ok(blobs)
}

fn open_layout(dir: &Path) -> Result<Image, OciError> {
    let index: ImageIndex = read_json("index.json", &dir.join("index.json"))?;
    let manifest = find_manifest(dir, &index)?;
    let config_path = document_blob("config", dir, manifest.config())?;
    let config: ImageConfiguration = read_json("config", &config_path)?;
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
                return Err(OciError::MediaType {
                    layer: desc.digest().to_string(),
                    media_type: other.to_string(),
                })
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

/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: u32 = 4;

/// The descriptor of the image manifest an index points to (the first
/// linux/amd64 one, or the first one), following nested indexes.
fn manifest_descriptor(dir: &Path, index: &ImageIndex, depth: u32) -> Result<Descriptor, OciError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(OciError::NestedIndex {
            limit: MAX_INDEX_DEPTH,
        });
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
        .ok_or_else(|| OciError::NoManifest {
            what: if depth == 0 {
                "index.json"
            } else {
                "nested index"
            },
            path: dir.join("index.json"),
        })?;
    match desc.media_type() {
        MediaType::ImageIndex => {
            let path = document_blob("nested index", dir, desc)?;
            let nested: ImageIndex = read_json("nested index", &path)?;
            manifest_descriptor(dir, &nested, depth + 1)
        }
        _ => Ok(desc.clone()),
    }
}

fn find_manifest(dir: &Path, index: &ImageIndex) -> Result<ImageManifest, OciError> {
    let desc = manifest_descriptor(dir, index, 0)?;
    let path = document_blob("manifest", dir, &desc)?;
    read_json("manifest", &path)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

fn open_docker(dir: &Path) -> Result<Image, OciError> {
    let manifest_path = dir.join("manifest.json");
    let manifests: Vec<DockerManifest> = read_json("manifest.json", &manifest_path)?;
    let manifest = manifests
        .into_iter()
        .next()
        .ok_or_else(|| OciError::NoManifest {
            what: "manifest.json",
            path: manifest_path.clone(),
        })?;
    let inside = |p: &str| -> Result<PathBuf, OciError> {
        let parts = archive_components(Path::new(p)).map_err(|source| OciError::ManifestPath {
            path: manifest_path.clone(),
            source,
        })?;
        Ok(parts.iter().fold(dir.to_path_buf(), |acc, c| acc.join(c)))
    };
    let config_path = inside(&manifest.config)?;
    let config_bytes = read_capped("config", &config_path, DOCUMENT_CAP)?;
    let config_hash = hex::encode(sha2::Sha256::digest(&config_bytes));
    let stem = config_path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string());
    if stem
        .as_deref()
        .is_some_and(|s| s.len() == 64 && s != config_hash)
    {
        return Err(OciError::Digest {
            what: format!("config {}", manifest.config),
            expected: format!("sha256:{}", stem.unwrap_or_default()),
            actual: format!("sha256:{config_hash}"),
        });
    }
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|source| OciError::Parse {
            what: "config",
            path: config_path.clone(),
            source,
        })?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers.len() {
        return Err(OciError::LayerCount {
            manifest: manifest.layers.len(),
            config: diff_ids.len(),
        });
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let path = inside(layer)?;
        let (hash, _) = sha256_file(&path)?;
        if diff_id.strip_prefix("sha256:") != Some(hash.as_str()) {
            return Err(OciError::Digest {
                what: format!("layer {layer}"),
                expected: diff_id,
                actual: format!("sha256:{hash}"),
            });
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
