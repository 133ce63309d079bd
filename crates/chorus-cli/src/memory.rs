//! The agent's memory footprint. glibc gives every thread that allocates an arena of its own
//! (up to 8 per core) and each arena keeps what was freed in it, so a process that mostly
//! waits on sockets, with buffers freed on whichever worker thread drops them, holds on to
//! several partly used arenas. One arena is plenty at the agent's allocation rate, and it
//! measurably lowers the resident size (docs/benchmarks.md).

/// Limits glibc to one malloc arena. Call before the runtime starts its threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn use_one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator tunable; it takes plain integers and no thread
    // other than this one exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators manage their own arenas.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn use_one_malloc_arena() {}
