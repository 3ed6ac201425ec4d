//! virtio-net backed by a TAP device.

pub mod device;
mod event_handler;
pub mod metrics;
pub mod tap;

pub use device::Net;

/// What tells this host's guest MACs from another's: its boot ID (empty
/// where it can't be read, and the MAC is then the TAP name's alone).
pub fn host_salt() -> Vec<u8> {
    std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// The guest's MAC on a TAP: locally administered and unicast (06:aa:52),
/// then three bytes of an FNV-1a hash of the TAP's name and `salt` (see
/// [`host_salt`]), so that VMs on one bridge (each on its own TAP) don't
/// share an address, nor do VMs of two hosts whose TAPs have the same name.
pub fn guest_mac(tap: &str, salt: &[u8]) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in tap.bytes().chain(salt.iter().copied()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    [0x06, 0xaa, 0x52, a, b, c]
}

#[cfg(test)]
pub mod tests_support {
    //! A backend that offers one frame and swallows what is sent.

    use super::device::Backend;

    pub struct Sink(Option<Vec<u8>>);

    impl Sink {
        pub fn with_frame(frame: Vec<u8>) -> Self {
            Sink(Some(frame))
        }
    }

    impl Backend for Sink {
        fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.take() {
                Some(f) => {
                    let n = f.len().min(buf.len());
                    buf[..n].copy_from_slice(&f[..n]);
                    Ok(n)
                }
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
        fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            Ok(frame.len())
        }
    }
}
