//! The data directory: node identity, restart generation, this node's own
//! registrations and a catalog snapshot. Every file is written atomically
//! (temporary file, fsync, rename, fsync of the directory) so a crash leaves
//! either the old or the new content, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use anyhow::{anyhow, Context};
use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::{Catalog, Record};
use mesh_proto::codec;

const NODE_ID_FILE: &str = "node-id";
const GENERATION_FILE: &str = "generation";
const REGISTRATIONS_FILE: &str = "registrations.json";
const SNAPSHOT_FILE: &str = "catalog.snapshot";
/// Largest snapshot read back (the catalog of a very large cluster).
const MAX_SNAPSHOT: usize = 256 * 1024 * 1024;

/// An opened, writable data directory. Its writes block (they fsync): call
/// them from the blocking pool, never from a runtime thread.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    gate: Arc<WriteGate>,
}

/// TEST ONLY: lets a test hold every write to a data dir, to show that
/// nothing but the writes themselves waits on the disk.
#[derive(Debug, Default)]
struct WriteGate {
    held: Mutex<bool>,
    released: Condvar,
}

impl WriteGate {
    fn wait_open(&self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// TEST ONLY: while this lives, writes to the data dir wait.
#[derive(Debug)]
pub struct HeldWrites(Arc<WriteGate>);

impl Drop for HeldWrites {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.0.released.notify_all();
    }
}

impl DataDir {
    /// Creates (if needed) and checks the directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(root).with_context(|| {
            format!(
                "cannot create the data dir {}; choose a writable --data-dir",
                root.display()
            )
        })?;
        let probe = root.join(".write-test");
        fs::write(&probe, b"ok").with_context(|| {
            format!(
                "the data dir {} is not writable; fix its permissions or choose another --data-dir",
                root.display()
            )
        })?;
        let _ = fs::remove_file(probe);
        Ok(Self {
            root: root.to_owned(),
            gate: Arc::default(),
        })
    }

    /// TEST ONLY: holds every later write to this directory until the
    /// returned guard is dropped (a disk that stalls).
    #[doc(hidden)]
    pub fn hold_writes_for_test(&self) -> HeldWrites {
        *self
            .gate
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        HeldWrites(self.gate.clone())
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The node id kept here, or a new one generated and kept.
    pub fn node_id(&self, explicit: Option<&str>) -> anyhow::Result<String> {
        let path = self.root.join(NODE_ID_FILE);
        if let Some(id) = explicit {
            write_atomic(&path, id.as_bytes())?;
            return Ok(id.to_owned());
        }
        match fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
            _ => {
                let id = format!("node-{:08x}", rand::random::<u32>());
                write_atomic(&path, id.as_bytes())?;
                Ok(id)
            }
        }
    }

    /// The generation of this run: above every earlier run's, even if the
    /// file was lost (it is at least the wall clock in ms).
    pub fn next_generation(&self, wall_ms: u64) -> anyhow::Result<u64> {
        let path = self.root.join(GENERATION_FILE);
        let previous = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let next = previous.saturating_add(1).max(wall_ms);
        write_atomic(&path, next.to_string().as_bytes())?;
        Ok(next)
    }

    /// Instances registered on this node, to re-register after a restart.
    pub fn registrations(&self) -> anyhow::Result<Vec<RegisterInstance>> {
        let path = self.root.join(REGISTRATIONS_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!(
                    "{} is corrupt ({e}); remove it to start without saved registrations",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Saves this node's registrations.
    pub fn save_registrations(&self, registrations: &[RegisterInstance]) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(registrations)?;
        self.gate.wait_open();
        write_atomic(&self.root.join(REGISTRATIONS_FILE), &bytes)
    }

    /// The last catalog snapshot, or an empty catalog.
    pub fn snapshot(&self) -> Catalog {
        let path = self.root.join(SNAPSHOT_FILE);
        let mut catalog = Catalog::new();
        let Ok(bytes) = fs::read(&path) else {
            return catalog;
        };
        match codec::decode::<Vec<Record>>(&bytes, MAX_SNAPSHOT) {
            Ok(records) => {
                for record in records {
                    catalog.apply(record);
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable catalog snapshot; peers will resend the catalog")
            }
        }
        catalog
    }

    /// Saves a catalog snapshot of `records`.
    pub fn save_snapshot(&self, records: &[Record]) -> anyhow::Result<()> {
        let bytes = codec::encode(&records).map_err(|e| anyhow!("{e}"))?;
        self.gate.wait_open();
        write_atomic(&self.root.join(SNAPSHOT_FILE), &bytes)
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.with_context(|| {
        format!(
            "cannot write {}; check free space and permissions",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_generation_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("gossamer-persist-{}", rand::random::<u64>()));
        let data = DataDir::open(&dir).expect("open");
        let id = data.node_id(None).expect("id");
        let g1 = data.next_generation(5).expect("gen");
        let again = DataDir::open(&dir).expect("reopen");
        assert_eq!(again.node_id(None).expect("id"), id);
        let g2 = again.next_generation(5).expect("gen");
        assert!(g2 > g1);
        let _ = fs::remove_dir_all(dir);
    }
}
