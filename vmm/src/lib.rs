//! Aurae's microVM monitor, on the rust-vmm crates: KVM (kvm-ioctls),
//! guest memory (vm-memory), kernel loading (linux-loader), virtqueues
//! (virtio-queue), the UART (vm-superio) and the device event loop
//! (event-manager).
//!
//! The guest is untrusted: guest memory, virtqueue descriptors and MMIO/PIO
//! accesses are validated at the device edge, and never make the VMM panic
//! or touch memory outside the guest's.

pub mod boot;
pub mod bus;
pub mod config;
pub mod devices;
mod error;
mod event_thread;
pub mod guest_ram;
pub mod seccomp;
pub mod state;
pub mod vcpu;
mod vm;

pub use config::{Console, DiskConfig, FsConfig, VmConfig, VsockConfig};
pub use error::{chain as error_chain, KvmError, VcpuError, VmmError};
pub use state::ExitReason;
pub use vm::{StopHandle, Vm};
