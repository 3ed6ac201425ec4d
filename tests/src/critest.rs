//! Running the upstream CRI validation suite (`critest`) against auraed:
//! what the `cri` tier (cell backend, here) and the QEMU test host's
//! `critest_microvm` (microVM backend) share. The specs that must pass are
//! listed in a file, one per line: a ratchet, which a spec joins once what
//! it needs is built. `AURAE_CRITEST_ALL=1` runs every spec instead (slow:
//! a spec of something not built waits out its timeouts);
//! `AURAE_CRITEST_FOCUS=<regex>` runs the specs it matches.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// The specs critest runs by default.
pub const SUITE: usize = 80;

/// The specs listed in `file`, one per line (`#` starts a comment).
pub fn passing_list(file: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let specs: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    // An empty focus would match every spec.
    anyhow::ensure!(!specs.is_empty(), "{} lists no spec", file.display());
    Ok(specs)
}

/// `name` as a regular expression matching itself.
pub fn escaped(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The pods' CNI network: a bridge (`cni0`) with IPv4 addresses from
/// host-local (10.88.0.0/16), whose allocations stay in `dir/ipam`; the
/// configuration folder, in `dir`.
pub fn cni_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir)
        .with_context(|| format!("creating {}", conf_dir.display()))?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "critest",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.88.0.0/16"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("ipam").display().to_string(),
            },
        }],
    });
    let file = conf_dir.join("10-critest.conflist");
    std::fs::write(&file, conf.to_string())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(conf_dir)
}

/// auraed's `[cri]` section: the socket, the CNI configuration folder
/// (Debian's plugins), every registry through the local one, and what
/// becomes of pods at a restart (`keep`, auraed's default, or `remove`).
pub fn cri_section(socket: &Path, cni: &Path, registry_port: u16, pod_restart: &str) -> String {
    section(socket, cni, registry_port, pod_restart, "")
}

/// How long a microVM sandbox may take to boot in the QEMU test host
/// (nested KVM inside TCG): below crictl's and critest's 300 s per call.
pub const TEST_HOST_READY_TIMEOUT_S: u64 = 240;

/// [`cri_section`] for microVM pods in the QEMU test host: pods removed
/// when auraed stops, each sandbox given [`TEST_HOST_READY_TIMEOUT_S`].
pub fn microvm_cri_section(socket: &Path, cni: &Path, registry_port: u16) -> String {
    let timeout = format!("sandbox_ready_timeout_s = {TEST_HOST_READY_TIMEOUT_S}\n");
    section(socket, cni, registry_port, "remove", &timeout)
}

fn section(socket: &Path, cni: &Path, registry_port: u16, pod_restart: &str, more: &str) -> String {
    format!(
        "\n[cri]\nenabled = true\nsocket = {:?}\ncni_conf_dir = {:?}\n\
         cni_bin_dirs = [\"/usr/lib/cni\"]\npod_restart = {pod_restart:?}\n{more}\
         [cri.registries.\"*\"]\n\
         mirrors = [\"http://127.0.0.1:{registry_port}\"]\nskip_upstream = true\n",
        socket.display().to_string(),
        cni.display().to_string(),
    )
}

/// Which specs a run takes.
pub enum Selection {
    /// Those of the list.
    Listed(Vec<String>),
    /// Those matching a regular expression (`AURAE_CRITEST_FOCUS`).
    Focus(String),
    /// Every spec (`AURAE_CRITEST_ALL`).
    All,
}

impl Selection {
    /// The environment's choice, else `listed`.
    pub fn from_env(listed: &[String]) -> Selection {
        if let Some(focus) = std::env::var_os("AURAE_CRITEST_FOCUS") {
            Selection::Focus(focus.to_string_lossy().into_owned())
        } else if std::env::var_os("AURAE_CRITEST_ALL").is_some() {
            Selection::All
        } else {
            Selection::Listed(listed.to_vec())
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Selection::Listed(specs) => format!("the {} listed specs", specs.len()),
            Selection::Focus(f) => format!("the specs matching {f:?}"),
            Selection::All => "every spec".into(),
        }
    }
}

/// critest against the CRI socket `endpoint`, on the runtime `handler`
/// (critest's default, the empty one, if `None`), writing its JSON report
/// to `report`.
pub fn command(
    critest: &Path,
    endpoint: &str,
    handler: Option<&str>,
    report: &Path,
    selection: &Selection,
) -> Command {
    let mut cmd = Command::new(critest);
    cmd.args(["--runtime-endpoint", endpoint, "--image-endpoint", endpoint])
        .arg("--ginkgo.no-color")
        // A listed run says little; any other names each spec as it runs.
        .arg(match selection {
            Selection::Listed(_) => "--ginkgo.succinct",
            _ => "--ginkgo.v",
        })
        .arg(format!("--ginkgo.json-report={}", report.display()));
    if let Some(handler) = handler {
        cmd.args(["--runtime-handler", handler]);
    }
    match selection {
        Selection::Listed(specs) => {
            let focus: Vec<String> = specs.iter().map(|s| escaped(s)).collect();
            cmd.arg(format!("--ginkgo.focus={}", focus.join("|")));
        }
        Selection::Focus(f) => {
            cmd.arg(format!("--ginkgo.focus={f}"));
        }
        Selection::All => {}
    }
    cmd
}

/// The specs of a report that passed, and those that failed.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
}

/// Reads critest's JSON report and prints which specs failed, and any that
/// passed but aren't in `listed` yet (they should join it), each line
/// starting with `prefix`.
pub fn summarize(report: &Path, listed: &[String], prefix: &str) -> anyhow::Result<Summary> {
    let text = std::fs::read_to_string(report)
        .with_context(|| format!("reading critest's report {}", report.display()))?;
    let suites: serde_json::Value =
        serde_json::from_str(&text).context("critest's report is not JSON")?;
    let specs = suites[0]["SpecReports"]
        .as_array()
        .context("no SpecReports")?;
    let mut summary = Summary::default();
    for s in specs {
        let name = s["LeafNodeText"].as_str().unwrap_or_default().to_string();
        match s["State"].as_str() {
            Some("passed") if !name.is_empty() => summary.passed.push(name),
            Some("failed") | Some("panicked") | Some("timedout") => summary.failed.push(name),
            _ => {}
        }
    }
    println!(
        "{prefix}critest: {} passed, {} failed; {} of the suite's {SUITE} specs are listed as passing",
        summary.passed.len(),
        summary.failed.len(),
        listed.len()
    );
    for f in &summary.failed {
        println!("{prefix}  failed: {f}");
    }
    for p in summary.passed.iter().filter(|p| !listed.contains(p)) {
        println!("{prefix}  passed, not listed yet: {p}");
    }
    Ok(summary)
}

/// Checks that each of `listed` ran and passed (a name that no longer
/// matches a spec would run nothing, and critest would pass).
pub fn all_passed(summary: &Summary, listed: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = listed
        .iter()
        .filter(|l| !summary.passed.contains(l))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "listed specs that did not pass: {missing:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_name_is_matched_literally() {
        assert_eq!(
            escaped("runtime should support execSync with timeout [Conformance]"),
            "runtime should support execSync with timeout \\[Conformance\\]"
        );
    }
}
