//! `clone3`, fork-style and vfork-style.
//!
//! A fork-style clone copies auraed's page tables (and later pins a
//! copy-on-write snapshot of its memory); a vfork-style clone
//! (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does) shares auraed's memory
//! on a private stack and suspends the calling thread until the child has
//! executed a program or exited, which is several times cheaper. Its child
//! must only run raw syscalls on memory the caller prepared, must not touch
//! anything another thread may use, and must end in `execve` or `_exit`.

use std::io;

/// `struct clone_args` of `<linux/sched.h>` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), which needs a 64-bit flags word.
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The private stack of a vfork-style child.
const CHILD_STACK: usize = 128 * 1024;

pub(super) fn clone3(args: &mut CloneArgs) -> libc::c_long {
    // SAFETY: clone3 reads `args`, which lives on our stack and has the size
    // we pass. With a zero stack the child continues on a copy of this stack,
    // like fork(); the child only runs code that never returns and uses raw
    // syscalls only.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

/// The entry of a vfork-style child. It must never return.
pub(super) type ChildMain = extern "C" fn(arg: *const libc::c_void) -> !;

/// A guarded, page-aligned stack for a vfork-style child.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        let page = 4096;
        let len = CHILD_STACK + page;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to
        // it, and it is unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // The lowest page is a guard: an overflow faults instead of writing
        // into auraed's memory.
        // SAFETY: the first page of the mapping we own.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the child that
        // used it has exec'd or exited (CLONE_VFORK) by the time we get here.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Clones a child that shares our memory, on a private stack, and runs
/// `main(arg)` in it; the calling thread resumes once the child has exec'd or
/// exited. `args.flags` gets `CLONE_VM | CLONE_VFORK` added. Returns the
/// child's pid, or an error from the clone.
///
/// Every signal is blocked in the calling thread around the clone, so no
/// auraed signal handler can run in the child: `main` must reset the
/// handlers (see [`reset_signals`]) before it unblocks anything.
pub(super) fn clone3_vfork(
    args: &mut CloneArgs,
    main: ChildMain,
    arg: *const libc::c_void,
) -> io::Result<libc::c_long> {
    let stack = ChildStack::new()?;
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    args.stack = stack.base as u64;
    args.stack_size = stack.len as u64;
    // SAFETY: sigset_t is plain data; sigfillset initializes it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: fills and applies signal masks we own, for this thread only.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let ret: libc::c_long;
    // SAFETY: the clone3 syscall with `args` (on our stack, of the size we
    // pass). In the parent it returns like any syscall. The child starts on
    // the top of `stack` (kept alive until it has exec'd or exited, as
    // CLONE_VFORK suspends us until then), with r12 and r13 as the parent
    // had them: it clears the frame pointer and calls `main(arg)`, which
    // never returns (ud2 would trap if it did). The top of the mapping is
    // page-aligned, so the call leaves the ABI's stack alignment.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") main,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(stack);
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret)
}

/// In a freshly cloned child: every signal handler back to its default
/// (auraed's handlers must not run here), except ignored signals, which
/// stay ignored across exec as POSIX says; SIGPIPE, which the Rust runtime
/// ignores, back to its default. The mask is left as it is.
///
/// # Safety
/// Only for a child between clone and exec: it changes the process's
/// signal dispositions.
pub(super) unsafe fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            && old.sa_sigaction != libc::SIG_DFL
        {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
}
