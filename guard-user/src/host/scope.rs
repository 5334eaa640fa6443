//! Which processes guard covers: `--cgroup` directories, resolved once.

use anyhow::{Context as _, Result};

use crate::{
    host::cgroup::{Hierarchies, is_within},
    host::proctable::ProcInfo,
};

/// Which processes the stream (and later every action) covers.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// (hierarchy index, cgroup directory).
    pub cgroups: Vec<(usize, String)>,
}

impl Scope {
    /// Resolves `--cgroup` paths; the first one's hierarchy becomes primary.
    pub fn resolve(paths: &[std::path::PathBuf], hierarchies: &mut Hierarchies) -> Result<Self> {
        let mut cgroups = Vec::new();
        for path in paths {
            cgroups.push(
                hierarchies
                    .resolve_dir(path)
                    .with_context(|| format!("--cgroup {}", path.display()))?,
            );
        }
        if let Some(&(index, _)) = cgroups.first() {
            hierarchies.primary = index;
        }
        Ok(Scope { cgroups })
    }

    pub fn contains(&self, process: Option<&ProcInfo>) -> bool {
        match process {
            Some(p) => self.contains_cgroups(&p.cgroups),
            None => self.cgroups.is_empty(),
        }
    }

    /// Whether a process with these cgroups is in scope (no scope: all).
    pub fn contains_cgroups(&self, set: &crate::host::cgroup::CgroupSet) -> bool {
        self.cgroups.is_empty()
            || self.cgroups.iter().any(|(index, dir)| {
                set.get(*index)
                    .and_then(Option::as_ref)
                    .is_some_and(|own| is_within(own, dir))
            })
    }
}
