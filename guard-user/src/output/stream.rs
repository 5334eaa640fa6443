//! The local stream (`--socket`): every record the agent writes (alerts,
//! actions, refusals, incidents resolved, losses, start and summary) and a
//! `snapshot` record every second, as NDJSON, on a unix socket that only
//! root may use. `guard top` reads it; so may hooks and other tools.
//!
//! Root only, twice over: the socket is 0600 in a directory nobody else may
//! write, and each peer's uid (SO_PEERCRED) must be 0 or the agent's own.
//!
//! Bounded: each client has a queue of [`CLIENT_QUEUE`] lines; publishing
//! never waits, and a client whose queue is full is dropped (and counted),
//! so a slow or stuck reader never slows enforcement.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::AsyncWriteExt as _,
    net::{UnixListener, UnixStream},
    sync::mpsc,
};

/// Where the agent listens unless told otherwise (systemd's
/// `RuntimeDirectory=guard` makes the directory).
pub const DEFAULT_SOCKET: &str = "/run/guard/guard.sock";

/// Lines queued for one client at most: a few seconds of a busy agent's
/// records and snapshots.
pub const CLIENT_QUEUE: usize = 1024;

/// Clients connected at once, at most (each holds a descriptor).
pub const MAX_CLIENTS: usize = 16;

/// What one client is sent, line by line.
type Lines = mpsc::Receiver<Arc<str>>;

/// The publishing side, shared with the output writer.
#[derive(Clone, Default)]
pub struct Stream {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    clients: Mutex<Vec<mpsc::Sender<Arc<str>>>>,
    /// Clients connected now (read without the lock on every record).
    connected: AtomicUsize,
    /// Clients dropped for falling behind.
    dropped: AtomicU64,
    /// The `start` record, sent first to every client.
    hello: Mutex<Option<Arc<str>>>,
}

impl Stream {
    /// Whether anyone listens: records are only formatted for the stream
    /// then.
    pub fn listening(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed) > 0
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Clients dropped so far because their queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Remembers the `start` record, for every client that connects later.
    pub fn set_hello(&self, line: &str) {
        if let Ok(mut hello) = self.inner.hello.lock() {
            *hello = Some(Arc::from(line));
        }
    }

    /// Hands one NDJSON line (with its newline) to every client; never
    /// waits. A client whose queue is full is dropped.
    pub fn publish(&self, line: &str) {
        if !self.listening() {
            return;
        }
        let line: Arc<str> = Arc::from(line);
        let Ok(mut clients) = self.inner.clients.lock() else {
            return;
        };
        clients.retain(|tx| match tx.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "a --socket client fell {CLIENT_QUEUE} records behind: it was disconnected"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.inner.connected.store(clients.len(), Ordering::Relaxed);
    }

    fn add(&self) -> Option<(Lines, Option<Arc<str>>)> {
        let mut clients = self.inner.clients.lock().ok()?;
        clients.retain(|tx| !tx.is_closed());
        if clients.len() >= MAX_CLIENTS {
            self.inner.connected.store(clients.len(), Ordering::Relaxed);
            return None;
        }
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        clients.push(tx);
        self.inner.connected.store(clients.len(), Ordering::Relaxed);
        let hello = self.inner.hello.lock().ok().and_then(|h| h.clone());
        Some((rx, hello))
    }

    fn forget_closed(&self) {
        if let Ok(mut clients) = self.inner.clients.lock() {
            clients.retain(|tx| !tx.is_closed());
            self.inner.connected.store(clients.len(), Ordering::Relaxed);
        }
    }
}

/// The socket file, removed when the agent stops (if it is still the one
/// the agent made).
pub struct Listening {
    pub path: PathBuf,
    ino: (u64, u64),
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks that `dir` may hold a root-only socket: made here if missing
/// (0755), else a directory owned by this user (or root) that nobody else
/// may write.
fn trusted_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for --socket", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting {}'s mode", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() || (meta.uid() != 0 && meta.uid() != euid) || meta.mode() & 0o022 != 0 {
        bail!(
            "refusing --socket in {}: it must be a directory owned by root that nobody else may \
             write (chmod go-w, chown root), or pass another --socket",
            dir.display()
        );
    }
    Ok(())
}

/// Binds `path` (0600) and serves the stream on it. A socket file left by
/// an agent that died is replaced; one another agent answers on is an
/// error.
pub async fn serve(path: &Path, stream: Stream) -> Result<Listening> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    trusted_dir(dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "--socket {}: something other than a socket is there; remove it or pass another \
                 path",
                path.display()
            );
        }
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "--socket {}: another guard agent listens there; stop it, or pass another \
                 --socket (or --socket '' for none)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting {}'s mode to 0600", path.display()))?;
    let meta = std::fs::symlink_metadata(path)?;
    let listening = Listening {
        path: path.to_owned(),
        ino: (meta.dev(), meta.ino()),
    };
    tokio::spawn(accept(listener, stream));
    Ok(listening)
}

async fn accept(listener: UnixListener, stream: Stream) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let uid = conn.peer_cred().map(|c| c.uid()).ok();
        if !matches!(uid, Some(u) if u == 0 || u == euid) {
            tracing::warn!("--socket: refused a client with uid {uid:?} (root only)");
            continue;
        }
        let Some((rx, hello)) = stream.add() else {
            tracing::warn!("--socket: refused a client: {MAX_CLIENTS} are connected already");
            continue;
        };
        tokio::spawn(feed(conn, rx, hello, stream.clone()));
    }
}

async fn feed(
    mut conn: UnixStream,
    mut rx: mpsc::Receiver<Arc<str>>,
    hello: Option<Arc<str>>,
    stream: Stream,
) {
    let write = async {
        if let Some(hello) = hello {
            conn.write_all(hello.as_bytes()).await?;
        }
        while let Some(line) = rx.recv().await {
            conn.write_all(line.as_bytes()).await?;
        }
        Ok::<(), io::Error>(())
    };
    let _ = write.await;
    drop(rx);
    stream.forget_closed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_falls_behind_is_dropped_and_publishing_never_waits() {
        let stream = Stream::default();
        stream.publish("nobody listens\n");
        let (mut rx, hello) = stream.add().expect("a client");
        assert!(hello.is_none());
        assert!(stream.listening());
        for i in 0..CLIENT_QUEUE {
            stream.publish(&format!("{i}\n"));
        }
        assert_eq!(stream.clients(), 1);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("0\n"));
        // One slot freed, then two more lines: the second finds it full.
        stream.publish("a\n");
        stream.publish("b\n");
        assert_eq!(stream.clients(), 0);
        assert_eq!(stream.dropped(), 1);
        assert!(!stream.listening());
    }

    #[test]
    fn a_client_gets_the_start_record_first() {
        let stream = Stream::default();
        stream.set_hello("{\"kind\":\"start\"}\n");
        let (_rx, hello) = stream.add().expect("a client");
        assert_eq!(hello.as_deref(), Some("{\"kind\":\"start\"}\n"));
    }

    #[test]
    fn clients_are_bounded() {
        let stream = Stream::default();
        let held: Vec<_> = (0..MAX_CLIENTS).map(|_| stream.add()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(stream.add().is_none());
    }
}
