//! The vsock device logic: packets between the virtqueues and the muxer.
//!
//! Queues: rx (host to guest), tx (guest to host), event (unused: the
//! device never migrates, so it never sends a transport reset).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::State;
use super::metrics::VsockMetrics;
use super::muxer::{Key, Muxer};
use super::packet::*;
use crate::devices::virtio::{
    read_config_bytes, serve_queue, ActivateError, Interrupt, VirtioDevice, F_VERSION_1, TYPE_VSOCK,
};

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

pub struct Vsock {
    pub(super) muxer: Muxer,
    pub(super) queue_evts: [EventFd; 3],
    pub(super) active: Option<Active>,
    /// Host sockets the event loop watches, and for what.
    pub(super) watched:
        std::collections::HashMap<std::os::fd::RawFd, vmm_sys_util::epoll::EventSet>,
    pub metrics: Arc<VsockMetrics>,
}

impl Vsock {
    /// A device for guest `cid` whose host side listens on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            muxer: Muxer::new(cid, uds_path, metrics.clone())?,
            queue_evts: [
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
            ],
            active: None,
            watched: Default::default(),
            metrics,
        })
    }

    /// Hands every packet the guest queued to the muxer. Returns how many
    /// chains were used.
    pub fn process_tx(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let (muxer, metrics, mem) = (&mut self.muxer, &self.metrics, &active.mem);
        let mut payload = vec![0u8; MAX_PAYLOAD];
        serve_queue(&mut active.queues[TX], mem, &active.interrupt, |chain| {
            let packet = Reader::new(mem, chain).ok().and_then(|mut r| {
                let mut hdr = [0u8; HDR_LEN];
                r.read_exact(&mut hdr).ok()?;
                let h = Header::from_bytes(&hdr);
                let len = h.len as usize;
                if len > MAX_PAYLOAD || len > r.available_bytes() {
                    return None;
                }
                r.read_exact(&mut payload[..len]).ok()?;
                Some((h, len))
            });
            match packet {
                Some((h, len)) => {
                    metrics.tx_packets.fetch_add(1, Ordering::Relaxed);
                    muxer.handle_guest(h, &payload[..len]);
                }
                None => {
                    metrics.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            0
        })
    }

    /// Fills rx buffers: control packets first, then data from the host
    /// sockets that have some, within each guest socket's credit. Returns
    /// true when something is left for lack of rx buffers.
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        if active.interrupt.needs_reset() {
            return false;
        }
        let mut delivered = 0;
        let mut starved = false;
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let ready = self
                .muxer
                .conns
                .iter()
                .find(|(_, c)| c.readable && c.state == State::Established && c.peer_credit() > 0)
                .map(|(k, _)| *k);
            if self.muxer.control.is_empty() && ready.is_none() {
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
            let Ok(mut w) = Writer::new(&active.mem, chain) else {
                // A chain the device can't write into: used, empty.
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if active.queues[RX].add_used(&active.mem, head, 0).is_err() {
                    active.interrupt.set_needs_reset();
                    break;
                }
                continue;
            };
            let written = if let Some(h) = self.muxer.control.pop_front() {
                w.write_all(&h.to_bytes()).ok().map(|_| HDR_LEN as u32)
            } else if let Some(key) = ready {
                match read_data(&mut self.muxer, key, &mut w, &mut buf) {
                    Some(n) => {
                        self.metrics
                            .rx_bytes
                            .fetch_add(n as u64 - HDR_LEN as u64, Ordering::Relaxed);
                        Some(n)
                    }
                    None => {
                        // Nothing was read after all (or the socket
                        // closed): the chain goes back for the next packet.
                        active.queues[RX].go_to_previous_position();
                        continue;
                    }
                }
            } else {
                None
            };
            if written.is_none() {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.metrics.rx_packets.fetch_add(1, Ordering::Relaxed);
            }
            if active.queues[RX]
                .add_used(&active.mem, head, written.unwrap_or(0))
                .is_err()
            {
                active.interrupt.set_needs_reset();
                break;
            }
            delivered += 1;
        }
        if delivered > 0
            && active.queues[RX]
                .needs_notification(&active.mem)
                .unwrap_or(true)
        {
            active.interrupt.signal_used_queue();
        }
        starved
    }
}

/// Reads what fits (chain, credit, payload limit) from the host socket of
/// `key` and writes it, with its header, into `w`. Returns the bytes
/// written, or None if nothing was (no data after all, end of stream, a
/// chain too small for a header).
fn read_data(muxer: &mut Muxer, key: Key, w: &mut Writer<'_>, buf: &mut [u8]) -> Option<u32> {
    let room = w
        .available_bytes()
        .checked_sub(HDR_LEN)
        .filter(|r| *r > 0)?;
    let cid = muxer.cid();
    let conn = muxer.conns.get_mut(&key)?;
    let max = room.min(conn.peer_credit() as usize).min(buf.len());
    match conn.read(&mut buf[..max]) {
        Ok(Some(0)) | Err(_) => {
            muxer.host_closed(key);
            None
        }
        Ok(None) => {
            conn.readable = false;
            None
        }
        Ok(Some(n)) => {
            conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
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
            conn.fwd_cnt_told = conn.fwd_cnt;
            w.write_all(&h.to_bytes()).ok()?;
            w.write_all(&buf[..n]).ok()?;
            Some((HDR_LEN + n) as u32)
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
        if queues.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.muxer.clear();
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }
    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
