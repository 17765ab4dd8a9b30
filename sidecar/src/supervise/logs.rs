//! Logs of the supervised copies: every line a copy writes on stdout or
//! stderr (and the supervisor's own notes about it) is stamped and appended
//! to `<data dir>/supervise/<service>/logs/<instance>.log`, rotated by size.
//!
//! A stamp is microseconds since the Unix epoch, strictly increasing across
//! every copy of one agent ([`LogClock`]), so lines of several copies merge in
//! time order by sorting, and a stamp doubles as the cursor of `logs -f`.
//!
//! On disk a line is `<stamp> <stream> <text>\n`; the reader skips a last
//! line still being written and anything it cannot parse.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Longest line kept; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;
/// Most lines one answer carries.
pub const MAX_LINES: usize = 10_000;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The process's standard output.
    Out,
    /// The process's standard error.
    Err,
    /// The supervisor (start, exit, restart notes).
    Sup,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
            Stream::Sup => "sup",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "out" => Some(Stream::Out),
            "err" => Some(Stream::Err),
            "sup" => Some(Stream::Sup),
            _ => None,
        }
    }
}

/// One line of a copy's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Microseconds since the Unix epoch, unique within the agent.
    pub ts_us: u64,
    /// Instance id of the copy.
    pub instance: String,
    /// stdout, stderr or the supervisor.
    pub stream: Stream,
    /// The text, without its newline.
    pub text: String,
}

/// `GET /v1/supervise/{name}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsView {
    /// Service name.
    pub service: String,
    /// Lines in time order.
    pub lines: Vec<LogLine>,
    /// Pass as `after` to get only newer lines.
    pub cursor: u64,
    /// True when more lines after `cursor` are already there.
    pub more: bool,
}

// === impl LogClock ===

/// Stamps for log lines: strictly increasing, and watched by followers.
#[derive(Debug)]
pub struct LogClock {
    last: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for LogClock {
    fn default() -> Self {
        Self {
            last: AtomicU64::new(0),
            changed: watch::channel(0).0,
        }
    }
}

impl LogClock {
    /// A new stamp: the wall clock in µs, or one more than the last stamp.
    pub fn stamp(&self) -> u64 {
        let now = wall_us();
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(previous + 1)
    }

    /// Tells followers a line up to `stamp` is on disk.
    pub fn written(&self, stamp: u64) {
        self.changed.send_modify(|s| *s = (*s).max(stamp));
    }

    /// Changes when lines are written.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// === impl LogFile ===

/// An append-only log file rotated by size: `x.log` → `x.log.1` → … →
/// `x.log.<keep>`, the oldest dropped.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl LogFile {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            max_bytes,
            keep,
        })
    }

    /// Appends one stamped line, rotating first when it would not fit.
    pub fn append(&mut self, stamp: u64, stream: Stream, text: &[u8]) -> io::Result<()> {
        let mut line = format!("{stamp} {} ", stream.as_str()).into_bytes();
        // Control characters other than tab would garble a terminal; a
        // newline inside would split the line.
        line.extend(
            text.iter()
                .map(|&b| if b < 0x20 && b != b'\t' { b' ' } else { b }),
        );
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(numbered(n), numbered(n + 1));
            }
            fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// What a copy's log writer receives.
pub type LogSender = mpsc::Sender<(Stream, Vec<u8>)>;

/// Most lines written in one blocking batch.
const BATCH: usize = 256;

/// Writes what arrives on `lines` to `file` until every sender is gone.
/// Lines are stamped as they arrive and written in batches on the blocking
/// pool, so a chatty process never stalls the agent's own tasks.
pub async fn write_loop(
    mut file: LogFile,
    clock: std::sync::Arc<LogClock>,
    mut lines: mpsc::Receiver<(Stream, Vec<u8>)>,
) {
    let mut failed = false;
    let mut batch = Vec::with_capacity(BATCH);
    while lines.recv_many(&mut batch, BATCH).await > 0 {
        let stamped: Vec<(u64, Stream, Vec<u8>)> = batch
            .drain(..)
            .map(|(stream, text)| (clock.stamp(), stream, text))
            .collect();
        let last = stamped.last().map_or(0, |(stamp, _, _)| *stamp);
        let written = tokio::task::spawn_blocking(move || {
            let result = stamped
                .iter()
                .try_for_each(|(stamp, stream, text)| file.append(*stamp, *stream, text));
            (file, result)
        })
        .await;
        let Ok((returned, result)) = written else {
            return;
        };
        file = returned;
        match result {
            Ok(()) => {
                failed = false;
                clock.written(last);
            }
            Err(e) if !failed => {
                // Warn once per failure streak, not once per line.
                failed = true;
                tracing::warn!(path = %file.path.display(), error = %e, "cannot write a supervised process's log; check the data dir's free space");
            }
            Err(_) => {}
        }
    }
}

/// Reads `from` line by line into `to` until end of file, splitting lines
/// longer than [`MAX_LINE`].
pub async fn pump(mut from: impl AsyncRead + Unpin, stream: Stream, to: LogSender) {
    let mut buffer = vec![0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buffer[..n] {
            if byte == b'\n' {
                let done = std::mem::take(&mut line);
                if to.send((stream, strip_cr(done))).await.is_err() {
                    return;
                }
            } else {
                line.push(byte);
                if line.len() >= MAX_LINE {
                    let done = std::mem::take(&mut line);
                    if to.send((stream, done)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        let _ = to.send((stream, strip_cr(line))).await;
    }
}

fn strip_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

// === reading ===

/// Parses one stored line: (stamp, stream, text).
pub fn parse_line(line: &str) -> Option<(u64, Stream, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((stamp.parse().ok()?, Stream::parse(stream)?, text))
}

/// Complete lines of `path` with a stamp above `after` (oldest first), and
/// whether the file holds a line at or before `after`.
fn read_file(path: &Path, instance: &str, after: u64) -> (Vec<LogLine>, bool) {
    let Ok(bytes) = fs::read(path) else {
        return (Vec::new(), false);
    };
    let text = String::from_utf8_lossy(&bytes);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut lines = Vec::new();
    let mut reaches_back = false;
    for raw in complete.split('\n') {
        let Some((ts_us, stream, text)) = parse_line(raw) else {
            continue;
        };
        if ts_us <= after {
            reaches_back = true;
            continue;
        }
        lines.push(LogLine {
            ts_us,
            instance: instance.to_owned(),
            stream,
            text: text.to_owned(),
        });
    }
    (lines, reaches_back)
}

/// The instances that have a log in `dir`, with their files newest first.
fn log_sets(dir: &Path) -> Vec<(String, Vec<PathBuf>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sets: std::collections::BTreeMap<String, Vec<(u32, PathBuf)>> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((instance, suffix)) = name.split_once(".log") else {
            continue;
        };
        let generation = match suffix.strip_prefix('.') {
            None if suffix.is_empty() => 0,
            Some(n) => match n.parse::<u32>() {
                Ok(n) => n,
                Err(_) => continue,
            },
            None => continue,
        };
        sets.entry(instance.to_owned())
            .or_default()
            .push((generation, entry.path()));
    }
    sets.into_iter()
        .map(|(instance, mut files)| {
            files.sort();
            (instance, files.into_iter().map(|(_, p)| p).collect())
        })
        .collect()
}

/// Lines of every copy logged in `dir` after `after`, merged in time order:
/// the last `tail` of them when given, else the first [`MAX_LINES`].
pub fn read(dir: &Path, service: &str, after: u64, tail: Option<usize>) -> LogsView {
    let want = tail.unwrap_or(usize::MAX).min(MAX_LINES);
    let mut all = Vec::new();
    for (instance, files) in log_sets(dir) {
        let mut newest_first: Vec<Vec<LogLine>> = Vec::new();
        let mut count = 0;
        for file in files {
            let (lines, reaches_back) = read_file(&file, &instance, after);
            count += lines.len();
            newest_first.push(lines);
            // Older files only hold older lines.
            if reaches_back || (tail.is_some() && count >= want) {
                break;
            }
        }
        all.extend(newest_first.into_iter().rev().flatten());
    }
    all.sort_by_key(|l| l.ts_us);
    let newest = all.last().map_or(after, |l| l.ts_us);
    let (lines, more, cursor) = if tail.is_some() {
        // The lines left out are older than the tail: follow from the newest.
        let skip = all.len().saturating_sub(want);
        (all.split_off(skip), false, newest)
    } else {
        let more = all.len() > want;
        all.truncate(want);
        let cursor = all.last().map_or(after, |l| l.ts_us);
        (all, more, cursor)
    };
    LogsView {
        service: service.to_owned(),
        cursor,
        lines,
        more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gossamer-logs-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn stamps_strictly_increase() {
        let clock = LogClock::default();
        let mut last = 0;
        for _ in 0..10_000 {
            let s = clock.stamp();
            assert!(s > last);
            last = s;
        }
    }

    #[test]
    fn lines_parse_back_and_garbage_is_skipped() {
        assert_eq!(
            parse_line("12 out hello world"),
            Some((12, Stream::Out, "hello world"))
        );
        assert_eq!(parse_line("12 err"), Some((12, Stream::Err, "")));
        assert_eq!(parse_line("x out hi"), None);
        assert_eq!(parse_line("12 foo hi"), None);
    }

    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = scratch("rotate");
        let mut log = LogFile::open(dir.join("a-1.log"), 200, 2).expect("open");
        let clock = LogClock::default();
        for i in 0..100 {
            log.append(clock.stamp(), Stream::Out, format!("line {i}").as_bytes())
                .expect("append");
        }
        let names: Vec<String> = fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for name in ["a-1.log", "a-1.log.1", "a-1.log.2"] {
            let size = fs::metadata(dir.join(name)).expect("file").len();
            assert!(size <= 200, "{name} is {size} bytes");
        }
        let view = read(&dir, "a", 0, None);
        assert_eq!(view.lines.last().map(|l| l.text.as_str()), Some("line 99"));
        // Lines are contiguous: rotation lost nothing but the oldest files.
        let first: usize = view.lines[0].text["line ".len()..].parse().expect("n");
        assert_eq!(view.lines.len(), 100 - first);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn copies_merge_in_time_order_and_the_cursor_follows() {
        let dir = scratch("merge");
        let clock = LogClock::default();
        let mut a = LogFile::open(dir.join("svc-n-1.log"), 1 << 20, 3).expect("open");
        let mut b = LogFile::open(dir.join("svc-n-2.log"), 1 << 20, 3).expect("open");
        for i in 0..10 {
            let (file, who) = if i % 3 == 0 {
                (&mut a, "a")
            } else {
                (&mut b, "b")
            };
            file.append(clock.stamp(), Stream::Out, format!("{who}{i}").as_bytes())
                .expect("append");
        }
        // A line being written (no newline yet) is not shown.
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join("svc-n-1.log"))
            .and_then(|mut f| f.write_all(b"99999999999999999 out partial"))
            .expect("partial");
        let view = read(&dir, "svc", 0, None);
        let texts: Vec<&str> = view.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            ["a0", "b1", "b2", "a3", "b4", "b5", "a6", "b7", "b8", "a9"]
        );
        assert_eq!(view.lines[0].instance, "svc-n-1");
        assert_eq!(view.lines[1].instance, "svc-n-2");
        let tail = read(&dir, "svc", 0, Some(3));
        let texts: Vec<&str> = tail.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["b7", "b8", "a9"]);
        assert!(read(&dir, "svc", tail.cursor, None).lines.is_empty());
        // `--tail 0` shows nothing yet and follows from the newest line.
        let none = read(&dir, "svc", 0, Some(0));
        assert!(none.lines.is_empty());
        assert_eq!(none.cursor, tail.cursor);
        b.append(clock.stamp(), Stream::Err, b"new")
            .expect("append");
        let newer = read(&dir, "svc", tail.cursor, None);
        assert_eq!(newer.lines.len(), 1);
        assert_eq!(newer.lines[0].stream, Stream::Err);
        let _ = fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn pump_splits_lines_and_long_output() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 10]);
        pump(&input[..], Stream::Err, tx).await;
        let mut got = Vec::new();
        while let Some((_, line)) = rx.recv().await {
            got.push(line.len());
        }
        assert_eq!(got, [3, 3, MAX_LINE, 10]);
    }
}
