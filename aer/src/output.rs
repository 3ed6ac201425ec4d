//! Rendering workload statuses as tables or JSON.

use aurae_proto::runtime as pb;
use serde_json::{json, Value};

fn kind(s: &pb::WorkloadStatus) -> &'static str {
    match pb::WorkloadKind::try_from(s.kind) {
        Ok(pb::WorkloadKind::Executable) => "executable",
        Ok(pb::WorkloadKind::Cell) => "cell",
        _ => "unknown",
    }
}

fn state(s: &pb::WorkloadStatus) -> &'static str {
    match pb::WorkloadState::try_from(s.state) {
        Ok(pb::WorkloadState::Running) => "running",
        Ok(pb::WorkloadState::Exited) => "exited",
        Ok(pb::WorkloadState::Frozen) => "frozen",
        Ok(pb::WorkloadState::Stopped) => "stopped",
        _ => "unknown",
    }
}

fn rfc3339(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.to_string()),
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
    })
}

/// A plain aligned table.
pub fn table(rows: &[pb::WorkloadStatus]) -> String {
    let header = ["ID", "KIND", "STATE", "CELL", "PID", "EXIT", "COMMAND"];
    let body: Vec<[String; 7]> = rows
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                kind(s).to_string(),
                state(s).to_string(),
                s.cell.clone(),
                s.pid.to_string(),
                exit_text(s),
                if s.command.is_empty() {
                    s.executables.join(",")
                } else {
                    s.command.join(" ")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
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

/// Key: value lines for one workload.
pub fn details(s: &pb::WorkloadStatus) -> String {
    let mut out = String::new();
    let v = status_json(s);
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                Value::Array(a) if a.is_empty() => continue,
                other => other.to_string(),
            };
            if text.is_empty() {
                continue;
            }
            out.push_str(&format!("{k}: {text}\n"));
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
}
