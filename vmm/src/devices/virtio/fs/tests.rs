//! The fs device on test memory: FUSE messages written as a driver writes
//! them, answered from a temporary folder.

use fs_memory::ByteValued;
use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ROOT_ID,
};

use super::Fs;
use crate::devices::virtio::test_utils::{TestQueue, WRITE};
use crate::devices::virtio::{VirtioDevice, TYPE_FS};

/// Where requests and replies go: one 16 KiB slot per request.
const SLOTS: u64 = 0x10000;
const REPLY_AT: u64 = 0x2000;

struct Harness {
    req: TestQueue,
    fs: Fs,
    sent: std::cell::Cell<u16>,
    _dir: tempfile::TempDir,
}

/// One of the ABI's structs as bytes.
fn bytes<T: ByteValued>(v: &T) -> Vec<u8> {
    v.as_slice().to_vec()
}

/// One of the ABI's structs from the start of `b` (zeroes past its end).
fn from_bytes<T: ByteValued + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = std::mem::size_of::<T>().min(b.len());
    v.as_mut_slice()[..n].copy_from_slice(&b[..n]);
    v
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").expect("file");
        let hi = TestQueue::new(16);
        let req = TestQueue::with_mem(hi.mem.clone(), 0x4000, 256);
        let mut fs = Fs::new("volumes", dir.path()).expect("fs");
        let irq = hi.interrupt();
        fs.activate(hi.mem.clone(), vec![hi.queue(), req.queue()], irq)
            .expect("activate");
        Self {
            req,
            fs,
            sent: std::cell::Cell::new(0),
            _dir: dir,
        }
    }

    /// Sends one message on the request queue; returns the reply's header
    /// and body, and the length the device reported.
    fn send(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (OutHeader, Vec<u8>, u32) {
        let pos = self.sent.get();
        self.sent.set(pos + 1);
        let at = SLOTS + u64::from(pos) * 0x4000;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: u64::from(pos) + 1,
            nodeid,
            ..Default::default()
        };
        let mut msg = bytes(&header);
        msg.extend_from_slice(body);
        self.req.write(at, &msg);
        self.req.add_chain(
            pos,
            &[(at, msg.len() as u32, 0), (at + REPLY_AT, 0x2000, WRITE)],
        );
        assert_eq!(self.fs.process_queue(1), 1);
        let (_, len) = self.req.used(pos);
        let reply = self.req.read(at + REPLY_AT, len as usize);
        let out: OutHeader = from_bytes(&reply);
        let body = reply
            .get(std::mem::size_of::<OutHeader>()..)
            .unwrap_or_default();
        (out, body.to_vec(), len)
    }

    fn init(&mut self) {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0x20000,
            flags: 0,
        };
        let (out, body, _) = self.send(Opcode::Init, 0, &bytes(&init));
        assert_eq!(out.error, 0);
        let init: InitOut = from_bytes(&body);
        assert_eq!(init.major, 7);
    }

    fn lookup(&mut self, parent: u64, name: &str) -> (OutHeader, EntryOut) {
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        let (out, body, _) = self.send(Opcode::Lookup, parent, &name);
        (out, from_bytes(&body))
    }
}

#[test]
fn the_config_space_carries_the_tag_and_one_request_queue() {
    let h = Harness::new();
    assert_eq!(h.fs.device_type(), TYPE_FS);
    let mut tag = [0u8; 36];
    h.fs.read_config(0, &mut tag);
    assert_eq!(&tag[..8], b"volumes\0");
    let mut n = [0u8; 4];
    h.fs.read_config(36, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1);
}

#[test]
fn a_file_of_the_folder_is_looked_up_opened_and_read() {
    let mut h = Harness::new();
    h.init();
    let (out, entry) = h.lookup(ROOT_ID, "hello.txt");
    assert_eq!(out.error, 0);
    assert_eq!(entry.attr.size, 20);
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let (out, body, _) = h.send(Opcode::Open, entry.nodeid, &bytes(&open));
    assert_eq!(out.error, 0);
    let opened: OpenOut = from_bytes(&body);
    let read = ReadIn {
        fh: opened.fh,
        size: 4096,
        ..Default::default()
    };
    let (out, body, len) = h.send(Opcode::Read, entry.nodeid, &bytes(&read));
    assert_eq!(out.error, 0);
    assert_eq!(body, b"hello from the host\n");
    assert_eq!(len as usize, std::mem::size_of::<OutHeader>() + 20);
}

#[test]
fn names_that_leave_the_folder_are_refused() {
    let mut h = Harness::new();
    h.init();
    // The root's parent is the root.
    let (out, entry) = h.lookup(ROOT_ID, "..");
    assert_eq!((out.error, entry.nodeid), (0, ROOT_ID));
    for name in ["../etc", "a/../../etc", "/etc"] {
        let (out, _) = h.lookup(ROOT_ID, name);
        assert_eq!(out.error, -libc::EINVAL, "{name}");
    }
    let (out, _) = h.lookup(ROOT_ID, "missing");
    assert_eq!(out.error, -libc::ENOENT);
}

#[test]
fn a_malformed_message_is_used_without_a_reply_and_the_device_goes_on() {
    let mut h = Harness::new();
    // A header shorter than FUSE's.
    let at = SLOTS;
    h.req.write(at, &[1, 2, 3]);
    h.req
        .add_chain(0, &[(at, 3, 0), (at + REPLY_AT, 0x100, WRITE)]);
    // A reply buffer outside guest memory.
    h.req
        .add_chain(1, &[(at, 3, 0), (0xffff_0000, 0x100, WRITE)]);
    h.sent.set(2);
    assert_eq!(h.fs.process_queue(1), 2);
    assert_eq!(h.req.used(0).1, 0);
    assert_eq!(h.req.used(1).1, 0);
    assert!(!h.fs.active_needs_reset());
    h.init();
}

#[test]
fn a_bad_tag_or_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(Fs::new("", dir.path()).is_err());
    assert!(Fs::new(&"t".repeat(37), dir.path()).is_err());
    let file = dir.path().join("f");
    std::fs::write(&file, b"").expect("file");
    assert!(matches!(
        Fs::new("t", &file),
        Err(super::FsError::NotFolder(_))
    ));
}
