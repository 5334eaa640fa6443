//! The thread that writes stdout, behind a queue bounded in bytes.
//!
//! A slow or stalled reader (a pipe to a logger, a terminal, a test harness
//! starved by the very fork bomb guard is fighting) must never stall the
//! pipeline nor grow the agent: guard locks its memory (`mlockall`), so
//! every byte queued is a byte of RAM the host cannot reclaim. Lines are
//! gathered in one reusable buffer of [`CHUNK`] bytes; each full (or
//! flushed) buffer is copied into an allocation of exactly its length and
//! handed to the writer thread, and the backlog counts what those
//! allocations hold. [`super::Output`] drops event lines once
//! [`EVENT_BACKLOG`] bytes wait, and every record once [`RECORD_BACKLOG`]
//! bytes wait, counting each.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Bytes gathered before they are handed to the writer thread.
pub const CHUNK: usize = 64 << 10;

/// Bytes waiting for the writer past which event lines are dropped.
pub const EVENT_BACKLOG: usize = 8 << 20;

/// Bytes waiting past which every record (alerts and actions too) is
/// dropped and counted: the ceiling of what output can hold.
pub const RECORD_BACKLOG: usize = 16 << 20;

/// What one queued chunk costs beyond its bytes: the channel's slot and the
/// allocator's header, rounded up.
const CHUNK_OVERHEAD: usize = 64;

/// How long guard waits at exit for a stalled reader to take what is queued.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// `--output FILE`: appends to a file, opened again (at the same path) on
/// the next write after [`ReopeningFile::reopen_flag`] is set: logrotate
/// moves the file away and sends SIGHUP.
///
/// Opened as root, so with care: never through a symlink (`O_NOFOLLOW`: a
/// user's planted link must not make guard append to a file of root's),
/// only a regular file, created 0600 (command lines can hold secrets). A
/// write that fails (ENOSPC) loses its lines, counted in
/// [`ReopeningFile::failed_lines`], never a partial line (the file is cut
/// back to where it was) and never the writer: the next chunk is tried
/// again, and SIGHUP opens the file anew.
pub struct ReopeningFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    reopen: Arc<AtomicBool>,
    failed_lines: Arc<AtomicU64>,
    /// A write failed: say it once until one succeeds again.
    failing: bool,
}

impl ReopeningFile {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Self::open_file(path)?,
            reopen: Arc::new(AtomicBool::new(false)),
            failed_lines: Arc::new(AtomicU64::new(0)),
            failing: false,
        })
    }

    fn open_file(path: &std::path::Path) -> io::Result<std::fs::File> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::new(
                        e.kind(),
                        format!("{} is a symbolic link; guard writes only to a regular file it can open without following one", path.display()),
                    )
                } else {
                    e
                }
            })?;
        let kind = file.metadata()?.file_type();
        if !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file ({}); give a file's path",
                    path.display(),
                    if kind.is_fifo() {
                        "a FIFO"
                    } else {
                        "a device, socket or directory"
                    }
                ),
            ));
        }
        Ok(file)
    }

    /// Set it to have the file opened again before the next write.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }

    /// Lines lost to writes that failed.
    pub fn failed_lines(&self) -> Arc<AtomicU64> {
        self.failed_lines.clone()
    }
}

impl Write for ReopeningFile {
    /// Writes all of `data` (whole lines) or none of it.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.reopen.swap(false, Ordering::Relaxed) {
            match Self::open_file(&self.path) {
                Ok(file) => self.file = file,
                // Keep writing to the old one rather than lose records.
                Err(err) => tracing::warn!(
                    "could not open {} again: {err}; still writing to the file it was",
                    self.path.display()
                ),
            }
        }
        let before = self.file.metadata().map(|m| m.len()).ok();
        match self.file.write_all(data) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("writing {} again", self.path.display());
                }
            }
            Err(err) => {
                // No partial line: cut the file back to where it was.
                if let Some(len) = before {
                    let _ = self.file.set_len(len);
                }
                let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
                self.failed_lines.fetch_add(lines.max(1), Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "writing {}: {err}; its lines are dropped and counted until a write \
                         succeeds again (SIGHUP opens the file anew)",
                        self.path.display()
                    );
                }
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Every write went to the kernel already; a failed one was counted.
        Ok(())
    }
}

/// stdout, written by a thread of its own.
pub struct ThreadedStdout {
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Box<[u8]>>>,
    backlog: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadedStdout {
    pub fn spawn() -> io::Result<Self> {
        Self::spawn_to(io::stdout())
    }

    /// Writes to `sink` instead of stdout (tests).
    pub fn spawn_to(mut sink: impl Write + Send + 'static) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Box<[u8]>>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (pending, gone) = (backlog.clone(), broken.clone());
        let thread = std::thread::Builder::new()
            .name("guard-stdout".into())
            .spawn(move || {
                for chunk in rx {
                    let written = sink.write_all(&chunk).and_then(|()| sink.flush());
                    pending.fetch_sub(chunk.len() + CHUNK_OVERHEAD, Ordering::Relaxed);
                    if let Err(err) = written {
                        tracing::debug!("writing stdout: {err}");
                        gone.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            })?;
        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            backlog,
            broken,
            thread: Some(thread),
        })
    }

    /// Bytes handed to the writer thread and not yet written, as allocated.
    pub fn backlog(&self) -> Arc<AtomicUsize> {
        self.backlog.clone()
    }

    fn broken_pipe() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "stdout was closed")
    }

    /// Hands what is gathered to the writer thread, in an allocation of its
    /// exact length; the gathering buffer keeps its capacity.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk: Box<[u8]> = self.buf.as_slice().into();
        self.buf.clear();
        self.backlog
            .fetch_add(chunk.len() + CHUNK_OVERHEAD, Ordering::Relaxed);
        match &self.tx {
            Some(tx) if tx.send(chunk).is_ok() => Ok(()),
            _ => Err(Self::broken_pipe()),
        }
    }
}

impl Write for ThreadedStdout {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Self::broken_pipe());
        }
        if self.buf.len() + data.len() > CHUNK {
            self.hand_over()?;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Self::broken_pipe());
        }
        self.hand_over()
    }
}

impl Drop for ThreadedStdout {
    /// Hands over what is gathered and waits until it is written, or, when
    /// the reader has stalled, at most [`EXIT_WAIT`]: the thread is then
    /// left blocked in its write and ends with the process.
    fn drop(&mut self) {
        let _ = self.hand_over();
        self.tx.take();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + EXIT_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!(
                "stdout is not being read: {} bytes of output were not written",
                self.backlog.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A sink that blocks every write until released.
    struct Gate(Arc<Mutex<()>>);

    impl Write for Gate {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            drop(self.0.lock());
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_backlog_counts_allocations_and_the_buffer_stays_one_chunk() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        let mut out = ThreadedStdout::spawn_to(Gate(gate.clone())).expect("spawn");
        let backlog = out.backlog();
        // 10,000 short flushes: each used to queue a 64 KiB allocation.
        for _ in 0..10_000 {
            out.write_all(b"{\"kind\":\"fork\"}\n").expect("write");
            out.flush().expect("flush");
        }
        let queued = backlog.load(Ordering::Relaxed);
        assert_eq!(queued, 10_000 * (16 + CHUNK_OVERHEAD));
        // Without flushes, the gathering buffer hands over whole chunks.
        for _ in 0..100_000 {
            out.write_all(&[b'x'; 99]).expect("write");
            assert!(out.buf.len() <= CHUNK);
        }
        assert_eq!(out.buf.capacity(), CHUNK, "the buffer never grows");
        drop(held);
        drop(out);
        assert_eq!(backlog.load(Ordering::Relaxed), 0, "all written at drop");
    }

    #[test]
    fn a_closed_reader_breaks_the_writer_and_drop_does_not_hang() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = ThreadedStdout::spawn_to(Closed).expect("spawn");
        out.write_all(b"line\n").expect("gathered");
        out.flush().expect("handed over");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.broken.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let err = out.write_all(b"more\n").expect_err("broken");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn an_output_file_is_never_a_symlink_and_is_private() {
        let dir = std::env::temp_dir().join(format!("guard-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let target = dir.join("target");
        std::fs::write(&target, "root's\n").expect("write");
        let link = dir.join("guard.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = ReopeningFile::open(&link)
            .err()
            .expect("a symlink is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = ReopeningFile::open(std::path::Path::new("/dev/null"))
            .err()
            .expect("a device is refused");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fresh = dir.join("fresh.log");
        let mut file = ReopeningFile::open(&fresh).expect("open");
        file.write_all(b"one\n").expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "root's\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn drop_waits_a_bounded_time_for_a_stalled_reader() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        let mut out = ThreadedStdout::spawn_to(Gate(gate.clone())).expect("spawn");
        out.write_all(b"stuck\n").expect("write");
        let started = Instant::now();
        drop(out);
        let waited = started.elapsed();
        assert!(
            waited >= EXIT_WAIT && waited < EXIT_WAIT * 3,
            "waited {waited:?}"
        );
        drop(held);
    }
}
