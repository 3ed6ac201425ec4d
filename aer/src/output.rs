//! Rendering workload statuses as tables or JSON.

use aurae_proto::runtime as pb;
use serde_json::{json, Value};

use crate::text;

/// Widest COMMAND cell, in characters.
pub const MAX_COMMAND_WIDTH: usize = 60;
/// Widest ID and CELL cell: a valid name has at most 63 characters.
pub const MAX_NAME_WIDTH: usize = 64;
/// Widest of the other cells.
pub const MAX_CELL_WIDTH: usize = 40;

fn kind(s: &pb::WorkloadStatus) -> &'static str {
    match pb::WorkloadKind::try_from(s.kind) {
        Ok(pb::WorkloadKind::Executable) => "executable",
        Ok(pb::WorkloadKind::Cell) => "cell",
        Ok(pb::WorkloadKind::Instance) => "instance",
        Ok(pb::WorkloadKind::Pod) => "pod",
        Ok(pb::WorkloadKind::VirtualMachine) => "vm",
        _ => "unknown",
    }
}

/// A workload's state, as aer prints it.
pub fn state(s: &pb::WorkloadStatus) -> &'static str {
    match pb::WorkloadState::try_from(s.state) {
        Ok(pb::WorkloadState::Running) => "running",
        Ok(pb::WorkloadState::Exited) => "exited",
        Ok(pb::WorkloadState::Frozen) => "frozen",
        Ok(pb::WorkloadState::Stopped) => "stopped",
        _ => "unknown",
    }
}

/// Seconds of 0001-01-01T00:00:00Z and of 9999-12-31T23:59:59Z.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// RFC 3339 text of a timestamp in years 1 to 9999 with valid nanoseconds;
/// anything else the server sends is shown as its raw fields.
pub fn timestamp_text(t: &prost_types::Timestamp) -> String {
    if (MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos) {
        t.to_string()
    } else {
        format!(
            "invalid timestamp (seconds {}, nanos {})",
            t.seconds, t.nanos
        )
    }
}

fn rfc3339(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(timestamp_text(t)),
        None => Value::Null,
    }
}

/// The exit as text: "0", "signal 9", "signal 9 (oom-killed)" or "".
pub fn exit_text(s: &pb::WorkloadStatus) -> String {
    let mut text = match (s.exit_code, s.signal) {
        (Some(c), _) => c.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => String::new(),
    };
    if s.oom_killed {
        text.push_str(" (oom-killed)");
    }
    text
}

/// The exit status for aer that mirrors a workload's exit: its exit code,
/// or 128 + its signal number. Values no process can have (from a broken
/// server) give 1, never a success or a wrapped-around code.
pub fn process_exit_code(s: &pb::WorkloadStatus) -> i32 {
    match (s.exit_code, s.signal) {
        (Some(c), _) if (0..=255).contains(&c) => c,
        (Some(_), _) => 1,
        (None, Some(sig)) if (1..=127).contains(&sig) => 128 + sig,
        (None, Some(_)) => 1,
        _ => 0,
    }
}

pub fn status_json(s: &pb::WorkloadStatus) -> Value {
    json!({
        "id": s.id,
        "kind": kind(s),
        "state": state(s),
        "cell": s.cell,
        "pid": s.pid,
        "started_at": rfc3339(&s.started_at),
        "exited_at": rfc3339(&s.exited_at),
        "exit_code": s.exit_code,
        "signal": s.signal,
        "oom_killed": s.oom_killed,
        "command": s.command,
        "executables": s.executables,
        "cgroup": s.cgroup,
        "instance": s.instance.as_ref().map(instance_json),
        "pod": s.pod.as_ref().map(|p| crate::pod_args::pod_json(&s.id, p)),
        "vm": s.vm.as_ref().map(crate::vm_args::vm_json),
    })
}

/// A spawned instance, with all its fields.
pub fn instance_json(i: &pb::InstanceStatus) -> Value {
    let backend = match pb::SpawnBackend::try_from(i.backend) {
        Ok(pb::SpawnBackend::Microvm) => "microvm",
        Ok(pb::SpawnBackend::Cell) => "cell",
        _ => "unknown",
    };
    json!({
        "name": i.name,
        "spiffe_id": i.spiffe_id,
        "address": i.address,
        "backend": backend,
        "backend_reason": i.backend_reason,
        "boot_ms": i.boot_ms,
        "ready_ms": i.ready_ms,
        "children": i.children.iter().map(instance_json).collect::<Vec<_>>(),
        "networks": i
            .networks
            .iter()
            .map(|n| json!({"name": n.name, "bridge": n.bridge, "host_link": n.host_link}))
            .collect::<Vec<_>>(),
    })
}

/// A plain aligned table. Cells are escaped and cut (see [`text::cell`]);
/// `-o json` has the full values.
pub fn table(rows: &[pb::WorkloadStatus]) -> String {
    let header = ["ID", "KIND", "STATE", "CELL", "PID", "EXIT", "COMMAND"];
    let body: Vec<[String; 7]> = rows
        .iter()
        .map(|s| {
            let command = if s.command.is_empty() {
                s.executables.join(",")
            } else {
                s.command.join(" ")
            };
            [
                text::cell(&s.id, MAX_NAME_WIDTH),
                kind(s).to_string(),
                state(s).to_string(),
                text::cell(&s.cell, MAX_NAME_WIDTH),
                s.pid.to_string(),
                text::cell(&exit_text(s), MAX_CELL_WIDTH),
                text::cell(&command, MAX_COMMAND_WIDTH),
            ]
        })
        .collect();
    let mut widths = header.map(text::width);
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(text::width(c));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &body {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Key: value lines for one workload, in full, with control characters
/// escaped.
pub fn details(s: &pb::WorkloadStatus) -> String {
    let mut out = String::new();
    let v = status_json(s);
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            let value = match val {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                Value::Array(a) if a.is_empty() => continue,
                other => other.to_string(),
            };
            if value.is_empty() {
                continue;
            }
            out.push_str(&format!("{k}: {}\n", text::escape(&value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_shows_exits() {
        let s = pb::WorkloadStatus {
            id: "web".into(),
            kind: pb::WorkloadKind::Executable as i32,
            state: pb::WorkloadState::Exited as i32,
            signal: Some(9),
            oom_killed: true,
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        };
        let t = table(std::slice::from_ref(&s));
        assert!(t.starts_with("ID "));
        assert!(t.contains("signal 9 (oom-killed)"));
        assert_eq!(status_json(&s)["state"], "exited");
    }

    #[test]
    fn long_and_hostile_fields_make_short_escaped_lines() {
        let big = format!("/bin/sh -c exit {}", "y".repeat(90 * 1024));
        let s = pb::WorkloadStatus {
            id: "big".into(),
            kind: 999,
            state: -1,
            cell: "\x1b[31mred\n".repeat(50),
            exit_code: Some(i32::MIN),
            signal: Some(i32::MAX),
            command: vec![big.clone(), "\u{9b}2J\r\t".into()],
            started_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: -1,
            }),
            exited_at: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: i32::MIN,
            }),
            ..Default::default()
        };
        let t = table(std::slice::from_ref(&s));
        for line in t.lines() {
            assert!(text::width(line) < 300, "{line}");
        }
        assert!(t.contains("big  ") && t.contains("unknown"), "{t}");
        assert!(t.contains("\\x1b[31mred\\n"), "{t}");
        assert!(t.contains('…'));
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t}");
        let d = details(&s);
        assert!(d.contains("invalid timestamp (seconds 9223372036854775807, nanos -1)"));
        assert!(!d.chars().any(|c| c.is_control() && c != '\n'), "{d}");
        // JSON keeps the full values.
        assert_eq!(status_json(&s)["command"][0], big.as_str());
    }

    #[test]
    fn exit_codes_stay_in_range() {
        let code = |exit_code, signal| {
            process_exit_code(&pb::WorkloadStatus {
                exit_code,
                signal,
                ..Default::default()
            })
        };
        assert_eq!(code(Some(5), None), 5);
        assert_eq!(code(None, Some(9)), 137);
        assert_eq!(code(None, None), 0);
        assert_eq!(code(Some(256), None), 1);
        assert_eq!(code(Some(-1), None), 1);
        assert_eq!(code(None, Some(i32::MAX)), 1);
        assert_eq!(code(None, Some(0)), 1);
    }

    #[test]
    fn timestamps_in_range_are_rfc3339() {
        let t = |seconds, nanos| timestamp_text(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            t(MAX_SECONDS, 999_999_999),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(t(MIN_SECONDS, 0), "0001-01-01T00:00:00Z");
        assert!(t(MAX_SECONDS + 1, 0).starts_with("invalid timestamp"));
        assert!(t(0, 1_000_000_000).starts_with("invalid timestamp"));
        assert!(t(i64::MIN, i32::MIN).starts_with("invalid timestamp"));
    }
}
