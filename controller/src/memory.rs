//! Keeping the controller's resident memory near what it uses. glibc's malloc gives every thread that
//! allocates its own arena and does not return free pages inside its heaps to the kernel on its own, so a
//! controller that builds and drops many JSON trees in bursts (a change rendered for a hundred clusters, their
//! watch events, their replies) would otherwise keep its high-water mark, and more of it the more threads.

use std::time::{Duration, Instant};

/// At most this many malloc arenas (glibc; a no-op elsewhere, or when the operator set
/// `MALLOC_ARENA_MAX`). Call before starting threads.
pub fn limit_arenas(n: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Hands free pages back to the kernel, at most once per `every`.
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
}

impl Trimmer {
    pub fn new(every: Duration) -> Self {
        Trimmer { every, last: None }
    }

    /// Whether it trimmed now.
    pub fn maybe_trim(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        self.last = Some(Instant::now());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim is thread-safe; it takes each arena's lock while it works.
        unsafe {
            libc::malloc_trim(0);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_per_period() {
        let mut t = Trimmer::new(Duration::from_secs(3600));
        assert!(t.maybe_trim());
        assert!(!t.maybe_trim());
        let mut t = Trimmer::new(Duration::ZERO);
        assert!(t.maybe_trim());
        assert!(t.maybe_trim());
    }
}
