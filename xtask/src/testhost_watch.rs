//! A watchdog for the QEMU test host. Now and then (2 of some 20 CI runs,
//! then twice in one run) the test host stopped dead in the middle of a
//! test: QEMU at 0% CPU, every vCPU halted with interrupts enabled, no
//! console output, no timer ever firing again inside it, not even the
//! tests' own timeouts. That is a timer wakeup lost under TCG, not a test
//! that takes long: a running test host always uses some CPU.
//!
//! The watchdog notices a test host that has been idle for a minute. It
//! prints QEMU's view of the vCPUs and their local APICs (whether a timer
//! is armed, whether an interrupt is pending), then nudges the test host
//! with an NMI on every vCPU: a vCPU thread that missed its wakeup is woken
//! and takes the interrupt it had pending, and the guest only logs an NMI
//! of unknown reason. A test host still idle a minute after the nudge is
//! reported as hung, so the run is retried (or fails) in minutes instead of
//! at the 30-minute deadline.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the test host must be idle before it is nudged, and again
/// after the nudge to count as hung.
const WINDOW: Duration = Duration::from_secs(60);
/// Less CPU than this over the window is idle.
const IDLE_CPU: Duration = Duration::from_millis(750);

/// What a check found.
pub enum Verdict {
    /// The test host is working (or has not been watched long enough).
    Running,
    /// It was idle for the window and has just been nudged; the report says
    /// where its vCPUs were.
    Nudged(String),
    /// It stayed idle after a nudge.
    Hung(String),
}

pub struct Watch {
    pid: u32,
    monitor: PathBuf,
    samples: VecDeque<(Instant, Duration)>,
    window: Duration,
    idle_cpu: Duration,
    /// Set by a nudge; cleared when the test host works again.
    nudged: bool,
}

impl Watch {
    pub fn new(pid: u32, monitor: &Path) -> Self {
        Self::with_limits(pid, monitor, WINDOW, IDLE_CPU)
    }

    fn with_limits(pid: u32, monitor: &Path, window: Duration, idle_cpu: Duration) -> Self {
        Self {
            pid,
            monitor: monitor.to_path_buf(),
            samples: VecDeque::new(),
            window,
            idle_cpu,
            nudged: false,
        }
    }

    /// Samples QEMU's CPU time; nudges a test host idle for the whole
    /// window, and reports one that stays idle after its nudge.
    pub fn check(&mut self) -> Verdict {
        let now = Instant::now();
        let Some(cpu) = cpu_time(self.pid) else {
            return Verdict::Running;
        };
        self.samples.push_back((now, cpu));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let Some(&(since, used_then)) = self.samples.front() else {
            return Verdict::Running;
        };
        let used = cpu.saturating_sub(used_then);
        if now.duration_since(since) < self.window || used >= self.idle_cpu {
            if used >= self.idle_cpu {
                self.nudged = false;
            }
            return Verdict::Running;
        }
        let what = format!(
            "the test host has been idle for {}s (QEMU used {:.1}s of CPU)",
            now.duration_since(since).as_secs(),
            used.as_secs_f64(),
        );
        // The next verdict needs a whole window of its own.
        self.samples.clear();
        self.samples.push_back((now, cpu));
        if self.nudged {
            return Verdict::Hung(format!(
                "{what} even after an NMI: a lost timer wakeup under TCG.\n{}",
                self.vcpus()
            ));
        }
        let report = format!("{what}: nudging its vCPUs with an NMI.\n{}", self.vcpus());
        self.nudged = true;
        let said = monitor(&self.monitor, &["nmi"]);
        Verdict::Nudged(format!("{report}\n{said}"))
    }

    /// QEMU's view of every vCPU and of both local APICs.
    fn vcpus(&self) -> String {
        monitor(
            &self.monitor,
            &[
                "info registers -a",
                "cpu 0",
                "info lapic",
                "cpu 1",
                "info lapic",
            ],
        )
    }
}

/// User plus system CPU time of process `pid`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)? as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// Asks QEMU's human monitor `commands` in turn; returns what it said
/// (bounded), without the echo of what was typed.
fn monitor(path: &Path, commands: &[&str]) -> String {
    let ask = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        for c in commands {
            s.write_all(format!("{c}\n").as_bytes())?;
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && out.len() < 128 << 10 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        Ok(without_echo(&String::from_utf8_lossy(&out)))
    };
    match ask() {
        Ok(text) => format!("QEMU monitor, {}:\n{text}", commands.join("; ")),
        Err(e) => format!("(QEMU's monitor did not answer: {e})"),
    }
}

/// The monitor's output without the lines where it echoed typed commands
/// (redrawn with terminal escapes at every key).
fn without_echo(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains('\u{1b}'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for QEMU's monitor: answers every connection with an
    /// echo line and a register line, and keeps the commands it was sent.
    fn fake_monitor(dir: &Path) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
        let path = dir.join("monitor.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                let _ = conn.write_all(b"(qemu) i\x1b[K\x1b[Dinfo\nRIP=ffffffff8140e3eb HLT=1\n");
            }
        });
        (path, rx)
    }

    /// Checks `pid` every 50 ms for `for_ms`; the verdicts other than
    /// running, in order, stopping at the first hang.
    fn verdicts(pid: u32, monitor: &Path, for_ms: u64) -> Vec<String> {
        let mut w = Watch::with_limits(
            pid,
            monitor,
            Duration::from_millis(400),
            Duration::from_millis(100),
        );
        let until = Instant::now() + Duration::from_millis(for_ms);
        let mut found = Vec::new();
        while Instant::now() < until {
            match w.check() {
                Verdict::Running => {}
                Verdict::Nudged(r) => found.push(format!("nudged: {r}")),
                Verdict::Hung(r) => {
                    found.push(format!("hung: {r}"));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        found
    }

    fn spawn_sh(script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .expect("sh")
    }

    fn stop(mut child: std::process::Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn an_idle_process_is_nudged_through_the_monitor_then_reported_hung() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (monitor, asked) = fake_monitor(dir.path());
        let idle = spawn_sh("exec sleep 30");
        let found = verdicts(idle.id(), &monitor, 4000);
        stop(idle);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("nudged: ") && found[0].contains("idle"),
            "{found:?}"
        );
        assert!(found[0].contains("RIP=ffffffff8140e3eb"), "{found:?}");
        assert!(
            !found[0].contains('\u{1b}'),
            "the echo is left out: {found:?}"
        );
        assert!(
            found[1].starts_with("hung: ") && found[1].contains("even after an NMI"),
            "{found:?}"
        );
        let asked: Vec<String> = asked.try_iter().collect();
        assert!(
            asked.iter().any(|c| c.lines().any(|l| l == "nmi")),
            "{asked:?}"
        );
        assert!(asked.iter().any(|c| c.contains("info lapic")), "{asked:?}");
    }

    #[test]
    fn a_process_that_works_after_its_nudge_is_not_reported_hung() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (monitor, _asked) = fake_monitor(dir.path());
        let woken = spawn_sh("sleep 0.5; while :; do :; done");
        let found = verdicts(woken.id(), &monitor, 3000);
        stop(woken);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("nudged: "), "{found:?}");
    }

    #[test]
    fn a_busy_process_is_never_nudged() {
        let busy = spawn_sh("while :; do :; done");
        let found = verdicts(busy.id(), Path::new("/nonexistent/monitor.sock"), 1500);
        stop(busy);
        assert!(found.is_empty(), "{found:?}");
    }
}
