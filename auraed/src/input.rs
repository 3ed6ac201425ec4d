//! A process's stdin: `/dev/null`, a pipe that `Input` writes to, or a
//! pseudo-terminal whose master auraed holds (the process's stdin, stdout,
//! stderr and controlling terminal; its output is read from the master).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// What a process's stdin is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StdinMode {
    #[default]
    Null,
    /// A pipe, written through [`Input`].
    Pipe,
    /// A terminal: stdin, stdout and stderr, and the controlling terminal.
    Terminal,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("its stdin is closed")]
    Closed,
    #[error("it has no terminal to resize (it was started without tty)")]
    NoTerminal,
    #[error("writing to its stdin")]
    Write(#[source] io::Error),
    #[error("resizing its terminal (TIOCSWINSZ)")]
    Resize(#[source] io::Error),
}

/// The master side of a process's terminal.
pub struct Terminal {
    master: AsyncFd<OwnedFd>,
}

impl Terminal {
    /// A terminal from its master (see `sys::pty::open_pair`).
    pub fn from_master(master: OwnedFd) -> io::Result<Arc<Terminal>> {
        Ok(Arc::new(Terminal {
            master: crate::sys::pollable(master)?,
        }))
    }

    /// A reader of what the process writes to its terminal (EOF once no
    /// process has it open any more).
    pub fn reader(self: &Arc<Self>) -> TerminalReader {
        TerminalReader(self.clone())
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.master.writable().await?;
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Reads a [`Terminal`]'s master.
pub struct TerminalReader(Arc<Terminal>);

impl AsyncRead for TerminalReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = match self.0.master.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last slave closed: the terminal's end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Where `Input` writes: a pipe or a terminal, until closed.
enum Sink {
    Pipe(tokio::net::unix::pipe::Sender),
    Terminal(Arc<Terminal>),
}

/// A process's writable stdin.
pub struct Input {
    sink: tokio::sync::Mutex<Option<Sink>>,
    terminal: Option<Arc<Terminal>>,
}

impl Input {
    pub fn pipe(write_end: OwnedFd) -> io::Result<Input> {
        let sender = tokio::net::unix::pipe::Sender::from_owned_fd(write_end)?;
        Ok(Input {
            sink: tokio::sync::Mutex::new(Some(Sink::Pipe(sender))),
            terminal: None,
        })
    }

    pub fn terminal(t: Arc<Terminal>) -> Input {
        Input {
            sink: tokio::sync::Mutex::new(Some(Sink::Terminal(t.clone()))),
            terminal: Some(t),
        }
    }

    /// Writes all of `data`.
    pub async fn write(&self, data: &[u8]) -> Result<(), InputError> {
        let mut sink = self.sink.lock().await;
        let r = match sink.as_mut() {
            None => return Err(InputError::Closed),
            Some(Sink::Pipe(p)) => p.write_all(data).await,
            Some(Sink::Terminal(t)) => t.write_all(data).await,
        };
        r.map_err(|e| {
            // A pipe whose reader is gone, a terminal no process has open.
            if e.kind() == io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO) {
                InputError::Closed
            } else {
                InputError::Write(e)
            }
        })
    }

    /// Closes stdin: the pipe's write end, or, on a terminal (which can't
    /// be half-closed), an end-of-file character for the line discipline.
    pub async fn close(&self) -> Result<(), InputError> {
        let mut sink = self.sink.lock().await;
        if let Some(Sink::Terminal(t)) = sink.as_ref() {
            // VEOF (^D), at the start of a line as the line discipline wants.
            t.write_all(b"\x04").await.map_err(InputError::Write)?;
        }
        *sink = None;
        Ok(())
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), InputError> {
        let t = self.terminal.as_ref().ok_or(InputError::NoTerminal)?;
        crate::sys::pty::set_size(t.master.get_ref().as_fd(), cols, rows)
            .map_err(InputError::Resize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_pipe_input_writes_then_closes() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let input = Input::pipe(w).expect("input");
        input.write(b"hello").await.expect("write");
        input.close().await.expect("close");
        assert!(matches!(
            input.write(b"more").await,
            Err(InputError::Closed)
        ));
        assert!(matches!(input.resize(80, 24), Err(InputError::NoTerminal)));
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut got).expect("read");
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn a_terminal_echoes_input_and_reads_eof_once_the_slave_is_gone() {
        let (master, slave) = crate::sys::pty::open_pair(Path::new("/")).expect("a pty");
        let t = Terminal::from_master(master).expect("terminal");
        let input = Input::terminal(t.clone());
        input.write(b"typed\n").await.expect("write");
        input.resize(120, 30).expect("resize");
        let mut reader = t.reader();
        let mut buf = [0u8; 64];
        let n = reader.read(&mut buf).await.expect("read");
        // The line discipline echoes what was typed.
        assert!(buf[..n].starts_with(b"typed"), "{:?}", &buf[..n]);
        drop(slave);
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            reader.read_to_end(&mut rest),
        )
        .await
        .expect("EOF in time")
        .expect("read to EOF");
    }
}
