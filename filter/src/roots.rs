//! Which configured filter instance (root context) a request belongs to.
//!
//! The module exports no `proxy_on_context_create`, so Envoy enters the VM for a request's headers and its
//! end, not also for its start, and neither call names the stream's root. Envoy shares one VM among every
//! filter that loads the same module with the same VM settings (Istio: all WasmPlugins using the ksit module
//! on a proxy), so a VM may hold several roots:
//! - one root (the usual case): every request is its;
//! - several: the request's `plugin_name` property (one host call) picks the newest root of that name.
//!
//! Several live roots may share a name: the same WasmPlugin on a sidecar's inbound and outbound listeners
//! (same configuration), or a configuration update whose old root drains (the newest is the one to use).
//! A root leaves the registry when Envoy deletes it (`proxy_on_delete` with its id), or when a check finds
//! it gone.

/// What the registry needs to know of a root.
pub trait Registered {
    /// Its root context id.
    fn id(&self) -> u32;
    /// Its `plugin_name`.
    fn name(&self) -> &[u8];
}

/// The configured roots of one VM, in registration order.
#[derive(Debug)]
pub struct Roots<T> {
    entries: Vec<T>,
}

impl<T> Default for Roots<T> {
    fn default() -> Self {
        Roots {
            entries: Vec::new(),
        }
    }
}

impl<T: Registered> Roots<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers `root`; returns the earlier registration of the same id, if any (reconfigured), so its
    /// paused requests can be carried over.
    pub fn insert(&mut self, root: T) -> Option<T> {
        let old = self.remove(root.id());
        self.entries.push(root);
        old
    }

    /// Unregisters root `id`.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let i = self.entries.iter().position(|e| e.id() == id)?;
        Some(self.entries.remove(i))
    }

    /// The newest root named `name` other than `id`, else the newest other root: where a leaving root's
    /// paused requests go.
    pub fn heir(&self, id: u32, name: &[u8]) -> Option<&T> {
        let others = || self.entries.iter().rev().filter(move |e| e.id() != id);
        others()
            .find(|e| e.name() == name)
            .or_else(|| others().next())
    }

    /// Every root, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter()
    }

    /// Root `id`, if registered.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.entries.iter().find(|e| e.id() == id)
    }

    /// The root serving a request: the only one, else the newest named by `name()` (asked only then).
    pub fn for_request(&self, name: impl FnOnce() -> Option<Vec<u8>>) -> Option<&T> {
        match self.entries.as_slice() {
            [] => None,
            [only] => Some(only),
            several => {
                let name = name()?;
                several.iter().rev().find(|e| e.name() == name)
            }
        }
    }

    /// Ids of the roots other than `id`.
    pub fn others(&self, id: u32) -> Vec<u32> {
        self.entries
            .iter()
            .map(|e| e.id())
            .filter(|&i| i != id)
            .collect()
    }

    /// Drops the roots whose id `keep` rejects; returns them.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if keep(self.entries[i].id()) {
                i += 1;
            } else {
                dropped.push(self.entries.remove(i));
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::{Registered, Roots};
    use std::cell::Cell;

    /// A root for the tests: id, name, and a tag the assertions compare.
    #[derive(Debug, PartialEq)]
    struct R(u32, &'static [u8], &'static str);

    impl Registered for R {
        fn id(&self) -> u32 {
            self.0
        }
        fn name(&self) -> &[u8] {
            self.1
        }
    }

    fn tag(r: Option<&R>) -> Option<&'static str> {
        r.map(|r| r.2)
    }

    fn tags(v: Vec<R>) -> Vec<&'static str> {
        v.into_iter().map(|r| r.2).collect()
    }

    #[test]
    fn one_root_serves_every_request_without_asking_its_name() {
        let mut r = Roots::default();
        assert!(r.insert(R(2, b"ns.a", "a")).is_none());
        let asked = Cell::new(false);
        let got = r.for_request(|| {
            asked.set(true);
            None
        });
        assert_eq!(tag(got), Some("a"));
        assert!(!asked.get());
    }

    #[test]
    fn several_roots_are_told_apart_by_plugin_name() {
        let mut r = Roots::default();
        r.insert(R(2, b"ns.a", "a"));
        r.insert(R(5, b"ns.b", "b"));
        assert_eq!(r.len(), 2);
        assert_eq!(tag(r.for_request(|| Some(b"ns.b".to_vec()))), Some("b"));
        assert_eq!(tag(r.for_request(|| Some(b"ns.a".to_vec()))), Some("a"));
        assert_eq!(tag(r.for_request(|| Some(b"ns.c".to_vec()))), None);
        assert_eq!(tag(r.for_request(|| None)), None, "name unreadable");
        assert_eq!(tag(r.get(5)), Some("b"));
        assert_eq!(r.others(5), vec![2]);
    }

    #[test]
    fn roots_sharing_a_name_all_stay_and_the_newest_serves() {
        let mut r = Roots::default();
        r.insert(R(2, b"ns.a", "a-inbound"));
        r.insert(R(3, b"ns.b", "b"));
        assert!(r.insert(R(7, b"ns.a", "a-outbound")).is_none());
        assert_eq!(r.len(), 3, "a live root is never dropped for its name");
        assert_eq!(
            tag(r.for_request(|| Some(b"ns.a".to_vec()))),
            Some("a-outbound")
        );
        // Its heir: the other root of its name, else the newest other one.
        assert_eq!(tag(r.heir(7, b"ns.a")), Some("a-inbound"));
        assert_eq!(tag(r.heir(3, b"ns.b")), Some("a-outbound"));
        assert_eq!(tag(r.remove(7).as_ref()), Some("a-outbound"));
        assert_eq!(
            tag(r.for_request(|| Some(b"ns.a".to_vec()))),
            Some("a-inbound")
        );
        // Reconfiguring a root replaces its own entry.
        assert_eq!(tag(r.insert(R(3, b"ns.b", "b2")).as_ref()), Some("b"));
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.iter().map(|e| e.2).collect::<Vec<_>>(),
            vec!["a-inbound", "b2"]
        );
    }

    #[test]
    fn deleted_roots_are_dropped() {
        let mut r = Roots::default();
        r.insert(R(2, b"a", "a"));
        r.insert(R(3, b"b", "b"));
        r.insert(R(4, b"c", "c"));
        assert_eq!(tags(r.retain(|id| id != 3)), vec!["b"]);
        assert_eq!(r.others(2), vec![4]);
        assert_eq!(tags(r.retain(|id| id == 4)), vec!["a"]);
        assert_eq!(
            tag(r.for_request(|| None)),
            Some("c"),
            "one left: no name needed"
        );
        assert_eq!(tag(r.heir(4, b"c")), None);
        r.retain(|_| false);
        assert!(r.is_empty());
        assert_eq!(tag(r.for_request(|| Some(b"c".to_vec()))), None);
    }
}
