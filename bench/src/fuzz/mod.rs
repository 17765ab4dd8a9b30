//! `bench fuzz`: every decoder a peer can reach, fed millions of hostile
//! inputs on stable Rust (cargo-fuzz needs nightly; this needs nothing).
//!
//! Per decoder: random byte strings of edge lengths, and mutations of
//! valid encodings of random values (see `inputs`). Every input that
//! decodes must survive the round trip (see `targets`); no input may
//! panic; and the heap one decode holds at its peak is measured when the
//! binary installs a counting allocator (`main.rs` does), against the
//! bound `mesh-proto/tests/decode_props.rs` states: 128 bytes per input
//! byte plus 64 KiB.

mod inputs;
mod swim;
mod targets;
mod values;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::report::{self, Table};
pub use targets::Outcome;

/// Heap a decode may hold per input byte (as in `decode_props.rs`).
pub const HEAP_PER_BYTE: usize = 128;
/// Heap any decode may hold whatever its input.
pub const HEAP_SLACK: usize = 64 * 1024;
/// Failing inputs kept per decoder in the results.
const KEPT_FAILURES: usize = 8;
/// Bytes of a failing input shown (in hex) in the results.
const SHOWN_BYTES: usize = 512;

thread_local! {
    /// Where the last panic happened, noted by the run's panic hook.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Measures the heap held during a piece of work, on the calling thread.
pub trait HeapMeter {
    /// Starts a measurement: the peak is reset to what is live now.
    fn start(&self);
    /// The most heap held since `start`, beyond what was live then.
    fn peak(&self) -> usize;
}

impl dyn HeapMeter + '_ {
    /// Runs `f`; returns its result and the peak heap it held.
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        self.start();
        let out = f();
        (out, self.peak())
    }
}

/// The meter of a binary without a counting allocator: measures nothing.
pub struct NoMeter;

impl HeapMeter for NoMeter {
    fn start(&self) {}
    fn peak(&self) -> usize {
        0
    }
}

/// Options of `bench fuzz`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FuzzArgs {
    /// Inputs per decoder.
    #[arg(long, default_value_t = 10_000_000)]
    pub inputs: u64,
    /// Seed of the random inputs; the same seed replays the same inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fuzz only these decoders (comma-separated names from the table).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/fuzz.json"))]
    pub json: PathBuf,
}

/// An input that panicked or failed its round trip.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// `panic` or `round trip`.
    pub kind: &'static str,
    /// The panic message or what did not round-trip.
    pub message: String,
    /// Length of the input.
    pub input_len: usize,
    /// Its first bytes, in hex.
    pub input_hex: String,
}

/// One decoder's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DecoderResult {
    /// Short name.
    pub name: &'static str,
    /// What was fuzzed.
    pub decoder: &'static str,
    /// Largest input the agent hands it.
    pub limit: usize,
    /// Inputs fed.
    pub inputs: u64,
    /// Of those, random byte strings.
    pub random_inputs: u64,
    /// Of those, mutated valid encodings.
    pub mutated_inputs: u64,
    /// Inputs that decoded (and round-tripped).
    pub decoded: u64,
    /// Inputs the decoder refused.
    pub rejected: u64,
    /// Of those, inputs refused in the body, past the envelope (version
    /// byte, size limit, length prefix).
    pub rejected_deep: u64,
    /// Share of the inputs that reached the body: decoded or refused there.
    pub reached_body: f64,
    /// Inputs that decoded but did not round-trip.
    pub round_trip_failures: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Most heap one decode held at once, in bytes (`None`: not measured).
    pub max_heap_bytes: Option<usize>,
    /// Length of the input that held it.
    pub max_heap_input_len: usize,
    /// Decodes that held more than the bound (128 B per input byte + 64 KiB).
    pub over_heap_bound: u64,
    /// Seconds spent, making inputs included.
    pub seconds: f64,
    /// Inputs per second, making inputs included.
    pub inputs_per_sec: f64,
    /// The first failing inputs.
    pub failures: Vec<Failure>,
}

impl DecoderResult {
    /// Inputs that found a bug.
    pub fn bugs(&self) -> u64 {
        self.round_trip_failures + self.panics + self.over_heap_bound
    }
}

/// Runs `bench fuzz`. Every decoder runs to the end; then the run fails if
/// any input panicked, failed its round trip or held too much heap.
pub fn run(args: &FuzzArgs, meter: &dyn HeapMeter) -> anyhow::Result<Vec<DecoderResult>> {
    let chosen: Vec<targets::Target> = targets::all()
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|n| n == t.name))
        .collect();
    if chosen.len() < args.only.len().max(1) {
        let names: Vec<&str> = targets::all().iter().map(|t| t.name).collect();
        bail!(
            "--only {} names no decoder (or one twice); choose from {}",
            args.only.join(","),
            names.join(", ")
        );
    }
    let measured = meter_works(meter);
    // Panics are expected findings, caught and counted per input; the
    // default hook would print each one, so this one only notes where.
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let at = info.location().map(ToString::to_string);
        PANIC_AT.with(|p| *p.borrow_mut() = at);
    }));
    let results: Vec<DecoderResult> = chosen
        .iter()
        .map(|t| {
            let r = fuzz_one(t, args, meter, measured);
            eprintln!(
                "fuzz: {} done: {} inputs, {} bugs, {:.0} inputs/s",
                r.name,
                r.inputs,
                r.bugs(),
                r.inputs_per_sec
            );
            r
        })
        .collect();
    panic::set_hook(hook);
    println!("{}", table(&results).render());
    write_json(args, &results)?;
    let bugs: u64 = results.iter().map(DecoderResult::bugs).sum();
    if bugs > 0 {
        bail!(
            "{bugs} inputs panicked, failed their round trip or held too much heap; \
             the first of each are in {}",
            args.json.display()
        );
    }
    Ok(results)
}

/// True when the meter sees an allocation: a binary without the counting
/// allocator reports no heap rather than a maximum of zero.
fn meter_works(meter: &dyn HeapMeter) -> bool {
    let (_, peak) = meter.measure(|| std::hint::black_box(vec![0u8; 4096]));
    peak >= 4096
}

/// A seed per decoder, so `--only` replays the same inputs as a full run.
fn seed_for(name: &str, seed: u64) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(SHOWN_BYTES)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn fuzz_one(
    target: &targets::Target,
    args: &FuzzArgs,
    meter: &dyn HeapMeter,
    measured: bool,
) -> DecoderResult {
    let rng = SmallRng::seed_from_u64(seed_for(target.name, args.seed));
    let mut source = inputs::Inputs::new(rng, target.limit, target.versioned, target.valid);
    let mut r = DecoderResult {
        name: target.name,
        decoder: target.decoder,
        limit: target.limit,
        inputs: 0,
        random_inputs: 0,
        mutated_inputs: 0,
        decoded: 0,
        rejected: 0,
        rejected_deep: 0,
        reached_body: 0.0,
        round_trip_failures: 0,
        panics: 0,
        max_heap_bytes: measured.then_some(0),
        max_heap_input_len: 0,
        over_heap_bound: 0,
        seconds: 0.0,
        inputs_per_sec: 0.0,
        failures: Vec::new(),
    };
    let mut input = Vec::new();
    let started = Instant::now();
    for _ in 0..args.inputs {
        match source.next(&mut input) {
            inputs::Kind::Random => r.random_inputs += 1,
            inputs::Kind::Mutant => r.mutated_inputs += 1,
            inputs::Kind::Valid => {}
        }
        r.inputs += 1;
        let checked = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(&input, meter)));
        let failure = match checked {
            Ok((outcome, heap)) => {
                if measured {
                    note_heap(&mut r, &input, heap);
                }
                match outcome {
                    Outcome::Decoded => {
                        r.decoded += 1;
                        source.keep(&input);
                        None
                    }
                    Outcome::Rejected { deep } => {
                        r.rejected += 1;
                        r.rejected_deep += u64::from(deep);
                        None
                    }
                    Outcome::RoundTripFailed(message) => {
                        r.round_trip_failures += 1;
                        Some(("round trip", message))
                    }
                }
            }
            Err(payload) => {
                r.panics += 1;
                let at = PANIC_AT.with(|p| p.borrow_mut().take());
                let message = panic_message(payload.as_ref());
                Some((
                    "panic",
                    format!("{message} (at {})", at.as_deref().unwrap_or("?")),
                ))
            }
        };
        if let Some((kind, message)) = failure {
            keep_failure(&mut r, kind, message, &input);
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.inputs_per_sec = r.inputs as f64 / r.seconds.max(1e-9);
    r.reached_body = (r.decoded + r.rejected_deep) as f64 / r.inputs.max(1) as f64;
    r
}

fn note_heap(r: &mut DecoderResult, input: &[u8], heap: usize) {
    if r.max_heap_bytes.is_some_and(|max| heap > max) {
        r.max_heap_bytes = Some(heap);
        r.max_heap_input_len = input.len();
    }
    let bound = HEAP_PER_BYTE * input.len() + HEAP_SLACK;
    if heap > bound {
        r.over_heap_bound += 1;
        let message = format!(
            "decoding {} bytes held {heap} bytes of heap; the bound is {bound}",
            input.len()
        );
        keep_failure(r, "heap", message, input);
    }
}

fn keep_failure(r: &mut DecoderResult, kind: &'static str, message: String, input: &[u8]) {
    if r.failures.len() < KEPT_FAILURES {
        r.failures.push(Failure {
            kind,
            message,
            input_len: input.len(),
            input_hex: hex(input),
        });
    }
}

fn table(results: &[DecoderResult]) -> Table {
    let mut t = Table::new(&[
        "decoder",
        "inputs",
        "decoded ok",
        "rejected",
        "reached body",
        "round-trip failures",
        "panics",
        "max heap / decode",
        "over heap bound",
        "inputs/s",
    ]);
    for r in results {
        t.row(vec![
            r.name.to_owned(),
            r.inputs.to_string(),
            r.decoded.to_string(),
            r.rejected.to_string(),
            format!("{:.0} %", 100.0 * r.reached_body),
            r.round_trip_failures.to_string(),
            r.panics.to_string(),
            r.max_heap_bytes.map_or_else(
                || "not measured".to_owned(),
                |b| format!("{b} B ({} B input)", r.max_heap_input_len),
            ),
            r.over_heap_bound.to_string(),
            format!("{:.0}", r.inputs_per_sec),
        ]);
    }
    t
}

fn write_json(args: &FuzzArgs, results: &[DecoderResult]) -> anyhow::Result<()> {
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; pass --json with a writable path",
                dir.display()
            )
        })?;
    }
    let document = report::Document {
        scenario: "fuzz",
        date: report::utc_now(),
        machine: report::machine(),
        commit: report::commit(),
        args,
        results: &results,
    };
    let text = serde_json::to_string_pretty(&document)?;
    std::fs::write(&args.json, text + "\n").with_context(|| {
        format!(
            "cannot write {}; pass --json with a writable path",
            args.json.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(inputs: u64) -> FuzzArgs {
        FuzzArgs {
            inputs,
            seed: 1,
            only: Vec::new(),
            json: PathBuf::new(),
        }
    }

    fn target(check: fn(&[u8], &dyn HeapMeter) -> (Outcome, usize)) -> targets::Target {
        targets::Target {
            name: "test",
            decoder: "a decoder of tests",
            limit: 64,
            versioned: true,
            valid: |_| vec![1, 2, 3],
            check,
        }
    }

    #[test]
    fn panics_and_round_trip_failures_are_counted_and_kept() {
        let panicking = target(|input, _| {
            if input.len() % 2 == 0 {
                panic!("boom on {} bytes", input.len());
            }
            (Outcome::Rejected { deep: true }, 0)
        });
        let r = fuzz_one(&panicking, &args(200), &NoMeter, false);
        assert_eq!(r.inputs, 200);
        assert!(r.panics > 0 && r.panics < 200, "{} panics", r.panics);
        assert_eq!(r.panics + r.rejected, 200);
        assert_eq!(r.failures.len(), KEPT_FAILURES);
        assert!(
            r.failures[0].message.starts_with("boom on"),
            "{:?}",
            r.failures[0]
        );
        assert_eq!(r.max_heap_bytes, None, "no meter, no figure");

        let lossy = target(|_, _| (Outcome::RoundTripFailed("changed".into()), 0));
        let r = fuzz_one(&lossy, &args(10), &NoMeter, false);
        assert_eq!((r.round_trip_failures, r.bugs()), (10, 10));
        assert_eq!(r.failures[0].kind, "round trip");
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let check = target(|input, _| match input.first() {
            Some(1) => (Outcome::Decoded, 0),
            _ => (Outcome::Rejected { deep: false }, 0),
        });
        let a = fuzz_one(&check, &args(5_000), &NoMeter, false);
        let b = fuzz_one(&check, &args(5_000), &NoMeter, false);
        assert_eq!((a.decoded, a.rejected), (b.decoded, b.rejected));
        assert!(a.decoded > 0 && a.rejected > 0);
    }
}
