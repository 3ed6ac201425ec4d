//! The guest's CPUID: what KVM supports, with a coherent topology for the
//! configured vCPUs (leaves 0xb and 0x1f), the hypervisor bit, the TSC-deadline timer where KVM
//! emulates it, and SVM/VMX hidden unless nested virtualization was asked
//! for.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
/// V2 extended topology: Linux prefers it to 0xb where the CPU has it.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_SVM: u32 = 1 << 2;

/// What the guest may see beyond the plain supported CPUID.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// The SVM/VMX bits (the guest runs KVM itself).
    pub nested: bool,
    /// KVM emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER),
    /// which KVM_GET_SUPPORTED_CPUID does not report. With it the guest
    /// arms its timer with one MSR write; without it, with writes to the
    /// APIC's MMIO page, which KVM must decode and emulate: much dearer,
    /// above all under nested virtualization.
    pub tsc_deadline: bool,
}

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8, features: Features) {
    let nested = features.nested;
    // Bits of the x2APIC id that number the vCPUs.
    let shift = 32 - (u32::from(count).max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if features.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if !nested {
                    e.ecx &= !ECX_VMX;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_CACHE => {
                e.eax = (e.eax & 0x03ff_ffff) | ((u32::from(count).saturating_sub(1)) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_EXT_FEATURES if !nested => e.ecx &= !ECX_SVM,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx: ECX_VMX | ECX_SVM,
            ..Default::default()
        }
    }

    #[test]
    fn sets_topology_and_hides_virtualization_unless_nested() {
        let mut c = CpuId::from_entries(&[entry(1, 0), entry(0xb, 1), entry(0x8000_0001, 0)])
            .expect("cpuid");
        filter(&mut c, 2, 4, Features::default());
        let e = c.as_slice();
        assert_eq!(
            e[0].ecx & ECX_TSC_DEADLINE,
            0,
            "no TSC deadline unless KVM has it"
        );
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].ebx, 4);
        assert_eq!(e[1].edx, 2);
        assert_eq!(e[2].ecx & ECX_SVM, 0);
        // Leaf 0x1f tells the same topology as 0xb.
        let mut c = CpuId::from_entries(&[entry(0xb, 1), entry(0x1f, 1)]).expect("cpuid");
        filter(&mut c, 3, 4, Features::default());
        let (b, v2) = (c.as_slice()[0], c.as_slice()[1]);
        assert_eq!(
            (v2.eax, v2.ebx, v2.ecx, v2.edx),
            (b.eax, b.ebx, b.ecx, b.edx)
        );
        assert_eq!((v2.ebx, v2.edx), (4, 3));
        let mut c = CpuId::from_entries(&[entry(0x8000_0001, 0)]).expect("cpuid");
        filter(
            &mut c,
            0,
            1,
            Features {
                nested: true,
                ..Default::default()
            },
        );
        assert_ne!(c.as_slice()[0].ecx & ECX_SVM, 0, "nested keeps SVM");
        let mut c = CpuId::from_entries(&[entry(1, 0)]).expect("cpuid");
        filter(
            &mut c,
            0,
            1,
            Features {
                tsc_deadline: true,
                ..Default::default()
            },
        );
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
    }
}
