//! MP tables (Intel MultiProcessor Specification 1.4), so the guest finds
//! its vCPUs, the I/O APIC and the ISA interrupts without ACPI.

/// The most vCPUs the MP table describes.
pub const MAX_CPUS: usize = 32;
