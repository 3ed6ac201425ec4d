//! The upstream critest on the microVM backend, inside the QEMU test host
//! (`tests/tests/critest_microvm.rs`): last in the e2e tier's boot of the
//! test host (or a boot of its own, by hand), with critest, the registry,
//! skopeo, the CNI plugins, and critest's images
//! built here (from Debian's packages, as the `cri` tier builds them) and
//! carried in as archives.
//!
//! The specs of `tests/cri/passing_microvm.txt` pass there, and `cargo
//! xtask testvm critest_microvm` runs them all. Each pod there is a VM
//! booted under nested KVM inside TCG (about 20 s a spec), so the e2e tier
//! runs the sample of them in `tests/cri/ci_microvm.txt`, each of which
//! must be in the full list. For a run by hand (not the tier's sample),
//! `AURAE_CRITEST_ALL` and `AURAE_CRITEST_FOCUS` pass through to the test
//! host (`aurae_tests::critest`).

use std::path::PathBuf;

use anyhow::Context;
use aurae_tests::critest_images;

use crate::deps;
use crate::testhost::TestRun;

/// The test binary, and its name in `cargo xtask testvm`.
pub const TEST: &str = "critest_microvm";

/// Where the images' archives go in the test host.
const IMAGES_THERE: &str = "critest/images";
const LIST_THERE: &str = "critest/specs.txt";

/// Which of the passing specs a run takes.
#[derive(Clone, Copy)]
pub enum Specs {
    /// Every spec of `tests/cri/passing_microvm.txt`.
    Passing,
    /// The e2e tier's sample of them, `tests/cri/ci_microvm.txt`.
    Sample,
}

fn critest() -> PathBuf {
    deps::workspace_root().join("../shared/cri/critest")
}

/// Why the run can't be made here, if it can't.
pub fn missing() -> Option<String> {
    let critest = critest();
    (!critest.is_file()).then(|| format!("no critest at {}", critest.display()))
}

/// The run of `specs`: critest's images built and every file it needs.
pub fn run(specs: Specs) -> anyhow::Result<TestRun> {
    let lists = deps::workspace_root().join("tests/cri");
    let passing = lists.join("passing_microvm.txt");
    let list = match specs {
        Specs::Passing => passing,
        Specs::Sample => {
            let sample = lists.join("ci_microvm.txt");
            let all = aurae_tests::critest::passing_list(&passing)?;
            for spec in aurae_tests::critest::passing_list(&sample)? {
                anyhow::ensure!(
                    all.contains(&spec),
                    "{}: {spec:?} is not in {}",
                    sample.display(),
                    passing.display()
                );
            }
            sample
        }
    };
    let critest = critest();
    if let Some(why) = missing() {
        anyhow::bail!("{why}");
    }
    deps::ensure(&[
        "docker-registry",
        "skopeo",
        "gcc",
        "libc6-dev",
        "containernetworking-plugins",
    ])?;
    let sources = crate::cri_tier::image_sources()?;
    let dir = deps::target_dir().join("critest-images");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    println!("==> critest's images, built for the test host");
    let built = critest_images::build(&dir, &sources);
    let mut files: Vec<(String, PathBuf)> = built
        .iter()
        .map(|(file, _)| {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            (format!("{IMAGES_THERE}/{name}"), file.clone())
        })
        .collect();
    files.push((
        format!("{IMAGES_THERE}/{}", critest_images::INDEX),
        dir.join(critest_images::INDEX),
    ));
    files.push((LIST_THERE.into(), list));
    let mut env = vec![
        ("AURAE_CRITEST".into(), "/usr/bin/critest".into()),
        ("AURAE_CRITEST_IMAGES".into(), format!("/{IMAGES_THERE}")),
        ("AURAE_CRITEST_LIST".into(), format!("/{LIST_THERE}")),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    // A run by hand may take other specs; the e2e tier's sample is fixed.
    if let Specs::Passing = specs {
        for pass in ["AURAE_CRITEST_ALL", "AURAE_CRITEST_FOCUS"] {
            if let Ok(value) = std::env::var(pass) {
                env.push((pass.into(), value));
            }
        }
    }
    let programs = crate::testhost::with_programs(
        &[("usr/bin/critest", critest)],
        crate::testhost::REGISTRY_AND_CNI,
    );
    Ok(TestRun {
        test: TEST.into(),
        filters: vec!["--nocapture".into()],
        env,
        programs,
        files,
        ..Default::default()
    })
}
