//! The vsock device logic: packets between the virtqueues and the muxer.
//!
//! Queues: rx (host to guest), tx (guest to host), event (unused: the
//! device never migrates, so it never sends a transport reset).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::VsockMetrics;
use super::muxer::{Key, Muxer};
use super::packet::*;
use crate::devices::event_loop::WatchFault;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueues, Interrupt, VirtioDevice, F_VERSION_1,
    TYPE_VSOCK,
};

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

pub struct Vsock {
    pub(super) muxer: Muxer,
    pub(super) queue_evts: [EventFd; 3],
    pub(super) active: Option<ActiveQueues>,
    /// Host sockets the event loop watches, and for what.
    pub(super) watched: HashMap<RawFd, EventSet>,
    /// Whether the listening socket is watched (not while accept is out of
    /// descriptors).
    pub(super) listening: bool,
    /// Ticks while a handshake or a close has a deadline (non-blocking: a
    /// tick read after the timer was disarmed finds nothing, and must not
    /// wait).
    pub(super) timer: TimerFd,
    pub(super) timer_armed: bool,
    /// tx chains were left in the ring because control packets for the
    /// guest piled up.
    pub(super) tx_throttled: bool,
    /// One packet's payload.
    scratch: Vec<u8>,
    /// Counts rx deliveries, to serve ready connections in turn.
    tick: u64,
    pub metrics: Arc<VsockMetrics>,
    /// Records a failed event-loop registration, for the VM to report.
    pub watch_fault: WatchFault,
}

/// What one rx chain got.
enum Fill {
    Used(u32),
    /// Nothing after all: the chain goes back for the next packet.
    Rewind,
}

impl Vsock {
    /// A device for guest `cid` whose host side listens on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        let metrics = Arc::new(VsockMetrics::default());
        let queue_evts = [
            EventFd::new(EFD_NONBLOCK)?,
            EventFd::new(EFD_NONBLOCK)?,
            EventFd::new(EFD_NONBLOCK)?,
        ];
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // Bound last: nothing after it can fail and leave the file behind.
        let muxer = Muxer::new(cid, uds_path, metrics.clone())?;
        Ok(Self {
            muxer,
            queue_evts,
            active: None,
            watched: HashMap::new(),
            listening: false,
            timer,
            timer_armed: false,
            tx_throttled: false,
            scratch: vec![0u8; MAX_PAYLOAD],
            tick: 0,
            metrics,
            watch_fault: WatchFault::default(),
        })
    }

    /// Arms the deadline timer (a tick every half second) or disarms it.
    pub(super) fn arm_timer(&mut self, on: bool) {
        if on == self.timer_armed {
            return;
        }
        let done = if on {
            let tick = TimeSpec::from_duration(std::time::Duration::from_millis(500));
            self.timer
                .set(Expiration::Interval(tick), TimerSetTimeFlags::empty())
        } else {
            self.timer.unset()
        };
        if done.is_ok() {
            self.timer_armed = on;
        }
    }

    /// Hands the packets the guest queued to the muxer, until the queue is
    /// empty or the guest has too many control packets waiting for it.
    /// Returns how many chains were used.
    pub fn process_tx(&mut self) -> usize {
        let Self {
            active: Some(active),
            muxer,
            scratch,
            metrics,
            tx_throttled,
            queue_evts,
            ..
        } = self
        else {
            return 0;
        };
        *tx_throttled = false;
        if active.interrupt.needs_reset() {
            return 0;
        }
        let mut used = 0;
        loop {
            // A queue's worth per call; the notification schedules the rest.
            if used >= usize::from(active.queues[TX].size()) {
                // A write to an eventfd fails only when its counter is full
                // (EAGAIN): it is signalled already.
                let _ = queue_evts[TX].write(1);
                break;
            }
            if muxer.control_full() {
                *tx_throttled = true;
                break;
            }
            let chain = match active.queues[TX].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    active.interrupt.set_needs_reset();
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let packet = Reader::new(&active.mem, chain).ok().and_then(|mut r| {
                let mut hdr = [0u8; HDR_LEN];
                r.read_exact(&mut hdr).ok()?;
                let h = Header::from_bytes(&hdr);
                let len = h.len as usize;
                if len > MAX_PAYLOAD || len > r.available_bytes() {
                    return None;
                }
                r.read_exact(&mut scratch[..len]).ok()?;
                Some((h, len))
            });
            match packet {
                Some((h, len)) => {
                    metrics.tx_packets.fetch_add(1, Ordering::Relaxed);
                    muxer.handle_guest(h, &scratch[..len]);
                }
                None => {
                    metrics.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if active.queues[TX].add_used(&active.mem, head, 0).is_err() {
                active.interrupt.set_needs_reset();
                break;
            }
            used += 1;
        }
        if used > 0 {
            active.notify(TX);
        }
        used
    }

    /// Fills rx buffers: control packets first, then data from the host
    /// sockets that have some, within each guest socket's credit. Returns
    /// true when something is left for lack of rx buffers.
    pub fn process_rx(&mut self) -> bool {
        let Self {
            active: Some(active),
            muxer,
            scratch,
            metrics,
            tick,
            ..
        } = self
        else {
            return false;
        };
        if active.interrupt.needs_reset() {
            return false;
        }
        let mut delivered = 0;
        let mut starved = false;
        loop {
            // The ready connection served longest ago goes first.
            let ready = muxer
                .conns
                .iter()
                .filter(|(_, c)| c.ready_for_guest())
                .min_by_key(|(_, c)| c.served_at)
                .map(|(k, _)| *k);
            if muxer.control.is_empty() && ready.is_none() {
                break;
            }
            let chain = match active.queues[RX].iter(&active.mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    active.interrupt.set_needs_reset();
                    break;
                }
            };
            let Some(chain) = chain else {
                starved = true;
                break;
            };
            let head = chain.head_index();
            let fill = match Writer::new(&active.mem, chain) {
                // Room for a header (and, for data, a byte): anything less
                // is the guest's loss, used empty, and nothing is consumed.
                Ok(mut w)
                    if w.available_bytes() > HDR_LEN || {
                        w.available_bytes() == HDR_LEN && !muxer.control.is_empty()
                    } =>
                {
                    if let Some(h) = muxer.control.pop_front() {
                        match w.write_all(&h.to_bytes()) {
                            Ok(()) => Fill::Used(HDR_LEN as u32),
                            Err(_) => Fill::Used(0),
                        }
                    } else if let Some(key) = ready {
                        *tick += 1;
                        if let Some(c) = muxer.conns.get_mut(&key) {
                            c.served_at = *tick;
                        }
                        read_data(muxer, key, &mut w, scratch)
                    } else {
                        Fill::Rewind
                    }
                }
                _ => Fill::Used(0),
            };
            let len = match fill {
                Fill::Rewind => {
                    // read_data changed the connection's state (not
                    // readable, at end, or gone), so this can't repeat.
                    active.queues[RX].go_to_previous_position();
                    continue;
                }
                Fill::Used(n) => n,
            };
            if len == 0 {
                metrics.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
            }
            if active.queues[RX].add_used(&active.mem, head, len).is_err() {
                active.interrupt.set_needs_reset();
                break;
            }
            delivered += 1;
        }
        if delivered > 0 {
            active.notify(RX);
        }
        starved
    }
}

/// Reads what fits (chain, credit, payload limit) from the host socket of
/// `key` and writes it, with its header, into `w`.
fn read_data(muxer: &mut Muxer, key: Key, w: &mut Writer<'_>, buf: &mut [u8]) -> Fill {
    let cid = muxer.cid();
    let Some(conn) = muxer.conns.get_mut(&key) else {
        return Fill::Rewind;
    };
    let room = w.available_bytes().saturating_sub(HDR_LEN);
    let max = room.min(conn.peer_credit() as usize).min(buf.len());
    match conn.read(&mut buf[..max]) {
        Ok(Some(0)) => {
            muxer.host_closed(key, false);
            Fill::Rewind
        }
        Err(_) => {
            muxer.host_closed(key, true);
            Fill::Rewind
        }
        Ok(None) => {
            conn.readable = false;
            Fill::Rewind
        }
        Ok(Some(n)) => {
            conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
            conn.fwd_cnt_told = conn.fwd_cnt;
            let h = Header {
                src_cid: HOST_CID,
                dst_cid: cid,
                src_port: key.0,
                dst_port: key.1,
                len: n as u32,
                kind: TYPE_STREAM,
                op: OP_RW,
                flags: 0,
                buf_alloc: super::connection::BUF_ALLOC,
                fwd_cnt: conn.fwd_cnt,
            };
            muxer
                .metrics()
                .rx_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            let written = w
                .write_all(&h.to_bytes())
                .and_then(|()| w.write_all(&buf[..n]));
            Fill::Used(if written.is_ok() {
                (HDR_LEN + n) as u32
            } else {
                0
            })
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.muxer.cid().to_le_bytes(), offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(mem, queues, interrupt, 3)?);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.muxer.clear();
        // Runs on a vCPU thread: wake the device loop, which closes the
        // host sockets (after unwatching them). A write fails only when
        // the counter is full (EAGAIN): the loop is woken already.
        let _ = self.queue_evts[EVENT].write(1);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
