//! Requests held by a delay fault on one worker: bounded, released by the root context's tick, and
//! forgotten when the client goes away first.

use ksit_policy::AbortStatus;

/// One paused request: resumed (or aborted, when the fault also rolled an abort) at `due_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paused {
    pub context_id: u32,
    pub due_ms: u64,
    pub then_abort: Option<AbortStatus>,
}

#[derive(Debug, Default)]
pub struct PausedSet {
    entries: Vec<Paused>,
}

impl PausedSet {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Holds a request unless `cap` requests are already held; false means the delay must be skipped.
    pub fn try_insert(&mut self, p: Paused, cap: u32) -> bool {
        if self.entries.len() >= cap as usize {
            return false;
        }
        self.entries.push(p);
        true
    }

    /// Forgets a request (its stream ended); true when it was still held.
    pub fn remove(&mut self, context_id: u32) -> bool {
        match self.entries.iter().position(|p| p.context_id == context_id) {
            Some(i) => {
                self.entries.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes over another set's requests (a root superseded by a new configuration).
    pub fn absorb(&mut self, other: PausedSet) {
        self.entries.extend(other.entries);
    }

    /// Takes every request due at `now_ms` into `out`.
    pub fn take_due(&mut self, now_ms: u64, out: &mut Vec<Paused>) {
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].due_ms <= now_ms {
                out.push(self.entries.swap_remove(i));
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: u32, due: u64) -> Paused {
        Paused {
            context_id: id,
            due_ms: due,
            then_abort: None,
        }
    }

    #[test]
    fn bounded_released_and_forgotten() {
        let mut s = PausedSet::default();
        assert!(s.try_insert(p(1, 100), 2));
        assert!(s.try_insert(p(2, 50), 2));
        assert!(!s.try_insert(p(3, 10), 2), "cap reached");
        let mut due = Vec::new();
        s.take_due(60, &mut due);
        assert_eq!(due, vec![p(2, 50)]);
        assert!(s.try_insert(p(3, 10), 2));
        assert!(s.remove(1), "stream 1 ended");
        assert!(!s.remove(1));
        let mut other = PausedSet::default();
        assert!(other.try_insert(p(9, 20), 1));
        s.absorb(other);
        assert_eq!(s.len(), 2);
        due.clear();
        s.take_due(1000, &mut due);
        assert_eq!(due, vec![p(3, 10), p(9, 20)]);
        assert!(s.is_empty());
    }
}
