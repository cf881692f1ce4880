//! [`Alloc`]: a counting global allocator over the system allocator.
//!
//! Each thread claims a slot of its own (a cache line) on its first
//! allocation and keeps its counts there with plain loads and stores: no
//! atomic read-modify-write and no shared cache line on the hot path. Slots
//! are never given back (their counts stay part of the total after the
//! thread ends); once all are claimed, later threads share a few overflow
//! slots updated with atomic adds. A reading sums every slot: an allocation
//! made on one thread and freed on another moves two slots in opposite
//! directions, and the sum is exact.

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

const OWNED_SLOTS: usize = 256;
const SHARED_SLOTS: usize = 16;

#[repr(align(128))]
struct Slot {
    bytes: AtomicI64,
    blocks: AtomicI64,
}

#[expect(clippy::declare_interior_mutable_const, reason = "used only to initialise the static arrays")]
const EMPTY_SLOT: Slot = Slot { bytes: AtomicI64::new(0), blocks: AtomicI64::new(0) };
/// One per thread, written only by that thread.
static OWNED: [Slot; OWNED_SLOTS] = [EMPTY_SLOT; OWNED_SLOTS];
/// For threads that came after every owned slot was taken.
static SHARED: [Slot; SHARED_SLOTS] = [EMPTY_SLOT; SHARED_SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// On during an explain re-run: allocations go through dhat's recorder
/// (which itself allocates from `System`), so live blocks have sites.
static THROUGH_DHAT: AtomicBool = AtomicBool::new(false);

/// Routes allocations through dhat's recorder (a dhat profiler must be
/// running) or back to `System`. Blocks may be freed by either: dhat ignores
/// blocks it did not see allocated, and both end in `System`.
pub(crate) fn route_through_dhat(on: bool) {
    THROUGH_DHAT.store(on, Ordering::SeqCst);
}

/// Calls `$method` of the allocator under the counting: `System`, or
/// dhat's recorder over it (a plain branch, no dynamic dispatch).
macro_rules! inner {
    ($method:ident($($arg:expr),*)) => {
        if THROUGH_DHAT.load(Ordering::Relaxed) {
            dhat::Alloc.$method($($arg),*)
        } else {
            System.$method($($arg),*)
        }
    };
}

const UNCLAIMED: usize = usize::MAX;

thread_local! {
    // A const-initialised Cell without destructor: reading it never
    // allocates, which an allocator requires.
    static THIS_THREAD_SLOT: Cell<usize> = const { Cell::new(UNCLAIMED) };
}

#[inline]
fn count(bytes: i64, blocks: i64) {
    let index = THIS_THREAD_SLOT
        .try_with(|cell| {
            let mut index = cell.get();
            if index == UNCLAIMED {
                index = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
                INSTALLED.store(true, Ordering::Relaxed);
                cell.set(index);
            }
            index
        })
        .unwrap_or(OWNED_SLOTS); // during thread teardown: a shared slot
    match OWNED.get(index) {
        // Only this thread writes this slot, so load + store cannot lose an
        // update; readers may see a value a moment old, never a torn one.
        Some(slot) => {
            slot.bytes.store(slot.bytes.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
            slot.blocks.store(slot.blocks.load(Ordering::Relaxed) + blocks, Ordering::Relaxed);
        }
        None => {
            let slot = &SHARED[index % SHARED_SLOTS];
            slot.bytes.fetch_add(bytes, Ordering::Relaxed);
            slot.blocks.fetch_add(blocks, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` (directly or through dhat's
// recorder, which forwards to `System`) with the caller's arguments and only
// adds bookkeeping that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Alloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { inner!(alloc(layout)) };
        if !ptr.is_null() {
            count(layout.size() as i64, 1);
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let ptr = unsafe { inner!(alloc_zeroed(layout)) };
        if !ptr.is_null() {
            count(layout.size() as i64, 1);
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { inner!(dealloc(ptr, layout)) };
        count(-(layout.size() as i64), -1);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let new = unsafe { inner!(realloc(ptr, layout, new_size)) };
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
    let claimed = NEXT_SLOT.load(Ordering::Relaxed).min(OWNED_SLOTS);
    let mut usage = HeapUsage { bytes: 0, blocks: 0 };
    for slot in OWNED[..claimed].iter().chain(&SHARED) {
        usage.bytes += slot.bytes.load(Ordering::Relaxed);
        usage.blocks += slot.blocks.load(Ordering::Relaxed);
    }
    Some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Alloc is not this test binary's global allocator: only the direct
    // calls below are counted, so the totals are exact.
    #[test]
    fn counts_are_exact_across_threads_and_past_the_owned_slots() {
        let layout = Layout::from_size_align(48, 8).unwrap();
        let before = {
            // SAFETY: a valid layout, freed with the same layout.
            unsafe { Alloc.dealloc(Alloc.alloc(layout), layout) };
            heap_usage().unwrap()
        };
        // Allocated on 300 threads (more than the owned slots), freed on this one.
        let blocks: Vec<usize> = (0..300)
            .map(|_| {
                // SAFETY: a valid layout; freed below with the same layout.
                std::thread::spawn(move || unsafe { Alloc.alloc(layout) } as usize).join().unwrap()
            })
            .collect();
        let during = heap_usage().unwrap();
        assert_eq!((during.bytes - before.bytes, during.blocks - before.blocks), (300 * 48, 300));
        for block in blocks {
            // SAFETY: each block came from Alloc.alloc with this layout.
            unsafe { Alloc.dealloc(block as *mut u8, layout) };
        }
        assert_eq!(heap_usage().unwrap(), before);
    }
}
