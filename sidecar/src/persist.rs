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
const MEMBERS_FILE: &str = "members.json";
/// Members remembered at most: enough to find the cluster again.
pub const MAX_SAVED_MEMBERS: usize = 16;
/// Largest snapshot read back (the catalog of a very large cluster).
const MAX_SNAPSHOT: usize = 256 * 1024 * 1024;

/// An opened, writable data directory. Its writes block (they fsync): call
/// them from the blocking pool, never from a runtime thread.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    gate: Arc<WriteGate>,
    /// Serializes snapshot saves: two writers would share the temporary
    /// file, and an older snapshot must never land after a newer one.
    snapshot_lock: Arc<Mutex<()>>,
    /// The last write that failed, until a write succeeds (`/v1/health`).
    problem: Arc<Mutex<Option<String>>>,
}

/// TEST ONLY: lets a test hold every write to a data dir (a disk that
/// stalls), or fail them (a full disk), to show what waits on the disk and
/// what a failed write tells the caller.
#[derive(Debug, Default)]
struct WriteGate {
    held: Mutex<bool>,
    released: Condvar,
    failing: std::sync::atomic::AtomicBool,
}

impl WriteGate {
    fn wait_open(&self) -> anyhow::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("no space left on device (injected by a test)");
        }
        Ok(())
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
            snapshot_lock: Arc::default(),
            problem: Arc::default(),
        })
    }

    /// TEST ONLY: makes every later write to this directory fail (a full
    /// disk) until called again with `false`.
    #[doc(hidden)]
    pub fn fail_writes_for_test(&self, failing: bool) {
        self.gate
            .failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
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
    ///
    /// The file holds `{"node_id": "..."}`, so a truncated file cannot pass
    /// for a shorter id (the agent would silently become another node and
    /// drop its registrations); such a file stops the start unless
    /// `--node-id` says who this node is. A plain-text file of an earlier
    /// version is read and rewritten in the new form.
    pub fn node_id(&self, explicit: Option<&str>) -> anyhow::Result<String> {
        let path = self.root.join(NODE_ID_FILE);
        if let Some(id) = explicit {
            write_atomic(&path, &node_id_file(id)?)?;
            return Ok(id.to_owned());
        }
        match fs::read_to_string(&path) {
            Ok(text) => {
                let id = parse_node_id_file(&text).map_err(|why| {
                    anyhow!(
                        "{} is corrupt ({why}); restore it, or pass --node-id with this node's id \
                         (its registrations and identity are kept under that id)",
                        path.display()
                    )
                })?;
                if !text.trim_start().starts_with('{') {
                    write_atomic(&path, &node_id_file(&id)?)?;
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("node-{:08x}", rand::random::<u32>());
                write_atomic(&path, &node_id_file(&id)?)?;
                Ok(id)
            }
            Err(e) => Err(anyhow!(
                "cannot read {}: {e}; fix its permissions or pass --node-id",
                path.display()
            )),
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
        let result = self
            .gate
            .wait_open()
            .and_then(|()| write_atomic(&self.root.join(REGISTRATIONS_FILE), &bytes));
        self.note(&result);
        result
    }

    /// The last write to this directory that failed, while no later write
    /// has succeeded.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note(&self, result: &anyhow::Result<()>) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        *problem = result.as_ref().err().map(|e| format!("{e:#}"));
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
                // Kept for inspection, never overwritten by the next save.
                let aside = self
                    .root
                    .join(format!("{SNAPSHOT_FILE}.corrupt-{}", std::process::id()));
                match fs::rename(&path, &aside) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), kept = %aside.display(), error = %e, "moved an unreadable catalog snapshot aside; starting empty: peers resend the catalog")
                    }
                    Err(rename) => {
                        tracing::warn!(path = %path.display(), error = %e, %rename, "an unreadable catalog snapshot cannot be moved aside; starting empty")
                    }
                }
            }
        }
        catalog
    }

    /// The QUIC addresses of the members this node last saw, to rejoin
    /// them on start (empty when none were saved or the file is unreadable:
    /// it is a hint, `--join` still works).
    pub fn members(&self) -> Vec<std::net::SocketAddr> {
        let path = self.root.join(MEMBERS_FILE);
        let Ok(bytes) = fs::read(&path) else {
            return Vec::new();
        };
        match serde_json::from_slice::<Vec<std::net::SocketAddr>>(&bytes) {
            Ok(mut addrs) => {
                addrs.truncate(MAX_SAVED_MEMBERS);
                addrs
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable list of saved members; only --join is used to find the cluster");
                Vec::new()
            }
        }
    }

    /// Saves the members' addresses (at most [`MAX_SAVED_MEMBERS`]).
    /// Blocks: call it from the blocking pool. Not a write a caller waits
    /// for, so a failure does not mark the data dir degraded.
    pub fn save_members(&self, addrs: &[std::net::SocketAddr]) -> anyhow::Result<()> {
        let addrs = &addrs[..addrs.len().min(MAX_SAVED_MEMBERS)];
        let bytes = serde_json::to_vec_pretty(addrs)?;
        write_atomic(&self.root.join(MEMBERS_FILE), &bytes)
    }

    /// Saves a catalog snapshot of the records `records` returns, taken
    /// once no other snapshot save runs (so the newest always lands last).
    /// Blocks: call it from the blocking pool.
    pub fn save_snapshot<T>(
        &self,
        records: impl FnOnce() -> (T, Vec<Record>),
    ) -> anyhow::Result<T> {
        let _one_at_a_time = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (taken_at, records) = records();
        let result = codec::encode(&records)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|bytes| {
                self.gate.wait_open()?;
                write_atomic(&self.root.join(SNAPSHOT_FILE), &bytes)
            });
        self.note(&result);
        result.map(|()| taken_at)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeIdFile {
    node_id: String,
}

fn node_id_file(id: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(&NodeIdFile {
        node_id: id.to_owned(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The id in a node-id file: JSON, or the plain text of earlier versions.
fn parse_node_id_file(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("it is empty".to_owned());
    }
    if trimmed.starts_with('{') {
        let file: NodeIdFile = serde_json::from_str(trimmed).map_err(|e| e.to_string())?;
        return Ok(file.node_id);
    }
    Ok(trimmed.to_owned())
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
    result.map_err(|e| {
        let advice = write_advice(&e);
        anyhow::Error::new(e).context(format!("cannot write {}; {advice}", path.display()))
    })
}

/// What to do about a failed write, by its cause: issue 21 saw an agent out
/// of file descriptors blame free space.
pub fn write_advice(error: &std::io::Error) -> &'static str {
    if crate::server::out_of_descriptors(error) {
        return "the agent is out of file descriptors (too many open connections?): raise the limit (ulimit -n, LimitNOFILE) or lower --max-connections";
    }
    match error.raw_os_error() {
        // ENOSPC, EDQUOT
        Some(28 | 122) => "the data dir's filesystem is full: free space there",
        // EACCES, EPERM, EROFS
        Some(13 | 1 | 30) => "the data dir is not writable: fix its permissions or mount",
        _ => "check free space and permissions in the data dir",
    }
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
        assert!(fs::read_to_string(dir.join(NODE_ID_FILE))
            .expect("node-id file")
            .starts_with('{'));
        let again = DataDir::open(&dir).expect("reopen");
        assert_eq!(again.node_id(None).expect("id"), id);
        let g2 = again.next_generation(5).expect("gen");
        assert!(g2 > g1);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_truncated_node_id_stops_the_start_unless_the_flag_says_who() {
        let dir = std::env::temp_dir().join(format!("gossamer-persist-{}", rand::random::<u64>()));
        let data = DataDir::open(&dir).expect("open");
        data.node_id(Some("node-1234")).expect("written");
        let full = fs::read(dir.join(NODE_ID_FILE)).expect("read");
        fs::write(dir.join(NODE_ID_FILE), &full[..8]).expect("truncate");
        let error = data.node_id(None).expect_err("a truncated id is refused");
        assert!(error.to_string().contains("--node-id"), "{error}");
        assert_eq!(data.node_id(Some("node-1234")).expect("flag"), "node-1234");
        assert_eq!(data.node_id(None).expect("repaired"), "node-1234");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_plain_text_node_id_of_an_earlier_version_is_kept() {
        let dir = std::env::temp_dir().join(format!("gossamer-persist-{}", rand::random::<u64>()));
        let data = DataDir::open(&dir).expect("open");
        fs::write(dir.join(NODE_ID_FILE), "node-old").expect("legacy file");
        assert_eq!(data.node_id(None).expect("legacy"), "node-old");
        assert_eq!(data.node_id(None).expect("rewritten"), "node-old");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_snapshot_is_moved_aside_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("gossamer-persist-{}", rand::random::<u64>()));
        let data = DataDir::open(&dir).expect("open");
        fs::write(dir.join(SNAPSHOT_FILE), b"\x01garbage").expect("corrupt");
        assert!(data.snapshot().is_empty());
        let kept: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(kept.len(), 1, "the corrupt snapshot is kept aside");
        let _ = fs::remove_dir_all(dir);
    }
}
