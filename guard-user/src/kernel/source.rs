//! Reads the `EVENTS` ring buffer and hands decoded events to the pipeline.
//!
//! The reader never blocks on the pipeline: it drains every record that is
//! ready, clears readiness, and hands the events over as one batch (one
//! wakeup of the pipeline per drain, not per event). The queue is bounded in
//! events: past `--queue` events waiting, further ones are counted as lost
//! on the queue side; records the kernel could not write (ring buffer full)
//! are counted per CPU in the `DROPS` map. The two are reported separately.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, RingBuf};
use guard_common::{BlockedSlot, EventKind, KIND_SLOTS, TRACKING_FULL_SLOT, task_state};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    detect::blocked::BlockedTask,
    kernel::decode::{Comm, Event, decode},
};

/// Pause after each drain before waiting for the ring buffer again. The
/// kernel wakes a reader only when it has caught up with the writer, so
/// this bounds wakeups to one per interval under load (a fork storm would
/// otherwise cost a wakeup of the reader and of the pipeline per event),
/// while adding at most this much latency.
pub const READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(4);

/// Longest the reader waits for a wakeup before it looks anyway: the
/// kernel notifies a reader that has caught up, so this is a safety net,
/// and it is what an idle agent wakes up for.
pub const BACKSTOP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Losses on the agent's side of the ring buffer.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Events dropped because the pipeline's queue was full.
    pub queue_full: AtomicU64,
    /// Records that did not decode (a version mismatch would show here).
    pub undecodable: AtomicU64,
}

/// The pipeline's end of the queue: batches of events, in ring order.
pub struct EventQueue {
    rx: mpsc::UnboundedReceiver<Vec<Event>>,
    queued: Arc<AtomicUsize>,
}

impl EventQueue {
    /// The next batch; `None` once the reader has ended and all is taken.
    pub async fn recv(&mut self) -> Option<Vec<Event>> {
        let batch = self.rx.recv().await?;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// A batch already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Vec<Event>> {
        let batch = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }
}

/// The reader's end: at most `limit` events waiting.
struct Sender {
    tx: mpsc::UnboundedSender<Vec<Event>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

/// A queue of at most `limit` events.
fn queue(limit: usize) -> (Sender, EventQueue) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            queued: queued.clone(),
            limit,
        },
        EventQueue { rx, queued },
    )
}

/// Starts the reader task, with a queue of at most `limit` events. It ends
/// after `stop` fires (with one last drain) or when the pipeline hangs up;
/// the queue closes when it ends.
pub fn spawn_reader(
    ring: RingBuf<MapData>,
    limit: usize,
    stats: Arc<SourceStats>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(JoinHandle<()>, EventQueue)> {
    let (tx, events) = queue(limit);
    // SAFETY: the ring buffer map owns its fd and keeps it open, unchanged,
    // for as long as the map lives, and the AsyncFd owns the map.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("polling the ring buffer")?;
    let task = tokio::spawn(async move {
        loop {
            let open = tokio::select! {
                ready = ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        let open = drain(guard.get_inner_mut(), &tx, &stats);
                        guard.clear_ready();
                        open
                    }
                    Err(_) => false,
                },
                // A backstop for a wakeup that does not come: drain anyway.
                _ = tokio::time::sleep(BACKSTOP_INTERVAL) => drain(ring.get_mut(), &tx, &stats),
                _ = &mut stop => {
                    drain(ring.get_mut(), &tx, &stats);
                    false
                }
            };
            if !open {
                break;
            }
            tokio::time::sleep(READ_INTERVAL).await;
        }
    });
    Ok((task, events))
}

/// Reads every ready record and hands them over as one batch; false when
/// the pipeline has hung up.
fn drain(ring: &mut RingBuf<MapData>, tx: &Sender, stats: &SourceStats) -> bool {
    let room = tx.limit.saturating_sub(tx.queued.load(Ordering::Relaxed));
    let mut batch = Vec::new();
    while let Some(record) = ring.next() {
        // Past the queue's room a record is lost: not decoded first (an
        // exec's path and arguments would be allocated for nothing).
        if batch.len() >= room {
            stats.queue_full.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match decode(&record) {
            Ok(event) => batch.push(event),
            Err(err) => {
                if stats.undecodable.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("undecodable ring-buffer record: {err}");
                }
            }
        }
    }
    if batch.is_empty() {
        return !tx.tx.is_closed();
    }
    tx.queued.fetch_add(batch.len(), Ordering::Relaxed);
    tx.tx.send(batch).is_ok()
}

/// Reads how many events were lost so far (see [`loss_counter`]).
pub type LossCounter = Box<dyn Fn() -> u64 + Send + Sync>;

/// Counts every event lost so far, in the kernel (`DROPS`: one read of
/// each slot) and in the agent's queue. Read on the 1 s tick and before an
/// explosion verdict is acted on, not per event.
pub fn loss_counter(drops: Arc<PerCpuArray<MapData, u64>>, stats: Arc<SourceStats>) -> LossCounter {
    Box::new(move || {
        let kernel = KernelDrops::read(&drops).map_or(0, |k| k.total());
        kernel + stats.queue_full.load(Ordering::Relaxed)
    })
}

/// What the kernel's blocked-task maps need after a snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockedBookkeeping {
    /// (task, since_ns) of blockings reported: ask the kernel for an
    /// `unblocked` record when they end.
    pub watch: Vec<(u64, u64)>,
    /// Tasks released without that record: drop their request.
    pub forget: Vec<u64>,
}

/// The kernel's record of tasks in uninterruptible sleep (`BLOCKED`), and
/// the agent's requests to hear when reported ones run again (`REPORTED`).
pub struct BlockedMaps {
    blocked: HashMap<MapData, u64, BlockedSlot>,
    reported: HashMap<MapData, u64, u64>,
}

impl BlockedMaps {
    pub fn new(blocked: Map, reported: Map) -> Result<Self> {
        Ok(Self {
            blocked: HashMap::try_from(blocked).context("BLOCKED map")?,
            reported: HashMap::try_from(reported).context("REPORTED map")?,
        })
    }

    /// Every task blocked now. Entries that vanish while the map is walked
    /// (the task ran) are skipped.
    pub fn snapshot(&self) -> Vec<BlockedTask> {
        self.blocked
            .iter()
            .filter_map(Result::ok)
            .map(|(task, slot)| BlockedTask {
                task,
                pid: slot.pid,
                tgid: slot.tgid,
                since_ns: slot.since_ns,
                killable: slot.state & task_state::WAKEKILL != 0,
                comm: Comm::new(slot.comm),
            })
            .collect()
    }

    /// Applies what the pipeline asked for after a snapshot.
    pub fn apply(&mut self, book: &BlockedBookkeeping) {
        for &(task, since_ns) in &book.watch {
            if let Err(err) = self.reported.insert(task, since_ns, 0) {
                tracing::debug!("REPORTED map: {err}: no unblocked record for task {task:#x}");
            }
        }
        for task in &book.forget {
            let _ = self.reported.remove(task);
        }
    }
}

/// Kernel-side losses, summed over CPUs, indexed by `EventKind as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// The ring buffer was full.
    pub ring_full: [u64; KIND_SLOTS as usize],
    /// A kernel memory read failed, so the record was discarded.
    pub read_failed: [u64; KIND_SLOTS as usize],
    /// Tasks that blocked while the `BLOCKED` map was full: not tracked, so
    /// never reported as blocked.
    pub tracking_full: u64,
}

impl KernelDrops {
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self> {
        let mut drops = KernelDrops::default();
        for slot in 0..=TRACKING_FULL_SLOT {
            let per_cpu = map.get(&slot, 0).context("reading the DROPS map")?;
            let total: u64 = per_cpu.iter().sum();
            if slot == TRACKING_FULL_SLOT {
                drops.tracking_full = total;
            } else if slot < KIND_SLOTS {
                drops.ring_full[slot as usize] = total;
            } else {
                drops.read_failed[(slot - KIND_SLOTS) as usize] = total;
            }
        }
        Ok(drops)
    }

    /// Records lost (blocked tasks left untracked are not records: see
    /// `tracking_full`).
    pub fn total(&self) -> u64 {
        self.ring_full.iter().chain(&self.read_failed).sum()
    }

    /// Counts that grew since `before`.
    pub fn since(&self, before: &KernelDrops) -> KernelDrops {
        let mut d = KernelDrops::default();
        for i in 0..KIND_SLOTS as usize {
            d.ring_full[i] = self.ring_full[i].saturating_sub(before.ring_full[i]);
            d.read_failed[i] = self.read_failed[i].saturating_sub(before.read_failed[i]);
        }
        d.tracking_full = self.tracking_full.saturating_sub(before.tracking_full);
        d
    }

    /// `{"fork": 3, ...}` of the non-zero counts in `counts`.
    pub fn by_kind(counts: &[u64; KIND_SLOTS as usize]) -> std::collections::BTreeMap<String, u64> {
        EventKind::ALL
            .iter()
            .filter(|k| counts[**k as usize] > 0)
            .map(|k| (k.name().to_owned(), counts[*k as usize]))
            .collect()
    }
}
