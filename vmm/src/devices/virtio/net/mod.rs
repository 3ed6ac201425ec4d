//! virtio-net backed by a TAP device.

pub mod device;
mod event_handler;
pub mod metrics;
pub mod tap;

pub use device::Net;

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
