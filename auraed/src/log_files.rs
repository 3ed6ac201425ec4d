//! Output a process writes to files rather than to auraed's pipes: a VM's
//! VMM, whose console and messages must outlive auraed so that a restarted
//! auraed can adopt the VM. Each file is read into a [`LogBuffer`] from its
//! start as it grows (inotify wakes the reader), until the writer has
//! exited and the file is read to its end.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::logs::{LogBuffer, Stream, MAX_LINE};

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("inotify_init1")]
    Init(#[source] nix::Error),
    #[error("inotify_add_watch on {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("registering the inotify fd with the reactor")]
    Register(#[source] std::io::Error),
    #[error("reading inotify events")]
    Events(#[source] nix::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Splits bytes into the buffer's lines: at each newline, and every
/// [`MAX_LINE`] bytes of a longer line.
pub struct Lines {
    stream: Stream,
    buffer: Arc<LogBuffer>,
    pending: Vec<u8>,
}

impl Lines {
    pub fn new(stream: Stream, buffer: Arc<LogBuffer>) -> Self {
        Self {
            stream,
            buffer,
            pending: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            self.buffer
                .push(self.stream, self.pending[start..start + pos].to_vec());
            start += pos + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.buffer
                .push_partial(self.stream, std::mem::replace(&mut self.pending, rest));
        }
    }

    /// Pushes what is held of a line, without its newline, at once.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.buffer
                .push_partial(self.stream, std::mem::take(&mut self.pending));
        }
    }

    /// Pushes a last line without its newline, if there is one.
    pub fn finish(mut self) {
        self.flush();
    }
}

/// A file being followed.
struct Followed {
    path: PathBuf,
    file: tokio::fs::File,
    lines: Lines,
}

/// How soon a polled file that just grew (or whose writer is starting) is
/// read again.
const FAST_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// How long a polled file's writer counts as starting.
const STARTING: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the files are read where the kernel has no inotify.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How files are followed.
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowOpts {
    /// Read every this often, without an inotify instance (a quiet file
    /// that many processes write, such as an instance's console: the
    /// per-user limit of inotify instances is small).
    pub poll: Option<std::time::Duration>,
    /// Start this many bytes before each file's end (its tail), not at its
    /// start.
    pub tail: Option<u64>,
    /// Empty a file once this much of it is read (its writer appends, so
    /// it goes on at the start; a line written in between may be lost).
    pub cap: Option<u64>,
}

/// Reads each of `files` into `buffer` (as its stream) from its start (or
/// its tail), then as it grows, until `exited` is true; then reads what is
/// left and returns. One inotify instance watches them all (the per-user
/// limit of instances is small); where inotify fails, or `opts.poll` asks,
/// the files are read every [`POLL`] (or `opts.poll`) instead.
pub async fn follow(
    files: Vec<(PathBuf, Stream)>,
    buffer: Arc<LogBuffer>,
    mut exited: watch::Receiver<bool>,
    opts: FollowOpts,
) -> Result<(), FollowError> {
    // Each file watched before its first read: nothing written after it is
    // missed.
    let watched = match opts.poll {
        Some(_) => Err(None),
        None => Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(FollowError::Init)
            .and_then(|i| {
                for (path, _) in &files {
                    i.add_watch(path, AddWatchFlags::IN_MODIFY)
                        .map_err(|source| FollowError::Watch {
                            path: path.clone(),
                            source,
                        })?;
                }
                Ok(i)
            })
            .map_err(Some),
    };
    // No inotify (a kernel without it, or the per-user limit of instances
    // or watches reached): the files are read every POLL instead.
    let inotify = match watched {
        Ok(i) => Some(i),
        Err(Some(e)) => {
            tracing::warn!("{e}: output files are read every {POLL:?} instead");
            None
        }
        Err(None) => None,
    };
    let poll = opts.poll.unwrap_or(POLL);
    let mut followed = Vec::with_capacity(files.len());
    for (path, stream) in files {
        let read_err = |source| FollowError::Read {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(read_err)?;
        if let Some(tail) = opts.tail {
            use tokio::io::AsyncSeekExt;
            let len = file.metadata().await.map_err(read_err)?.len();
            file.seek(std::io::SeekFrom::Start(len.saturating_sub(tail)))
                .await
                .map_err(read_err)?;
        }
        followed.push(Followed {
            path,
            file,
            lines: Lines::new(stream, buffer.clone()),
        });
    }
    let ready = inotify
        .as_ref()
        .map(|i| {
            i.as_fd()
                .try_clone_to_owned()
                .and_then(crate::sys::readable)
                .map_err(FollowError::Register)
        })
        .transpose()?;
    // Polled, a file is read often while its writer starts (whoever waits
    // for its first lines should not wait a whole `poll`) and while it
    // grows; an idle one less and less often, up to `poll`.
    let started = std::time::Instant::now();
    let mut interval = FAST_POLL;
    loop {
        let mut grew = false;
        for f in &mut followed {
            grew |= drain(&mut f.file, &mut f.lines, &f.path).await?;
            if let Some(cap) = opts.cap {
                empty_past(f, cap).await?;
            }
        }
        if *exited.borrow_and_update() {
            break;
        }
        interval = if grew || started.elapsed() < STARTING {
            FAST_POLL
        } else {
            (interval * 2).min(poll)
        };
        tokio::select! {
            r = changed(&inotify, &ready, interval) => r?,
            // The writer exited (or its supervisor is gone): read the rest.
            changed = exited.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    for mut f in followed {
        drain(&mut f.file, &mut f.lines, &f.path).await?;
        f.lines.finish();
    }
    Ok(())
}

/// Empties `f`'s file once more than `cap` of it has been read, and reads
/// on from its start.
async fn empty_past(f: &mut Followed, cap: u64) -> Result<(), FollowError> {
    use tokio::io::AsyncSeekExt;
    let err = |source| FollowError::Read {
        path: f.path.clone(),
        source,
    };
    let at = f.file.stream_position().await.map_err(err)?;
    if at <= cap {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .and_then(|w| w.set_len(0))
        .map_err(err)?;
    f.file
        .seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(err)?;
    Ok(())
}

/// Until a followed file changes: inotify's word, or `poll` without it.
async fn changed(
    inotify: &Option<Inotify>,
    ready: &Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    poll: std::time::Duration,
) -> Result<(), FollowError> {
    let (Some(inotify), Some(ready)) = (inotify, ready) else {
        tokio::time::sleep(poll).await;
        return Ok(());
    };
    let mut guard = ready.readable().await.map_err(FollowError::Register)?;
    // Every queued event, so that the fd is not ready once cleared.
    loop {
        match inotify.read_events() {
            Ok(_) => continue,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => return Err(FollowError::Events(e)),
        }
    }
    guard.clear_ready();
    Ok(())
}

/// Reads `file` to its current end.
/// Reads `file` to its current end; whether it had anything new.
async fn drain(
    file: &mut tokio::fs::File,
    lines: &mut Lines,
    path: &Path,
) -> Result<bool, FollowError> {
    let mut chunk = vec![0u8; 8192];
    let mut any = false;
    loop {
        let n = file
            .read(&mut chunk)
            .await
            .map_err(|source| FollowError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            return Ok(any);
        }
        any = true;
        lines.feed(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// The lines of `stream`, in order (two files' lines interleave as
    /// they are read).
    fn texts(buffer: &LogBuffer, stream: Stream) -> Vec<String> {
        buffer
            .subscribe(false)
            .history
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_file_is_followed_as_it_grows_and_read_to_its_end_after_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"before\n").expect("write");
        let buffer = Arc::new(LogBuffer::new(1 << 20));
        let (tx, rx) = watch::channel(false);
        let other = dir.path().join("vmm.log");
        std::fs::write(&other, b"from the other file\n").expect("other");
        let task = tokio::spawn(follow(
            vec![(path.clone(), Stream::Stdout), (other, Stream::Stderr)],
            buffer.clone(),
            rx,
            FollowOpts::default(),
        ));
        // Woken by inotify, not by the exit.
        f.write_all(b"live\n").expect("write");
        let mut seen = false;
        for _ in 0..200 {
            if texts(&buffer, Stream::Stdout) == ["before", "live"] {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "{:?}", texts(&buffer, Stream::Stdout));
        f.write_all(b"last words\nno newline").expect("write");
        tx.send(true).expect("exit");
        task.await.expect("join").expect("follow");
        assert_eq!(
            texts(&buffer, Stream::Stdout),
            ["before", "live", "last words", "no newline"]
        );
        assert_eq!(texts(&buffer, Stream::Stderr), ["from the other file"]);
    }

    #[tokio::test]
    async fn polled_a_file_is_read_from_its_tail_and_emptied_past_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console");
        std::fs::write(&path, b"old old old\nrecent\n").expect("write");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let buffer = Arc::new(LogBuffer::new(1 << 20));
        let (tx, rx) = watch::channel(false);
        let opts = FollowOpts {
            poll: Some(Duration::from_millis(20)),
            tail: Some(7),
            cap: Some(64),
        };
        let task = tokio::spawn(follow(
            vec![(path.clone(), Stream::Stderr)],
            buffer.clone(),
            rx,
            opts,
        ));
        for _ in 0..200 {
            if !texts(&buffer, Stream::Stderr).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // More than the cap: the file is emptied once read, and what comes
        // after is still read (from the start).
        let long = format!("{}\n", "x".repeat(80));
        f.write_all(long.as_bytes()).expect("write");
        let mut emptied = false;
        for _ in 0..200 {
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(1) == 0 {
                emptied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(emptied, "the file was not emptied past its cap");
        f.write_all(b"after\n").expect("write");
        for _ in 0..200 {
            if texts(&buffer, Stream::Stderr).last().map(String::as_str) == Some("after") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.send(true).expect("exit");
        task.await.expect("join").expect("follow");
        assert_eq!(
            texts(&buffer, Stream::Stderr),
            ["recent", &"x".repeat(80), "after"],
            "only the tail, then every line"
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let (_tx, rx) = watch::channel(false);
        let err = follow(
            vec![(PathBuf::from("/nonexistent/console"), Stream::Stdout)],
            Arc::new(LogBuffer::new(1024)),
            rx,
            FollowOpts::default(),
        )
        .await
        .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/console"), "{err}");
    }

    #[test]
    fn long_lines_are_split() {
        let buffer = Arc::new(LogBuffer::new(1 << 20));
        let mut lines = Lines::new(Stream::Stdout, buffer.clone());
        lines.feed(b"a\nbb\n");
        lines.feed(&vec![b'x'; MAX_LINE + 3]);
        lines.finish();
        let lens: Vec<usize> = buffer
            .subscribe(false)
            .history
            .iter()
            .map(|l| l.data.len())
            .collect();
        assert_eq!(lens, vec![1, 2, MAX_LINE, 3]);
    }
}
