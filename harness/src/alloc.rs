//! [`Alloc`]: a counting global allocator over the system allocator.
//!
//! Live bytes and blocks are kept in 64 cache-line-sized shards; each thread
//! updates the shard it was given on its first allocation, with relaxed
//! atomics, so two threads almost never touch the same cache line and there
//! is no lock on the hot path. A reading sums the shards (an allocation made
//! on one thread and freed on another moves two shards in opposite
//! directions; the sum is exact).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

/// The counting allocator. `leakcheck::main!()` installs it; a default-harness
/// test target installs it with one line:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: leakcheck::Alloc = leakcheck::Alloc;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Alloc;

const SHARD_COUNT: usize = 64;

#[repr(align(128))]
struct Shard {
    bytes: AtomicI64,
    blocks: AtomicI64,
}

#[expect(clippy::declare_interior_mutable_const, reason = "used only to initialise the static array")]
const EMPTY_SHARD: Shard = Shard { bytes: AtomicI64::new(0), blocks: AtomicI64::new(0) };
static SHARDS: [Shard; SHARD_COUNT] = [EMPTY_SHARD; SHARD_COUNT];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // A const-initialised Cell without destructor: reading it never allocates,
    // which an allocator requires.
    static THIS_THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> &'static Shard {
    let index = THIS_THREAD_SHARD
        .try_with(|cell| {
            let mut index = cell.get();
            if index == usize::MAX {
                index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARD_COUNT;
                cell.set(index);
            }
            index
        })
        .unwrap_or(0); // during thread teardown
    &SHARDS[index]
}

fn count(bytes: i64, blocks: i64) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let shard = shard();
    shard.bytes.fetch_add(bytes, Ordering::Relaxed);
    shard.blocks.fetch_add(blocks, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// only adds bookkeeping that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as i64 - layout.size() as i64, 0);
        }
        new
    }
}

/// Live heap of the process, as counted by [`Alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes allocated and not yet freed.
    pub bytes: i64,
    /// Blocks allocated and not yet freed.
    pub blocks: i64,
}

/// The live heap, or `None` when [`Alloc`] is not the global allocator (then
/// the heap is "not measured", never "0 leaked").
pub fn heap_usage() -> Option<HeapUsage> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    let mut usage = HeapUsage { bytes: 0, blocks: 0 };
    for shard in &SHARDS {
        usage.bytes += shard.bytes.load(Ordering::Relaxed);
        usage.blocks += shard.blocks.load(Ordering::Relaxed);
    }
    Some(usage)
}
