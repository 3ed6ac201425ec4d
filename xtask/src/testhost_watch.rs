//! A watchdog for the QEMU test host. Now and then (2 of some 20 CI runs)
//! the test host stopped dead in the middle of a test: QEMU at 0% CPU, no
//! console output, no timer ever firing again inside it, not even the
//! tests' own timeouts. That is a timer wakeup lost under TCG, not a test
//! that takes long: a running test host always uses some CPU. The watchdog
//! notices a test host that has been idle for two minutes, asks QEMU's
//! monitor where its vCPUs are, and reports it, so the run fails (or is
//! retried) in minutes instead of at the 30-minute deadline.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the test host must be idle to count as hung.
const WINDOW: Duration = Duration::from_secs(120);
/// Less CPU than this over the window is idle.
const IDLE_CPU: Duration = Duration::from_millis(1500);

pub struct Watch {
    pid: u32,
    monitor: PathBuf,
    samples: VecDeque<(Instant, Duration)>,
    window: Duration,
    idle_cpu: Duration,
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
        }
    }

    /// Samples QEMU's CPU time; returns a report if the test host has been
    /// idle for the whole window.
    pub fn check(&mut self) -> Option<String> {
        let now = Instant::now();
        let cpu = cpu_time(self.pid)?;
        self.samples.push_back((now, cpu));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let (since, used_then) = *self.samples.front()?;
        if now.duration_since(since) < self.window || cpu.saturating_sub(used_then) >= self.idle_cpu
        {
            return None;
        }
        Some(format!(
            "the test host has been idle for {}s (QEMU used {:.1}s of CPU): a lost timer wakeup under TCG.\n{}",
            now.duration_since(since).as_secs(),
            cpu.saturating_sub(used_then).as_secs_f64(),
            monitor(&self.monitor, "info registers -a")
        ))
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

/// Asks QEMU's human monitor `command`; returns what it said (bounded).
fn monitor(path: &Path, command: &str) -> String {
    let ask = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && out.len() < 64 << 10 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match ask() {
        Ok(text) => format!("QEMU monitor, {command}:\n{text}"),
        Err(e) => format!("(QEMU's monitor did not answer: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `pid` every 50 ms for `for_ms`; whether it was reported idle.
    fn reported(pid: u32, for_ms: u64) -> Option<String> {
        let mut w = Watch::with_limits(
            pid,
            Path::new("/nonexistent/monitor.sock"),
            Duration::from_millis(300),
            Duration::from_millis(100),
        );
        let until = Instant::now() + Duration::from_millis(for_ms);
        let mut report = None;
        while Instant::now() < until && report.is_none() {
            report = w.check();
            std::thread::sleep(Duration::from_millis(50));
        }
        report
    }

    #[test]
    fn an_idle_process_is_reported_and_a_busy_one_is_not() {
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let report = reported(idle.id(), 1500);
        let _ = idle.kill();
        let _ = idle.wait();
        let report = report.expect("the sleeping process is reported");
        assert!(report.contains("idle"), "{report}");
        assert!(report.contains("monitor did not answer"), "{report}");

        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh");
        let report = reported(busy.id(), 1500);
        let _ = busy.kill();
        let _ = busy.wait();
        assert!(report.is_none(), "{report:?}");
    }
}
