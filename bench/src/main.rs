//! `cargo run --release -p bench -- <scenario>`: see `bench/README.md`.

use clap::{Parser, Subcommand};

/// Gossamer benchmarks: each scenario prints a table and writes JSON to bench/results/.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// DNS answer latency (p50/p99) under an open-loop load of queries/s.
    Dns(bench::dns::DnsArgs),
    /// Upstream choice: requirements honoured, tail latency against round robin and random.
    Balance(bench::balance::BalanceArgs),
    /// Proxy overhead: direct, one sidecar, two sidecars over QUIC, nginx, HAProxy.
    Proxy(bench::proxy::ProxyArgs),
    /// N agents in one process: spread, failure detection, traffic, memory.
    Gossip(bench::gossip::GossipArgs),
    /// gRPC unary calls: direct, one sidecar, two sidecars over QUIC.
    Grpc(bench::grpc::GrpcArgs),
    /// Per-request selection cost against catalog and member-table size.
    Select(bench::select::SelectArgs),
    /// foca and the catalog merge over an in-memory network with loss and delay.
    Sim(bench::sim::SimArgs),
    /// Every decoder a peer can reach, fed millions of random and mutated inputs.
    Fuzz(bench::fuzz::FuzzArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Balance(args) => bench::balance::run(&args).map(|_| ()),
        Scenario::Proxy(args) => runtime()?.block_on(bench::proxy::run(&args)).map(|_| ()),
        Scenario::Gossip(args) => runtime()?.block_on(bench::gossip::run(&args)).map(|_| ()),
        Scenario::Dns(args) => runtime()?.block_on(bench::dns::run(&args)).map(|_| ()),
        Scenario::Grpc(args) => runtime()?.block_on(bench::grpc::run(&args)).map(|_| ()),
        Scenario::Sim(args) => bench::sim::run(&args).map(|_| ()),
        Scenario::Select(args) => bench::select::run(&args).map(|_| ()),
        Scenario::Fuzz(args) => {
            heap::COUNTING.store(true, std::sync::atomic::Ordering::Relaxed);
            bench::fuzz::run(&args, &heap::Meter).map(|_| ())
        }
    }
}

/// A counting global allocator, so `bench fuzz` can report the heap each
/// decode holds. The one `unsafe` of the bench crate, kept in the binary
/// (the library forbids it): it forwards every call to the system
/// allocator and, only once `COUNTING` is set, keeps two thread-local
/// counters. The other scenarios pay one relaxed load per allocation.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set by `bench fuzz` before it starts.
    pub static COUNTING: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
        static START: Cell<isize> = const { Cell::new(0) };
    }

    /// The system allocator, counting this thread's live bytes and their peak.
    pub struct Counting;

    fn note(delta: isize) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    fn size(bytes: usize) -> isize {
        isize::try_from(bytes).unwrap_or(isize::MAX)
    }

    // SAFETY: every call is forwarded unchanged to `System`; the counters
    // are const-initialised thread-local cells, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(size(layout.size()));
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(size(layout.size()));
            // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            note(-size(layout.size()));
            // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // Counted as if the old block lived until the new one exists.
            note(size(new_size));
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
            let out = unsafe { System.realloc(ptr, layout, new_size) };
            note(-size(layout.size()));
            out
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Reads the counters of the calling thread.
    pub struct Meter;

    impl bench::fuzz::HeapMeter for Meter {
        fn start(&self) {
            let live = LIVE.with(Cell::get);
            START.with(|start| start.set(live));
            PEAK.with(|peak| peak.set(live));
        }

        fn peak(&self) -> usize {
            let held = PEAK.with(Cell::get) - START.with(Cell::get);
            usize::try_from(held).unwrap_or(0)
        }
    }
}
