//! Allocator settings for the millrace process.
//!
//! glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
//! large buffers (hash tables, checkpoint records, read buffers) come from the heap and fragment it: with
//! keyed state evicted and reloaded under a memory budget, the process held 2.6x the budget (673 MiB of
//! RssAnon for 256 MiB) where a fixed 128 KiB threshold and at most 4 arenas held 1.5x (380 MiB), measured
//! with `millrace bench pipeline --kind state --state-keys 10000000 --state-backend disk` on the 2-core
//! machine. (An allocator crate would do as well, at a build cost and a C toolchain dependency.)
#![allow(unsafe_code)]

/// Sets the allocator's parameters; call before the process starts threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and only changes allocator parameters; glibc documents it as safe
    // to call at any time, and it runs here before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
