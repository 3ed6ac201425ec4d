//! VMM errors.

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("--{option}: {reason}")]
    Config {
        option: &'static str,
        reason: String,
    },
    #[error("kvm: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("loading the kernel: {0}")]
    Kernel(String),
    #[error("device {device}: {reason}")]
    Device {
        device: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("seccomp: {0}")]
    Seccomp(String),
}
