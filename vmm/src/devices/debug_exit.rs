//! A port that stops the VM with the written value, for test guests (like
//! QEMU's isa-debug-exit). A guest can stop itself anyway (triple fault),
//! so this grants nothing new.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::state::{ExitReason, VmState};

pub const PORT: u64 = 0x501;

pub struct DebugExit {
    state: Arc<VmState>,
}

impl DebugExit {
    pub fn new(state: Arc<VmState>) -> Self {
        Self { state }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            self.state.exit(ExitReason::DebugExit(*v));
        }
    }
}
