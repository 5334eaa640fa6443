//! Wire format between guard's eBPF programs and its agent.
//!
//! Every record in the `EVENTS` ring buffer starts with a [`Header`] whose
//! `kind` is one of [`EventKind`]; the agent reads the tag, checks the record
//! length against the struct for that kind, and copies it out. All structs are
//! `#[repr(C)]` and laid out so that they have **no implicit padding**: every
//! field is placed at a multiple of its alignment and every struct's size is a
//! multiple of 8. The `layout` tests below pin the sizes; a change here is a
//! change of the wire format on both sides at once.
#![no_std]

/// `task_struct.flags` bit of a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Length of a task's `comm` (TASK_COMM_LEN), NUL included.
pub const COMM_LEN: usize = 16;
/// Bytes kept of a path (exec filename, cgroup path), NUL included. Longer
/// paths are cut and flagged (`len == PATH_LEN - 1`).
pub const PATH_LEN: usize = 256;

/// Number of slots in the per-CPU drop counter map: one per [`EventKind`]
/// value (slot 0 is unused).
pub const KIND_SLOTS: u32 = 16;

#[cfg(feature = "user")]
extern crate std;

mod config;
mod events;
pub mod fork_rule;
mod maps;

pub use config::*;
pub use events::*;
pub use maps::*;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, made only of integers and
    // byte arrays, with no padding (pinned by the layout tests), so any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockedSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExeId {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Refusal {}
}

#[cfg(test)]
mod layout {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn sizes_have_no_padding() {
        assert_eq!(size_of::<Header>(), 16);
        assert_eq!(size_of::<Refusal>(), 24);
        assert_eq!(size_of::<ForkEvent>(), 16 + 6 * 4 + 8 + 2 * COMM_LEN);
        assert_eq!(
            size_of::<ExecEvent>(),
            16 + 6 * 4 + COMM_LEN + PATH_LEN + ARGS_LEN
        );
        assert_eq!(size_of::<ExitEvent>(), 16 + 6 * 4 + COMM_LEN);
        assert_eq!(
            size_of::<OomKillEvent>(),
            16 + 4 * 4 + 5 * 8 + 2 * 4 + COMM_LEN
        );
        assert_eq!(size_of::<HungTaskEvent>(), 16 + 2 * 4 + COMM_LEN);
        assert_eq!(
            size_of::<CgroupAttachEvent>(),
            16 + 6 * 4 + 8 + COMM_LEN + PATH_LEN
        );
        assert_eq!(size_of::<UnblockedEvent>(), 16 + 4 * 4 + 2 * 8 + COMM_LEN);
        assert_eq!(size_of::<BlockedSlot>(), 8 + 4 * 4 + COMM_LEN);
        assert_eq!(size_of::<TaskOffsets>(), 28 * 4);
        assert_eq!(size_of::<ExeId>(), 16);
        assert_eq!(size_of::<RssEvent>(), 16 + 4 * 4 + 4 * 8 + COMM_LEN);
        assert_eq!(
            size_of::<ReclaimStallEvent>(),
            16 + 2 * 4 + 2 * 8 + COMM_LEN
        );
        assert_eq!(size_of::<MemoryProbe>(), 8 * 4);
        assert_eq!(size_of::<ForkBudget>(), 5 * 8 + 6 * 4);
        assert_eq!(size_of::<MarkVictimLayout>(), 10 * 4);
        assert_eq!(size_of::<CondemnedEvent>(), 16 + 4 * 8 + 4 * 4);
        assert_eq!(size_of::<ForkGuardConfig>(), 8 + 12 * 4);
        assert_eq!(
            size_of::<ProbeConfig>(),
            size_of::<TaskOffsets>()
                + size_of::<MarkVictimLayout>()
                + size_of::<MemoryProbe>()
                + size_of::<ForkGuardConfig>()
        );
    }

    #[test]
    fn occupancy_slots_spread_task_addresses() {
        // Task structs ~10 KiB apart in a slab land in distinct slots.
        let base = 0xffff_8880_0400_0000u64;
        let mut seen = [false; OCCUPANCY_SLOTS as usize];
        let mut distinct = 0;
        for i in 0..1000u64 {
            let slot = occupancy_slot(base + i * 10_240) as usize;
            assert!(slot < OCCUPANCY_SLOTS as usize);
            if !seen[slot] {
                seen[slot] = true;
                distinct += 1;
            }
        }
        assert!(distinct > 850, "{distinct} distinct slots of 1000");
    }

    #[test]
    fn kind_tags_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
            assert!((kind as u32) < KIND_SLOTS);
        }
        assert_eq!(EventKind::try_from(0), Err(UnknownKind(0)));
        assert_eq!(EventKind::try_from(11), Err(UnknownKind(11)));
    }

    #[test]
    fn auto_tags_carry_their_root() {
        let tag = auto_tag(4_194_303, 123_456_789_000);
        assert_eq!(auto_tag_root(tag), Some(4_194_303));
        assert_ne!(tag & AUTO_TAG, 0);
        assert_eq!(auto_tag_root(auto_tag(77, u64::MAX)), Some(77));
        assert_ne!(auto_tag(77, 1 << 30), auto_tag(77, 2 << 30));
        assert_eq!(auto_tag_root(4242), None);
    }
}
