//! Just enough of the i8042 controller for a guest to reset the machine:
//! writing 0xfe (pulse reset) to the command port stops the VM. Reads look
//! like an absent controller (all ones), so Linux's i8042 probe gives up at
//! once instead of timing out on a self test.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::state::{ExitReason, VmState};

/// Data port 0x60 and command port 0x64 (offsets 0 and 4).
pub const BASE: u64 = 0x60;
pub const LEN: u64 = 5;
const CMD_RESET: u8 = 0xfe;

pub struct I8042 {
    state: Arc<VmState>,
}

impl I8042 {
    pub fn new(state: Arc<VmState>) -> Self {
        Self { state }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data == [CMD_RESET] {
            self.state.exit(ExitReason::Reset);
        }
    }
}
