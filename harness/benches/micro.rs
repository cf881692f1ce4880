//! Micro-benchmarks of the per-test hot paths: a snapshot of a process with
//! 64 and 1,000 open fds, and the counting allocator against the system
//! allocator (one thread, and two threads at once). Medians of repeated
//! batches; run with `cargo bench -p leakcheck`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use leakcheck::diff::{Baseline, Delta};
use leakcheck::snapshot;
use leakcheck::Alloc;

/// Median time of one call of `f`, over `batches` batches of `per_batch` calls.
fn median(batches: usize, per_batch: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..batches)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed() / per_batch as u32
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn snapshot_with_open_fds(count: usize) -> Duration {
    let files: Vec<std::fs::File> = (0..count).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    let pid = std::process::id() as i32;
    let baseline = Baseline::of(&snapshot::take(pid).unwrap());
    let time = median(31, 20, || {
        let delta = Delta::between(&baseline, snapshot::take_since(pid, Some(&baseline)).unwrap());
        black_box(delta);
    });
    drop(files);
    time
}

fn alloc_free(allocator: &dyn GlobalAlloc, rounds: usize) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    for _ in 0..rounds {
        // SAFETY: a valid non-zero layout; the block is freed with the same layout.
        unsafe {
            let block = allocator.alloc(layout);
            black_box(block);
            allocator.dealloc(block, layout);
        }
    }
}

/// Nanoseconds per alloc + free pair, one batch of `threads` threads at once
/// (as a float: whole nanoseconds are too coarse here).
fn per_op(allocator: &'static (dyn GlobalAlloc + Sync), threads: usize) -> f64 {
    const ROUNDS: usize = 1_000_000;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| alloc_free(allocator, ROUNDS));
        }
    });
    start.elapsed().as_secs_f64() * 1e9 / ROUNDS as f64
}

/// Medians of `System` and `Alloc` per pair and of their ratio, over rounds
/// that measure both back to back (in alternating order), so that a slow
/// moment of this shared machine weighs on both sides of a ratio.
fn compare(threads: usize) -> (f64, f64, f64) {
    static SYSTEM: System = System;
    static COUNTING: Alloc = Alloc;
    let rounds: Vec<(f64, f64)> = (0..21)
        .map(|round| {
            if round % 2 == 0 {
                let system = per_op(&SYSTEM, threads);
                (system, per_op(&COUNTING, threads))
            } else {
                let counting = per_op(&COUNTING, threads);
                (per_op(&SYSTEM, threads), counting)
            }
        })
        .collect();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut ratios: Vec<f64> = rounds.iter().map(|(system, counting)| counting / system).collect();
    let ratio = median(&mut ratios);
    let mut system: Vec<f64> = rounds.iter().map(|round| round.0).collect();
    let mut counting: Vec<f64> = rounds.iter().map(|round| round.1).collect();
    (median(&mut system), median(&mut counting), ratio)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    println!("snapshot of this process (fds, threads, children) and its delta, median:");
    for count in [64, 1000] {
        println!("  {count:>5} open fds: {:>8.1} us", snapshot_with_open_fds(count).as_secs_f64() * 1e6);
    }
    println!("alloc + free of 32 bytes, medians of 21 rounds measuring both back to back:");
    let (system_one, counting_one, ratio_one) = compare(1);
    println!("  System, 1 thread:             {system_one:>5.2} ns");
    println!("  leakcheck::Alloc, 1 thread:   {counting_one:>5.2} ns  ({ratio_one:.2}x System; goal: at most 1.25x)");
    let (system_two, counting_two, ratio_two) = compare(2);
    println!("  System, 2 threads at once:    {system_two:>5.2} ns");
    println!(
        "  leakcheck::Alloc, 2 threads:  {counting_two:>5.2} ns  ({ratio_two:.2}x System; shared cache lines would show as a ratio above the 1-thread one)"
    );
}
