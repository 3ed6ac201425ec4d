//! Which backend an instance runs on, and why: a microVM where this host's
//! KVM can boot a standard Linux kernel, else a cell running the same image.

use std::path::{Path, PathBuf};

/// Where an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    MicroVm,
    Cell,
}

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    Auto,
    MicroVm,
    Cell,
}

/// Why a microVM can't run here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoMicroVm {
    #[error("/dev/kvm is missing")]
    NoKvm,
    #[error(
        "this host's KVM is PVM ({0}), which runs only PVM-aware guest kernels, not a standard one"
    )]
    PvmOnly(&'static str),
    #[error("KVM has no hardware backend here (neither kvm_intel nor kvm_amd is loaded)")]
    NoHardwareKvm,
    #[error("the guest kernel {} is missing (build it with `cargo xtask image`)", .0.display())]
    NoKernel(PathBuf),
    #[error(
        "the VMM {} is missing (set instances.vmm, or install aurae-vmm next to auraed)",
        .0.display()
    )]
    NoVmm(PathBuf),
}

/// The backend chosen for a request, with the reason, as the status shows
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub reason: String,
}

/// What the host offers, read from `sys` (normally `/sys`) and `dev`, and
/// whether the guest kernel and the VMM are there.
///
/// `/dev/kvm` is what counts: it exists only once a vendor backend
/// (`kvm_intel`, `kvm_amd` or `kvm_pvm`) has initialised, so without it the
/// CPU offers no virtualization (a guest booted without `--nested`, whose
/// built-in `kvm_amd` is still listed in `/sys/module` because it has
/// parameters). The vendor modules are then told apart by
/// `/sys/module/<name>`, which exists for loaded modules and for built-in
/// ones with parameters (`kvm_intel` and `kvm_amd` both have some, so a
/// guest kernel with them built in, like ours, is recognised).
pub fn microvm_support(sys: &Path, dev: &Path, kernel: &Path, vmm: &Path) -> Result<(), NoMicroVm> {
    if !dev.join("kvm").exists() {
        return Err(NoMicroVm::NoKvm);
    }
    let module = |m: &str| sys.join("module").join(m).exists();
    if module("kvm_pvm") {
        return Err(NoMicroVm::PvmOnly("kvm_pvm is loaded"));
    }
    if !module("kvm_intel") && !module("kvm_amd") {
        return Err(NoMicroVm::NoHardwareKvm);
    }
    if !kernel.exists() {
        return Err(NoMicroVm::NoKernel(kernel.to_path_buf()));
    }
    if !super::is_file(vmm) {
        return Err(NoMicroVm::NoVmm(vmm.to_path_buf()));
    }
    Ok(())
}

/// Why a request's preference can't be met.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// A microVM was asked for where KVM can't boot one.
    #[error("backend: a microVM can't run here: {0}")]
    Impossible(NoMicroVm),
}

/// Picks the backend: `auto` takes a microVM where one can run, else a
/// cell; `microvm` fails where one can't.
pub fn choose(
    preference: Preference,
    support: Result<(), NoMicroVm>,
) -> Result<Choice, ChoiceError> {
    match (preference, support) {
        (Preference::Cell, _) => Ok(Choice {
            backend: Backend::Cell,
            reason: "the request asked for a cell".into(),
        }),
        (_, Ok(())) => Ok(Choice {
            backend: Backend::MicroVm,
            reason: "KVM boots a standard kernel here".into(),
        }),
        (Preference::Auto, Err(why)) => Ok(Choice {
            backend: Backend::Cell,
            reason: format!("auto: a cell, since no microVM: {why}"),
        }),
        (Preference::MicroVm, Err(why)) => Err(ChoiceError::Impossible(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(modules: &[&str], kvm: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().expect("tempdir");
        let sys = t.path().join("sys");
        let dev = t.path().join("dev");
        for m in modules {
            std::fs::create_dir_all(sys.join("module").join(m)).expect("module");
        }
        std::fs::create_dir_all(&dev).expect("dev");
        if kvm {
            std::fs::write(dev.join("kvm"), b"").expect("kvm");
        }
        (t, sys, dev)
    }

    #[test]
    fn a_pvm_host_like_the_development_machine_gets_a_cell() {
        let (t, sys, dev) = host(&["kvm", "kvm_pvm"], true);
        let support = microvm_support(&sys, &dev, &t.path().join("bzImage"), t.path());
        assert!(matches!(support, Err(NoMicroVm::PvmOnly(_))), "{support:?}");
        let choice = choose(Preference::Auto, support.clone()).expect("auto");
        assert_eq!(choice.backend, Backend::Cell);
        assert!(choice.reason.contains("PVM"), "{}", choice.reason);
        let err = choose(Preference::MicroVm, support).expect_err("microvm");
        assert!(matches!(err, ChoiceError::Impossible(_)));
        assert!(err.to_string().starts_with("backend: "), "{err}");
    }

    #[test]
    fn no_kvm_or_no_hardware_backend_means_no_microvm() {
        let (t, sys, dev) = host(&[], false);
        let k = t.path().join("bzImage");
        let v = t.path().join("aurae-vmm");
        assert!(matches!(
            microvm_support(&sys, &dev, &k, &v),
            Err(NoMicroVm::NoKvm)
        ));
        // A guest booted without nested virtualization: its built-in
        // kvm_amd is listed, but there is no /dev/kvm.
        let (t, sys, dev) = host(&["kvm", "kvm_amd"], false);
        let (k, v) = (t.path().join("bzImage"), t.path().join("aurae-vmm"));
        assert!(matches!(
            microvm_support(&sys, &dev, &k, &v),
            Err(NoMicroVm::NoKvm)
        ));
        let (t, sys, dev) = host(&["kvm"], true);
        let (k, v) = (t.path().join("bzImage"), t.path().join("aurae-vmm"));
        assert!(matches!(
            microvm_support(&sys, &dev, &k, &v),
            Err(NoMicroVm::NoHardwareKvm)
        ));
    }

    #[test]
    fn hardware_kvm_needs_the_kernel_and_the_vmm_too() {
        let (t, sys, dev) = host(&["kvm", "kvm_intel"], true);
        let k = t.path().join("vmlinux");
        let v = t.path().join("aurae-vmm");
        let support = microvm_support(&sys, &dev, &k, &v);
        assert!(
            matches!(&support, Err(NoMicroVm::NoKernel(p)) if p == &k),
            "{support:?}"
        );
        std::fs::write(&k, b"kernel").expect("kernel");
        let support = microvm_support(&sys, &dev, &k, &v);
        assert!(
            matches!(&support, Err(NoMicroVm::NoVmm(p)) if p == &v),
            "{support:?}"
        );
        let err = choose(Preference::MicroVm, support.clone()).expect_err("no vmm");
        assert!(err.to_string().contains("instances.vmm"), "{err}");
        assert_eq!(
            choose(Preference::Auto, support).expect("auto").backend,
            Backend::Cell
        );
        // A directory is not a VMM.
        std::fs::create_dir(&v).expect("dir");
        assert!(matches!(
            microvm_support(&sys, &dev, &k, &v),
            Err(NoMicroVm::NoVmm(_))
        ));
        std::fs::remove_dir(&v).expect("rmdir");
        std::fs::write(&v, b"vmm").expect("vmm");
        assert!(microvm_support(&sys, &dev, &k, &v).is_ok());
        let (t, sys, dev) = host(&["kvm", "kvm_amd"], true);
        let (k, v) = (t.path().join("vmlinux"), t.path().join("aurae-vmm"));
        std::fs::write(&k, b"kernel").expect("kernel");
        std::fs::write(&v, b"vmm").expect("vmm");
        let choice = choose(Preference::Auto, microvm_support(&sys, &dev, &k, &v)).expect("auto");
        assert_eq!(choice.backend, Backend::MicroVm);
    }

    #[test]
    fn a_cell_is_always_possible_when_asked_for() {
        let choice = choose(Preference::Cell, Err(NoMicroVm::NoKvm)).expect("cell");
        assert_eq!(choice.backend, Backend::Cell);
    }
}
