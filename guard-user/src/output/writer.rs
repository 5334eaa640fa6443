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
        atomic::{AtomicBool, AtomicUsize, Ordering},
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
pub struct ReopeningFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    reopen: Arc<AtomicBool>,
}

impl ReopeningFile {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Self::open_file(path)?,
            reopen: Arc::new(AtomicBool::new(false)),
        })
    }

    fn open_file(path: &std::path::Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Set it to have the file opened again before the next write.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }
}

impl Write for ReopeningFile {
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
        self.file.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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
