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

/// When to hand free pages back to the kernel: at most once per `every`.
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
}

impl Trimmer {
    pub fn new(every: Duration) -> Self {
        Trimmer { every, last: None }
    }

    /// Whether a trim is due now (and, if so, counts it as done).
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }

    /// Trims when due, on tokio's blocking pool: `malloc_trim` walks every arena's heap, which would hold up
    /// the async task that asked (the hub loop) for as long. The trim's task, when one was started.
    pub fn maybe_trim(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.due().then(|| tokio::task::spawn_blocking(trim))
    }
}

/// Hands the free pages of every malloc arena back to the kernel (glibc; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it takes each arena's lock while it works.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_per_period() {
        let mut t = Trimmer::new(Duration::from_secs(3600));
        assert!(t.due());
        assert!(!t.due());
        let mut t = Trimmer::new(Duration::ZERO);
        assert!(t.due());
        assert!(t.due());
    }

    #[tokio::test]
    async fn a_due_trim_runs_as_a_blocking_task_and_the_next_waits() {
        let mut t = Trimmer::new(Duration::from_secs(3600));
        let task = t.maybe_trim().expect("the first trim is due");
        task.await.expect("the trim ran");
        assert!(t.maybe_trim().is_none(), "the next waits for the period");
    }
}
