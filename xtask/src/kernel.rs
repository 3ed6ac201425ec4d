//! `cargo xtask kernel`: the guest kernel from the pinned Debian source,
//! `make tinyconfig` plus `kernel-config/aurae.config`, cached by a hash of
//! the source version and the fragment. The bench host's kernel adds
//! `kernel-config/bench-host.config` on top (see [`Flavour`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{cache, deps};

/// Bump when the build recipe changes in a way the inputs don't show.
const RECIPE: &str = "tinyconfig+fragment v1";

#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    /// Wall time of the build that produced this cache entry.
    pub cold_build_secs: Option<f64>,
}

/// Which kernel to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The guest kernel: the image's, and the test host's for every test.
    Guest,
    /// The test host's kernel for benchmarks that run a peer runtime there:
    /// the guest's plus what that peer needs (runc's device filter under
    /// cgroup v2 is a cgroup BPF program). Only `cargo xtask bench` builds
    /// it; the guests it boots keep the guest kernel.
    BenchHost,
}

impl Flavour {
    /// The fragments merged onto `tinyconfig`, in order.
    fn fragments(self) -> &'static [&'static str] {
        match self {
            Flavour::Guest => &["aurae.config"],
            Flavour::BenchHost => &["aurae.config", "bench-host.config"],
        }
    }
}

#[derive(serde::Deserialize)]
struct Source {
    package: String,
    tarball: PathBuf,
}

/// Parses a config fragment: `CONFIG_X=value` or `# CONFIG_X is not set`.
pub fn parse_fragment(text: &str, file: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            out.insert(rest.to_string(), "n".to_string());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').with_context(|| {
            format!("{file}:{}: expected CONFIG_NAME=value, got {line:?}", i + 1)
        })?;
        let valid_name = key.starts_with("CONFIG_")
            && key
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name || value.is_empty() {
            bail!("{file}:{}: {line:?} is not a CONFIG_NAME=value line", i + 1);
        }
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

/// Options of `fragment` that the resolved `.config` does not have as asked.
pub fn dropped_options(fragment: &BTreeMap<String, String>, dotconfig: &str) -> Vec<String> {
    let resolved = parse_fragment(dotconfig, ".config").unwrap_or_default();
    fragment
        .iter()
        .filter(|(k, want)| {
            let got = resolved.get(*k).map(String::as_str).unwrap_or("n");
            got != want.as_str()
        })
        .map(|(k, want)| {
            let got = resolved.get(k).map(String::as_str).unwrap_or("not set");
            format!("{k} (wanted {want}, got {got})")
        })
        .collect()
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the kernel build, showing one progress line.
fn make_with_progress(src: &Path, build: &Path) -> anyhow::Result<()> {
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut child = Command::new("make")
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build.display()))
        .arg(format!("-j{jobs}"))
        .args(["bzImage", "vmlinux"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running make")?;
    let stderr = child.stderr.take().context("stderr")?;
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let started = Instant::now();
    let mut steps = 0u64;
    let mut last = Vec::new();
    let mut shown = Instant::now();
    for line in BufReader::new(child.stdout.take().context("stdout")?)
        .lines()
        .map_while(Result::ok)
    {
        steps += 1;
        if shown.elapsed().as_millis() >= 1000 {
            print!(
                "\r[kernel] {steps} build steps, {:.0}s elapsed, now: {:<60}",
                started.elapsed().as_secs_f64(),
                line.trim().chars().take(60).collect::<String>()
            );
            let _ = std::io::stdout().flush();
            shown = Instant::now();
        }
        last.push(line);
        if last.len() > 40 {
            last.remove(0);
        }
    }
    let status = child.wait()?;
    println!(
        "\r[kernel] {steps} build steps in {:.0}s{:<70}",
        started.elapsed().as_secs_f64(),
        ""
    );
    let errors = err_thread.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "the kernel build failed:\n{}\n{}",
            last.join("\n"),
            errors
                .iter()
                .rev()
                .take(40)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// The fragment, the source package, and the cache directory of the kernel
/// they describe (built or not).
struct Inputs {
    /// Every fragment's options merged, a later fragment's winning.
    fragment: BTreeMap<String, String>,
    fragment_files: Vec<PathBuf>,
    source: Source,
    /// The cache directory of the kernel these inputs describe.
    out: PathBuf,
    version: String,
}

fn inputs(flavour: Flavour) -> anyhow::Result<Inputs> {
    let root = deps::workspace_root().join("kernel-config");
    let source_file = root.join("source.toml");
    let source: Source = toml::from_str(
        &std::fs::read_to_string(&source_file)
            .with_context(|| format!("reading {}", source_file.display()))?,
    )
    .with_context(|| format!("parsing {}", source_file.display()))?;
    let mut fragment = BTreeMap::new();
    let mut fragment_files = Vec::new();
    let mut fragment_texts = Vec::new();
    for name in flavour.fragments() {
        let file = root.join(name);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        fragment.extend(parse_fragment(&text, &file.display().to_string())?);
        fragment_files.push(file);
        fragment_texts.push(text);
    }
    deps::ensure(&[
        &source.package,
        "build-essential",
        "flex",
        "bison",
        "bc",
        "libelf-dev",
        "libssl-dev",
        "xz-utils",
    ])?;
    let version = deps::package_version(&source.package)?;
    // The guest kernel's key is the one it always had: one fragment.
    let mut parts = vec![
        RECIPE.as_bytes(),
        source.package.as_bytes(),
        version.as_bytes(),
    ];
    parts.extend(fragment_texts.iter().map(|t| t.as_bytes()));
    let key = cache::key(&parts);
    let out = cache::root()?.join("kernel").join(&key);
    Ok(Inputs {
        fragment,
        fragment_files,
        source,
        out,
        version,
    })
}

/// Builds (or finds in the cache) the guest kernel.
pub fn build() -> anyhow::Result<Kernel> {
    build_flavour(Flavour::Guest)
}

/// Builds (or finds in the cache) the kernel of `flavour`.
pub fn build_flavour(flavour: Flavour) -> anyhow::Result<Kernel> {
    let Inputs {
        fragment,
        fragment_files,
        source,
        out,
        version,
    } = inputs(flavour)?;
    let fragment_names = fragment_files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let cache = cache::root()?;
    let key = out
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    let done = |dir: &Path| -> Kernel {
        let cold = std::fs::read_to_string(dir.join("build-seconds"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Kernel {
            dir: dir.to_path_buf(),
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
            cold_build_secs: cold,
        }
    };
    if out.join("bzImage").is_file() && out.join("vmlinux").is_file() {
        let k = done(&out);
        print_artifacts("cached", &k);
        return Ok(k);
    }
    let started = Instant::now();
    if !source.tarball.is_file() {
        bail!(
            "kernel source {} is missing (is {} installed?)",
            source.tarball.display(),
            source.package
        );
    }
    let src = cache
        .join("src")
        .join(format!("{}-{version}", source.package));
    if !src.join("Makefile").is_file() {
        println!("[kernel] unpacking {} ...", source.tarball.display());
        let tmp = cache
            .join("src")
            .join(format!(".unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&source.tarball)
                .arg("-C")
                .arg(&tmp)
                .arg("--strip-components=1"),
            "unpacking the kernel source",
        )?;
        let _ = std::fs::remove_dir_all(&src);
        std::fs::rename(&tmp, &src)?;
    }
    let build = cache.join("build").join(&key);
    std::fs::create_dir_all(&build)?;
    println!("[kernel] configuring: tinyconfig + {fragment_names}");
    run(
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .arg(format!("O={}", build.display()))
            .arg("tinyconfig"),
        "make tinyconfig",
    )?;
    run(
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&build)
            .arg(build.join(".config"))
            .args(&fragment_files)
            .current_dir(&src),
        "merge_config.sh",
    )?;
    run(
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .arg(format!("O={}", build.display()))
            .arg("olddefconfig"),
        "make olddefconfig",
    )?;
    let dotconfig = std::fs::read_to_string(build.join(".config"))?;
    let dropped = dropped_options(&fragment, &dotconfig);
    if !dropped.is_empty() {
        bail!(
            "the kernel config dropped options of {} (unknown, or a dependency is missing):\n  {}",
            fragment_names,
            dropped.join("\n  ")
        );
    }
    make_with_progress(&src, &build)?;
    let tmp = cache.join("kernel").join(format!(".{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::copy(build.join("arch/x86/boot/bzImage"), tmp.join("bzImage"))?;
    std::fs::copy(build.join("vmlinux"), tmp.join("vmlinux"))?;
    std::fs::copy(build.join(".config"), tmp.join("config"))?;
    std::fs::write(
        tmp.join("build-seconds"),
        format!("{:.1}\n", started.elapsed().as_secs_f64()),
    )?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&tmp, &out)?;
    let k = done(&out);
    print_artifacts("built", &k);
    Ok(k)
}

fn print_artifacts(how: &str, k: &Kernel) {
    for p in [&k.bzimage, &k.vmlinux] {
        let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        println!(
            "[kernel] {how}: {} ({})",
            p.display(),
            cache::human_size(size)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_parse_and_reject_garbage() {
        let f = parse_fragment(
            "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n",
            "f",
        )
        .expect("parse");
        assert_eq!(f.get("CONFIG_A").map(String::as_str), Some("y"));
        assert_eq!(f.get("CONFIG_B").map(String::as_str), Some("n"));
        let err = parse_fragment("CONFIG_A=y\nnonsense\n", "frag")
            .unwrap_err()
            .to_string();
        assert!(err.contains("frag:2"), "{err}");
        assert!(parse_fragment("config_lower=y\n", "f").is_err());
    }

    #[test]
    fn dropped_options_are_named() {
        let f = parse_fragment(
            "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_DOES_NOT_EXIST=y\n",
            "f",
        )
        .expect("parse");
        let dotconfig = "CONFIG_A=y\n# CONFIG_B is not set\n";
        let dropped = dropped_options(&f, dotconfig);
        assert_eq!(
            dropped,
            [
                "CONFIG_B (wanted y, got n)",
                "CONFIG_DOES_NOT_EXIST (wanted y, got not set)"
            ]
        );
    }

    /// The real build: every option of the fragment is in the built
    /// .config. The e2e tier builds the kernel first and sets
    /// AURAE_REQUIRE_KERNEL so this can't pass by skipping there.
    #[test]
    fn the_built_config_has_every_fragment_option() {
        if !nix::unistd::geteuid().is_root() && std::env::var_os("AURAE_REQUIRE_KERNEL").is_none() {
            eprintln!("SKIP: needs root to check the kernel packages");
            return;
        }
        let Inputs { fragment, out, .. } = inputs(Flavour::Guest).expect("kernel inputs");
        let Ok(config) = std::fs::read_to_string(out.join("config")) else {
            assert!(
                std::env::var_os("AURAE_REQUIRE_KERNEL").is_none(),
                "the kernel is not built: {}",
                out.display()
            );
            eprintln!(
                "SKIP: the kernel is not built yet ({}); the e2e tier checks it after building",
                out.display()
            );
            return;
        };
        assert_eq!(dropped_options(&fragment, &config), Vec::<String>::new());
    }

    #[test]
    fn the_project_fragment_parses() {
        let text =
            std::fs::read_to_string(deps::workspace_root().join("kernel-config/aurae.config"))
                .expect("fragment");
        let f = parse_fragment(&text, "aurae.config").expect("parse");
        for needed in [
            "CONFIG_KVM_AMD",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_MEMCG",
            "CONFIG_SECCOMP_FILTER",
            "CONFIG_PVH",
        ] {
            assert_eq!(f.get(needed).map(String::as_str), Some("y"), "{needed}");
        }
    }
}
