//! A watchdog for the QEMU test host. Now and then (2 of some 20 CI runs,
//! then twice in one run) the test host stopped dead in the middle of a
//! test that runs nested VMs: QEMU at 0% CPU, the vCPU halted with
//! interrupts enabled, no timer ever firing again inside it. QEMU's view
//! of it (`info lapic`) showed why: the one-shot LAPIC timer had expired
//! and its vector sat in the IRR, deliverable (above the PPR), yet never
//! delivered. TCG lost the interrupt request somewhere in its nested SVM
//! emulation, and nothing re-evaluates the APIC until another interrupt
//! arrives. An NMI did not help (it bypasses that path).
//!
//! So the watchdog hands the test host another interrupt whenever it has
//! been idle for a few seconds: a key press on the PS/2 keyboard (`sendkey`
//! through QEMU's monitor), which goes through the IOAPIC to the local
//! APIC and makes QEMU deliver whatever is pending. The guest's keyboard
//! driver takes the key; nothing reads the VT it goes to. A test host still
//! idle over a long window despite that is reported as hung (with QEMU's
//! view of its vCPUs and APICs), so the run is retried (or fails) in
//! minutes instead of at the 40-minute deadline.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the watchdog judges the test host.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A test host that used less CPU than `nudge_below` over the last
    /// `nudge_every` gets a key press.
    pub nudge_every: Duration,
    pub nudge_below: Duration,
    /// One that used less than `hung_below` over `hung_window` is hung.
    pub hung_window: Duration,
    pub hung_below: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nudge_every: Duration::from_secs(5),
            nudge_below: Duration::from_millis(100),
            hung_window: Duration::from_secs(90),
            hung_below: Duration::from_millis(1100),
        }
    }
}

/// What a check found.
pub enum Verdict {
    /// The test host is working (or has not been watched long enough).
    Running,
    /// It was idle and has just been given a key press; the first nudge
    /// of an idle spell says so (later ones of the same spell are quiet).
    Nudged(Option<String>),
    /// It stayed idle over the whole hung window in spite of the nudges.
    Hung(String),
}

pub struct Watch {
    pid: u32,
    monitor: PathBuf,
    limits: Limits,
    samples: VecDeque<(Instant, Duration)>,
    /// When the last nudge was considered, and QEMU's CPU time then.
    last_nudge: Option<(Instant, Duration)>,
    /// Nudges since the test host last worked.
    spell: u32,
}

impl Watch {
    pub fn new(pid: u32, monitor: &Path) -> Self {
        Self::with_limits(pid, monitor, Limits::default())
    }

    fn with_limits(pid: u32, monitor: &Path, limits: Limits) -> Self {
        Self {
            pid,
            monitor: monitor.to_path_buf(),
            limits,
            samples: VecDeque::new(),
            last_nudge: None,
            spell: 0,
        }
    }

    /// Samples QEMU's CPU time; nudges a test host that has been idle for
    /// a few seconds, and reports one idle for the whole hung window.
    pub fn check(&mut self) -> Verdict {
        let now = Instant::now();
        let Some(cpu) = cpu_time(self.pid) else {
            return Verdict::Running;
        };
        self.samples.push_back((now, cpu));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.limits.hung_window)
        {
            self.samples.pop_front();
        }
        if let Some(&(since, used_then)) = self.samples.front() {
            let used = cpu.saturating_sub(used_then);
            if now.duration_since(since) >= self.limits.hung_window && used < self.limits.hung_below
            {
                self.samples.clear();
                return Verdict::Hung(format!(
                    "the test host has been idle for {}s (QEMU used {:.1}s of CPU) in spite of \
                     {} key presses: an interrupt lost under TCG.\n{}",
                    now.duration_since(since).as_secs(),
                    used.as_secs_f64(),
                    self.spell,
                    self.vcpus()
                ));
            }
        }
        let Some((at, used_then)) = self.last_nudge else {
            self.last_nudge = Some((now, cpu));
            return Verdict::Running;
        };
        if now.duration_since(at) < self.limits.nudge_every {
            return Verdict::Running;
        }
        self.last_nudge = Some((now, cpu));
        if cpu.saturating_sub(used_then) >= self.limits.nudge_below {
            self.spell = 0;
            return Verdict::Running;
        }
        // The first nudge of a spell shows where the vCPUs were (and
        // whether an interrupt was pending), before the key press.
        let report = (self.spell == 0).then(|| {
            format!(
                "the test host has been idle for {}s (QEMU used {:.2}s of CPU): a key press \
                 nudges it.\n{}",
                self.limits.nudge_every.as_secs(),
                cpu.saturating_sub(used_then).as_secs_f64(),
                monitor(&self.monitor, &["info registers", "info lapic"])
            )
        });
        self.spell += 1;
        let said = monitor(&self.monitor, &["sendkey shift"]);
        if said.starts_with("(QEMU's monitor did not answer") {
            return Verdict::Nudged(Some(said));
        }
        Verdict::Nudged(report)
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
                let _ = conn.write_all(b"(qemu) i\x1b[K\x1b[Dinfo\nIRR\t 236\n");
            }
        });
        (path, rx)
    }

    fn limits() -> Limits {
        Limits {
            nudge_every: Duration::from_millis(200),
            nudge_below: Duration::from_millis(50),
            hung_window: Duration::from_millis(1500),
            hung_below: Duration::from_millis(100),
        }
    }

    /// Checks `pid` every 50 ms for `for_ms`; the verdicts other than
    /// running, in order, stopping at the first hang.
    fn verdicts(pid: u32, monitor: &Path, for_ms: u64, limits: Limits) -> Vec<String> {
        let mut w = Watch::with_limits(pid, monitor, limits);
        let until = Instant::now() + Duration::from_millis(for_ms);
        let mut found = Vec::new();
        while Instant::now() < until {
            match w.check() {
                Verdict::Running => {}
                Verdict::Nudged(r) => found.push(format!("nudged: {}", r.unwrap_or_default())),
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
    fn an_idle_process_gets_key_presses_then_is_reported_hung() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (monitor, asked) = fake_monitor(dir.path());
        let idle = spawn_sh("exec sleep 30");
        let found = verdicts(idle.id(), &monitor, 4000, limits());
        stop(idle);
        let hung = found.last().expect("verdicts");
        assert!(
            hung.starts_with("hung: ") && hung.contains("key presses"),
            "{found:?}"
        );
        let nudges = &found[..found.len() - 1];
        assert!(nudges.len() >= 3, "{found:?}");
        // The first of the spell shows the APIC, without the echo; the
        // others are quiet.
        assert!(nudges[0].contains("IRR\t 236"), "{found:?}");
        assert!(!nudges[0].contains('\u{1b}'), "{found:?}");
        assert!(nudges[1..].iter().all(|n| n == "nudged: "), "{found:?}");
        let asked: Vec<String> = asked.try_iter().collect();
        let keys = asked
            .iter()
            .filter(|c| c.lines().any(|l| l == "sendkey shift"));
        assert_eq!(keys.count(), nudges.len(), "{asked:?}");
    }

    #[test]
    fn a_process_that_works_is_never_nudged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (monitor, asked) = fake_monitor(dir.path());
        let busy = spawn_sh("while :; do :; done");
        let found = verdicts(busy.id(), &monitor, 1500, limits());
        stop(busy);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(asked.try_iter().count(), 0);
    }

    #[test]
    fn one_that_works_again_after_a_nudge_is_not_hung_and_starts_a_new_spell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (monitor, _asked) = fake_monitor(dir.path());
        // Idle, busy, idle again.
        let p = spawn_sh("sleep 0.6; i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30");
        let patient = Limits {
            hung_window: Duration::from_secs(10),
            ..limits()
        };
        let found = verdicts(p.id(), &monitor, 3000, patient);
        stop(p);
        assert!(!found.iter().any(|f| f.starts_with("hung")), "{found:?}");
        let reports = found.iter().filter(|f| f.contains("IRR")).count();
        assert!(reports >= 2, "a report for each idle spell: {found:?}");
    }
}
