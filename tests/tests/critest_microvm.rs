//! Tier 4 (e2e), inside the QEMU test host (last in the tier's boot, or
//! `cargo xtask testvm critest_microvm`): the upstream CRI validation suite, critest,
//! against auraed with every pod sandbox a microVM (`--runtime-handler
//! aurae-microvm`). Its images, built outside by xtask, are pushed to a
//! registry on the test host's loopback and reached through auraed's
//! mirror; pods get addresses from a CNI bridge network. Each spec of the
//! list xtask carried in (`tests/cri/passing_microvm.txt`, or the e2e
//! tier's sample of it) must run and pass, and no VMM may be left when
//! critest is done.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aurae_tests::cri::{have, Registry};
use aurae_tests::critest::{self, Selection};
use aurae_tests::guest::e2e_kvm;
use aurae_tests::{critest_images, report_skip, Daemon, DaemonOptions};

const HANDLER: &str = "aurae-microvm";

/// The VMM processes running on this host.
fn vmms() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "aurae-vmm")
        })
        .count()
}

/// What xtask carried in: critest, its images and the list of specs.
struct Carried {
    critest: PathBuf,
    images: PathBuf,
    list: PathBuf,
}

fn carried() -> Result<Carried, &'static str> {
    let var = |name| std::env::var_os(name).map(PathBuf::from);
    let (Some(critest), Some(images), Some(list)) = (
        var("AURAE_CRITEST"),
        var("AURAE_CRITEST_IMAGES"),
        var("AURAE_CRITEST_LIST"),
    ) else {
        return Err("needs critest and its images, which `cargo xtask testvm critest_microvm` carries into the test host");
    };
    if !have("docker-registry") || !have("skopeo") {
        return Err("docker-registry and skopeo are not in the test host");
    }
    Ok(Carried {
        critest,
        images,
        list,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn critest_passes_its_listed_specs_with_microvm_pod_sandboxes() {
    let name = aurae_tests::function_name!();
    let Some((image, vmm)) = e2e_kvm(name) else {
        return;
    };
    let carried = match carried() {
        Ok(c) => c,
        Err(why) => {
            report_skip(name, why);
            return;
        }
    };
    let specs = critest::passing_list(&carried.list).expect("the list of specs");
    let selection = Selection::from_env(&specs);
    let work = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start();
    critest_images::push_built(&registry, &carried.images);
    let cni = critest::cni_config(work.path()).expect("the CNI configuration");
    let socket = work.path().join("cri.sock");
    let extra_config = critest::microvm_cri_section(&socket, &cni, registry.port);
    let daemon = Daemon::start_with(DaemonOptions {
        image_dir: Some(image),
        vmm: Some(vmm),
        extra_config,
        ..Default::default()
    })
    .await;
    let endpoint = format!("unix://{}", socket.display());
    let report = work.path().join("critest-report.json");
    let mut cmd = critest::command(
        &carried.critest,
        &endpoint,
        Some(HANDLER),
        &report,
        &selection,
    );
    println!(
        "critest-microvm: {} (of the suite's {} specs), handler {HANDLER}",
        selection.describe(),
        critest::SUITE
    );
    cmd.current_dir(work.path());
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .expect("the critest thread")
        .expect("running critest");
    println!(
        "critest-microvm: critest took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let summary = critest::summarize(&report, &specs, "critest-microvm: ");
    if let Ok(summary) = &summary {
        for p in &summary.passed {
            println!("critest-microvm: passed: {p}");
        }
    }
    if !status.success() {
        panic!(
            "critest failed on the microVM backend; auraed's log:\n{}",
            daemon.log_text()
        );
    }
    if let Selection::Listed(_) = selection {
        let summary = summary.expect("critest's report");
        critest::all_passed(&summary, &specs).expect("every listed spec passed");
        // Every pod critest made, it removed: no VM may be left running.
        let deadline = Instant::now() + Duration::from_secs(30);
        while vmms() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(vmms(), 0, "VMMs left after critest");
    }
}
