//! The i8042 keyboard controller, with a keyboard behind it: enough for
//! Linux's i8042 and atkbd drivers to find a keyboard, for a guest to reset
//! the machine (command 0xfe), and for the host to press Ctrl-Alt-Del
//! ([`I8042::press_ctrl_alt_del`]), which asks a Linux guest to shut down.
//!
//! There is no mouse: the aux port's loopback answers with a byte that is
//! not the one sent, and its test with "clock line stuck low", at once, so
//! Linux finds no mouse without waiting for a timeout.
//! The keyboard speaks scan code set 2, untranslated (the command byte's
//! translation bit is clear), and answers the few commands atkbd sends.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::devices::IrqTrigger;
use crate::state::{ExitReason, VmState};

/// Data port 0x60 and command port 0x64 (offsets 0 and 4).
pub const BASE: u64 = 0x60;
pub const LEN: u64 = 5;
/// The keyboard's interrupt line.
pub const IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const STR_OUT_FULL: u8 = 0x01;
const STR_SYSTEM: u8 = 0x04;
const STR_LAST_WAS_COMMAND: u8 = 0x08;
/// Set: the keyboard is not locked.
const STR_UNLOCKED: u8 = 0x10;
/// The byte waiting is the aux port's.
const STR_AUX_DATA: u8 = 0x20;

// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;

// Controller commands (command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
/// The aux port's clock line is stuck low: no mouse.
const AUX_TEST_NO_DEVICE: u8 = 0x02;

// Keyboard commands (data port) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_REPEAT: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// An MF2 keyboard.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Ctrl, Alt and Delete pressed, then released, in scan code set 2.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // press: left Ctrl, left Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // release, in reverse
];

/// Bytes waiting to be read: at most this many (a guest that never reads
/// can't make the VMM grow). Linux's probe flushes up to 16 and takes more
/// for a broken controller.
const BUFFER: usize = 16;

/// Whose a waiting byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

/// What the next data port write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A keyboard command.
    KeyboardCommand,
    /// The argument of a keyboard command (LEDs, repeat rate, scan set).
    KeyboardArgument,
    /// The controller's command byte (0x60).
    CommandByte,
    /// The output port (0xd1): bit 0 clear resets the machine.
    OutputPort,
    /// A byte for the absent mouse (0xd4).
    Discard,
    /// The aux loopback test's byte (0xd3).
    AuxLoop,
}

pub struct I8042 {
    state: Arc<VmState>,
    irq: IrqTrigger,
    command_byte: u8,
    expect: Expect,
    last_was_command: bool,
    /// Bytes for the guest, each with whose it is (the keyboard's
    /// interrupt, when the command byte allows).
    out: VecDeque<(u8, Source)>,
    /// What the data port reads when nothing is waiting: the last byte.
    last: u8,
}

impl I8042 {
    pub fn new(state: Arc<VmState>, irq: IrqTrigger) -> Self {
        Self {
            state,
            irq,
            command_byte: CTR_KBD_INT | CTR_SYSTEM,
            expect: Expect::KeyboardCommand,
            last_was_command: false,
            out: VecDeque::new(),
            last: 0,
        }
    }

    /// Presses and releases Ctrl-Alt-Del on the keyboard. Linux's keyboard
    /// handler reboots, or signals init where init asked for that (as
    /// systemd and busybox init do, to shut down cleanly).
    /// Dropped whole if it doesn't fit (a guest that doesn't read its
    /// keyboard yet).
    pub fn press_ctrl_alt_del(&mut self) {
        if self.out.len() + CTRL_ALT_DEL.len() > BUFFER {
            return;
        }
        for b in CTRL_ALT_DEL {
            self.push(b, Source::Keyboard);
        }
    }

    fn push(&mut self, byte: u8, from: Source) {
        if self.out.len() >= BUFFER {
            return;
        }
        let was_empty = self.out.is_empty();
        self.out.push_back((byte, from));
        if was_empty {
            self.interrupt();
        }
    }

    /// Raises the keyboard interrupt if the byte at the head is the
    /// keyboard's and the guest enabled it. One byte per interrupt, as the
    /// hardware does: the next one interrupts when this one is read.
    fn interrupt(&self) {
        if let Some((_, Source::Keyboard)) = self.out.front() {
            if self.command_byte & CTR_KBD_INT != 0 {
                // Fails only when the counter is full: an interrupt is
                // pending already.
                let _ = vm_superio::Trigger::trigger(&self.irq);
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = STR_UNLOCKED;
        if !self.out.is_empty() {
            s |= STR_OUT_FULL;
        }
        if self.command_byte & CTR_SYSTEM != 0 {
            s |= STR_SYSTEM;
        }
        if self.last_was_command {
            s |= STR_LAST_WAS_COMMAND;
        }
        if let Some((_, Source::Aux)) = self.out.front() {
            s |= STR_AUX_DATA;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.expect = Expect::KeyboardCommand;
        match cmd {
            CMD_READ_CTR => self.push(self.command_byte, Source::Controller),
            CMD_WRITE_CTR => self.expect = Expect::CommandByte,
            CMD_SELF_TEST => self.push(SELF_TEST_OK, Source::Controller),
            CMD_KBD_TEST => self.push(0, Source::Controller),
            CMD_AUX_TEST => self.push(AUX_TEST_NO_DEVICE, Source::Controller),
            CMD_AUX_LOOP => self.expect = Expect::AuxLoop,
            CMD_WRITE_AUX => self.expect = Expect::Discard,
            CMD_WRITE_OUTPUT => self.expect = Expect::OutputPort,
            CMD_RESET => self.state.exit(ExitReason::Reset),
            CMD_AUX_DISABLE | CMD_AUX_ENABLE | CMD_KBD_DISABLE | CMD_KBD_ENABLE => {}
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        let expected = std::mem::replace(&mut self.expect, Expect::KeyboardCommand);
        match expected {
            Expect::CommandByte => {
                self.command_byte = byte;
                self.interrupt();
            }
            Expect::OutputPort => {
                if byte & 1 == 0 {
                    self.state.exit(ExitReason::Reset);
                }
            }
            Expect::Discard => {}
            // Echoed changed: the loop is broken, and Linux goes on to the
            // aux test, which says there is no mouse.
            Expect::AuxLoop => self.push(!byte, Source::Aux),
            Expect::KeyboardArgument => self.push(KBD_ACK, Source::Keyboard),
            Expect::KeyboardCommand => self.keyboard(byte),
        }
    }

    fn keyboard(&mut self, cmd: u8) {
        match cmd {
            KBD_ECHO => self.push(KBD_ECHO, Source::Keyboard),
            KBD_GET_ID => {
                self.push(KBD_ACK, Source::Keyboard);
                for b in KBD_ID {
                    self.push(b, Source::Keyboard);
                }
            }
            KBD_RESET => {
                self.out.retain(|(_, from)| *from != Source::Keyboard);
                self.push(KBD_ACK, Source::Keyboard);
                self.push(KBD_SELF_TEST_OK, Source::Keyboard);
            }
            KBD_SET_LEDS | KBD_SET_REPEAT | KBD_SCAN_SET => {
                self.push(KBD_ACK, Source::Keyboard);
                self.expect = Expect::KeyboardArgument;
            }
            _ => self.push(KBD_ACK, Source::Keyboard),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => {
                if let Some((b, _)) = self.out.pop_front() {
                    self.last = b;
                    self.interrupt();
                }
                self.last
            }
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            DATA => self.data(*byte),
            COMMAND => self.command(*byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042, Arc<VmState>) {
        let state = Arc::new(VmState::new(Instant::now()).expect("state"));
        let irq = IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        (I8042::new(state.clone(), irq), state)
    }

    fn read(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    fn interrupts(d: &I8042) -> u64 {
        d.irq.0.read().unwrap_or(0)
    }

    #[test]
    fn linux_probe_finds_a_controller_with_a_keyboard_and_no_mouse() {
        let (mut d, _) = device();
        assert_eq!(read(&mut d, COMMAND) & STR_OUT_FULL, 0, "empty at reset");
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, COMMAND) & STR_OUT_FULL, STR_OUT_FULL);
        assert_eq!(read(&mut d, DATA), SELF_TEST_OK);
        d.write(COMMAND, &[CMD_READ_CTR]);
        let ctr = read(&mut d, DATA);
        assert_eq!(ctr & 0x40, 0, "untranslated");
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[ctr & !CTR_KBD_INT]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), ctr & !CTR_KBD_INT);
        // No mouse: the loopback answers at once, as the aux port's, with
        // a byte that is not the one sent; the test says so.
        d.write(COMMAND, &[CMD_AUX_LOOP]);
        d.write(DATA, &[0x5a]);
        let status = read(&mut d, COMMAND);
        assert_eq!(
            status & (STR_OUT_FULL | STR_AUX_DATA),
            STR_OUT_FULL | STR_AUX_DATA
        );
        assert_ne!(read(&mut d, DATA), 0x5a);
        assert_eq!(read(&mut d, COMMAND) & STR_AUX_DATA, 0);
        d.write(COMMAND, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut d, DATA), AUX_TEST_NO_DEVICE);
        // Controller answers never interrupt.
        assert_eq!(interrupts(&d), 0);
    }

    #[test]
    fn the_keyboard_acks_and_identifies_itself_with_an_interrupt_per_byte() {
        let (mut d, _) = device();
        d.write(DATA, &[KBD_GET_ID]);
        assert_eq!(interrupts(&d), 1);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
        assert_eq!(interrupts(&d), 1, "the next byte interrupts");
        assert_eq!(read(&mut d, DATA), KBD_ID[0]);
        assert_eq!(read(&mut d, DATA), KBD_ID[1]);
        assert_eq!(read(&mut d, COMMAND) & STR_OUT_FULL, 0);
        // LEDs take an argument, acked too, and are not a command.
        d.write(DATA, &[KBD_SET_LEDS]);
        d.write(DATA, &[KBD_GET_ID]);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
        assert_eq!(read(&mut d, DATA), KBD_ACK);
        assert_eq!(read(&mut d, COMMAND) & STR_OUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_is_pressed_and_released_in_scan_code_set_2() {
        let (mut d, _) = device();
        d.press_ctrl_alt_del();
        let mut got = vec![];
        while read(&mut d, COMMAND) & STR_OUT_FULL != 0 {
            got.push(read(&mut d, DATA));
        }
        assert_eq!(
            got,
            [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
    }

    #[test]
    fn no_interrupt_while_the_guest_disabled_it_and_one_when_it_enables_it() {
        let (mut d, _) = device();
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CTR_SYSTEM]);
        d.press_ctrl_alt_del();
        assert_eq!(interrupts(&d), 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CTR_SYSTEM | CTR_KBD_INT]);
        assert_eq!(interrupts(&d), 1);
    }

    #[test]
    fn a_guest_that_never_reads_cant_grow_the_buffer() {
        let (mut d, _) = device();
        for _ in 0..100 {
            d.press_ctrl_alt_del();
        }
        // One press fits; the others are dropped whole.
        assert_eq!(d.out.len(), CTRL_ALT_DEL.len());
        for _ in 0..100 {
            d.write(DATA, &[KBD_GET_ID]);
        }
        assert_eq!(d.out.len(), BUFFER);
    }

    #[test]
    fn reset_through_the_command_port_or_the_output_port_stops_the_vm() {
        let (mut d, state) = device();
        d.write(COMMAND, &[CMD_RESET]);
        assert_eq!(state.exit_reason(), Some(ExitReason::Reset));
        let (mut d, state) = device();
        d.write(COMMAND, &[CMD_WRITE_OUTPUT]);
        d.write(DATA, &[0xfe]);
        assert_eq!(state.exit_reason(), Some(ExitReason::Reset));
    }
}
