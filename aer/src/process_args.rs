//! The options of a process (`aer exec`, `aer cell run`): its environment,
//! ids, whether to wait for it, and whether to give it our stdin.

use aurae_proto::runtime as pb;
use clap::Args;
use tokio::io::AsyncReadExt;

#[derive(Args, Debug, Clone, Default)]
pub struct ProcessArgs {
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Supplementary groups (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// Stream the output and exit with the workload's exit code.
    #[arg(long, short)]
    pub wait: bool,
    /// Pass our stdin to the process (it reads /dev/null otherwise), its
    /// end closing the process's; implies --wait.
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// The command and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl ProcessArgs {
    /// The process as the API takes it; a malformed `--env` is named.
    pub fn executable(&self) -> Result<pb::Executable, String> {
        let env = self
            .env
            .iter()
            .map(|kv| {
                let (name, value) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
                Ok(pb::EnvVar {
                    name: name.into(),
                    value: value.into(),
                })
            })
            .collect::<Result<_, String>>()?;
        let mut cmd = self.command.iter();
        Ok(pb::Executable {
            command: cmd.next().cloned().unwrap_or_default(),
            args: cmd.cloned().collect(),
            env,
            cwd: self.cwd.clone().unwrap_or_default(),
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            stdin: self.stdin,
            ..Default::default()
        })
    }

    /// Whether to follow the output and exit with the process's code.
    pub fn waits(&self) -> bool {
        self.wait || self.stdin
    }
}

/// Sends our stdin to executable `id` (an `Input` call), closing its stdin
/// at our end of file. Runs until then; a refusal is returned.
pub async fn send_stdin(
    mut client: crate::client::Client,
    id: String,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::InputRequest>(4);
    let reader = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let m = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => pb::InputRequest {
                    close: true,
                    ..Default::default()
                },
                Ok(n) => pb::InputRequest {
                    data: buf[..n].to_vec(),
                    ..Default::default()
                },
            };
            let last = m.close;
            if tx.send(m).await.is_err() || last {
                return;
            }
        }
    });
    let first = pb::InputRequest {
        id,
        ..Default::default()
    };
    let requests = tokio_stream::StreamExt::chain(
        tokio_stream::iter([first]),
        tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    let answer = client.input(requests).await;
    reader.abort();
    answer.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_checked_and_stdin_implies_waiting() {
        let mut p = ProcessArgs {
            env: vec!["A=1".into()],
            command: vec!["cat".into(), "-".into()],
            stdin: true,
            ..Default::default()
        };
        let e = p.executable().expect("valid");
        assert_eq!(
            (e.command.as_str(), e.args.len(), e.stdin),
            ("cat", 1, true)
        );
        assert!(p.waits());
        p.env.push("broken".into());
        assert!(p
            .executable()
            .expect_err("refused")
            .contains("--env \"broken\""));
    }
}
