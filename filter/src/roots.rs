//! Which configured filter instance (root context) a request belongs to.
//!
//! The module exports no `proxy_on_context_create`, so Envoy enters the VM once per request
//! (`proxy_on_request_headers`) instead of three times (create, headers, delete), and that call names the
//! stream but not its root. Envoy shares one VM among every filter that loads the same module with the same
//! VM settings (Istio: all WasmPlugins using the ksit module on a proxy), so a VM may hold several roots:
//! - one root (the usual case): every request is its;
//! - several: the request's `plugin_name` property (one host call) picks the root of that name.
//!
//! A root configured under a name another root already has takes that name over (a configuration update
//! creates a new root while the old one drains), together with the old root's paused requests. Roots Envoy
//! has deleted are dropped by [`Roots::retain`] (the filter checks every few seconds).

/// The configured roots of one VM, in registration order.
#[derive(Debug)]
pub struct Roots<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    id: u32,
    name: Vec<u8>,
    root: T,
}

impl<T> Default for Roots<T> {
    fn default() -> Self {
        Roots {
            entries: Vec::new(),
        }
    }
}

impl<T> Roots<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers root `id` as serving `name`. Returns the roots this one replaces: an earlier registration of
    /// the same id (reconfigured) and any other root of the same name (superseded by a new configuration),
    /// so their paused requests can be carried over.
    pub fn insert(&mut self, id: u32, name: &[u8], root: T) -> Vec<T> {
        let mut replaced = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].id == id || self.entries[i].name == name {
                replaced.push(self.entries.remove(i).root);
            } else {
                i += 1;
            }
        }
        self.entries.push(Entry {
            id,
            name: name.to_vec(),
            root,
        });
        replaced
    }

    /// Root `id`, if registered.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.entries.iter().find(|e| e.id == id).map(|e| &e.root)
    }

    /// The root serving a request: the only one, else the one named by `name()` (asked only then).
    pub fn for_request(&self, name: impl FnOnce() -> Option<Vec<u8>>) -> Option<&T> {
        match self.entries.as_slice() {
            [] => None,
            [only] => Some(&only.root),
            several => {
                let name = name()?;
                several.iter().find(|e| e.name == name).map(|e| &e.root)
            }
        }
    }

    /// Ids of the roots other than `id`.
    pub fn others(&self, id: u32) -> Vec<u32> {
        self.entries
            .iter()
            .map(|e| e.id)
            .filter(|&i| i != id)
            .collect()
    }

    /// Whether a root other than `id` satisfies `f`.
    pub fn any_other(&self, id: u32, mut f: impl FnMut(&T) -> bool) -> bool {
        self.entries.iter().any(|e| e.id != id && f(&e.root))
    }

    /// Drops the roots whose id `keep` rejects; returns them.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if keep(self.entries[i].id) {
                i += 1;
            } else {
                dropped.push(self.entries.remove(i).root);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::Roots;
    use std::cell::Cell;

    #[test]
    fn one_root_serves_every_request_without_asking_its_name() {
        let mut r = Roots::default();
        assert!(r.insert(2, b"ns.a", "a").is_empty());
        let asked = Cell::new(false);
        let got = r.for_request(|| {
            asked.set(true);
            None
        });
        assert_eq!(got, Some(&"a"));
        assert!(!asked.get());
    }

    #[test]
    fn several_roots_are_told_apart_by_plugin_name() {
        let mut r = Roots::default();
        r.insert(2, b"ns.a", "a");
        r.insert(5, b"ns.b", "b");
        assert_eq!(r.len(), 2);
        assert_eq!(r.for_request(|| Some(b"ns.b".to_vec())), Some(&"b"));
        assert_eq!(r.for_request(|| Some(b"ns.a".to_vec())), Some(&"a"));
        assert_eq!(r.for_request(|| Some(b"ns.c".to_vec())), None);
        assert_eq!(r.for_request(|| None), None, "name unreadable");
        assert_eq!(r.get(5), Some(&"b"));
        assert_eq!(r.others(5), vec![2]);
        assert!(r.any_other(5, |v| *v == "a"));
        assert!(!r.any_other(2, |v| *v == "a"), "itself does not count");
    }

    #[test]
    fn a_new_root_of_the_same_name_supersedes_the_old_one() {
        let mut r = Roots::default();
        r.insert(2, b"ns.a", "a1");
        r.insert(3, b"ns.b", "b");
        assert_eq!(r.insert(7, b"ns.a", "a2"), vec!["a1"]);
        assert_eq!(r.get(2), None);
        assert_eq!(r.for_request(|| Some(b"ns.a".to_vec())), Some(&"a2"));
        // Reconfiguring a root replaces its own entry.
        assert_eq!(r.insert(3, b"ns.b", "b2"), vec!["b"]);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn deleted_roots_are_dropped() {
        let mut r = Roots::default();
        r.insert(2, b"a", "a");
        r.insert(3, b"b", "b");
        r.insert(4, b"c", "c");
        assert_eq!(r.retain(|id| id != 3), vec!["b"]);
        assert_eq!(r.others(2), vec![4]);
        assert_eq!(r.retain(|id| id == 4), vec!["a"]);
        assert_eq!(
            r.for_request(|| None),
            Some(&"c"),
            "one left: no name needed"
        );
        r.retain(|_| false);
        assert!(r.is_empty());
        assert_eq!(r.for_request(|| Some(b"c".to_vec())), None);
    }
}
