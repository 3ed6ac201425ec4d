//! The boot timer: the guest writes [`MAGIC`] to [`PORT`] when its `/init`
//! starts, and the VMM records the time since launch.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::state::VmState;

pub const PORT: u64 = 0x440;
pub const MAGIC: u8 = 123;

pub struct BootTimer {
    state: Arc<VmState>,
}

impl BootTimer {
    pub fn new(state: Arc<VmState>) -> Self {
        Self { state }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [MAGIC] {
            self.state.mark_boot();
        }
    }
}
