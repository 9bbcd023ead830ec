//! The emulator's object store: resource kinds, objects, resourceVersions, watch history, server-side
//! apply field ownership, status subresource, finalizers, generation and schema validation.
#![allow(clippy::too_many_arguments)] // the write paths mirror the API's parameters one to one

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many past events a watch can resume from before it gets 410 Gone.
pub const HISTORY: usize = 2000;

#[derive(Clone, Debug)]
pub struct Kind {
    pub group: String,
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// openAPIV3Schema per version (custom resources only).
    pub schemas: BTreeMap<String, Value>,
    pub builtin: bool,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub type_: &'static str,
    pub object: Value,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn not_found(what: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{what} not found"))
    }
    pub fn body(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

pub type Key = (String, String, Option<String>, String); // group, plural, namespace, name

#[derive(Default)]
pub struct Store {
    pub rv: u64,
    pub kinds: BTreeMap<(String, String), Kind>,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Event>,
    /// Oldest resourceVersion a watch may resume from.
    pub compacted: u64,
    uid: u64,
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
) -> Kind {
    Kind {
        group: group.into(),
        versions: vec![version.into()],
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        namespaced,
        status_subresource: status,
        schemas: BTreeMap::new(),
        builtin: true,
    }
}

pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl Store {
    pub fn new() -> Store {
        let mut s = Store::default();
        for k in [
            builtin("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
            builtin("", "v1", "Secret", "secrets", true, false, &[]),
            builtin("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
            builtin("", "v1", "Service", "services", true, true, &["svc"]),
            builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                false,
                &["sa"],
            ),
            builtin("", "v1", "Event", "events", true, false, &["ev"]),
            builtin(
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                true,
                false,
                &["ev"],
            ),
            builtin(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                true,
                &["deploy"],
            ),
            builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                false,
                &[],
            ),
            builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &["crd"],
            ),
        ] {
            s.kinds.insert((k.group.clone(), k.plural.clone()), k);
        }
        for ns in ["default", "kube-system"] {
            let _ = s.create(
                "",
                "namespaces",
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "emulator",
            );
        }
        s
    }

    pub fn kind(&self, group: &str, plural: &str) -> Result<&Kind, ApiError> {
        self.kinds
            .get(&(group.to_string(), plural.to_string()))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
    }

    /// Registers a CustomResourceDefinition's kind.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let spec = crd
            .get("spec")
            .ok_or_else(|| ApiError::new(422, "Invalid", "CRD without spec"))?;
        let group = spec["group"].as_str().unwrap_or("").to_string();
        let names = &spec["names"];
        let plural = names["plural"].as_str().unwrap_or("").to_string();
        if group.is_empty() || plural.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "CRD needs spec.group and spec.names.plural",
            ));
        }
        let mut versions = Vec::new();
        let mut schemas = BTreeMap::new();
        let mut status = false;
        let mut storage_first = Vec::new();
        for v in spec["versions"].as_array().cloned().unwrap_or_default() {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
                schemas.insert(name.clone(), s.clone());
            }
            status |= v.pointer("/subresources/status").is_some();
            if v["storage"].as_bool() == Some(true) {
                storage_first.insert(0, name);
            } else {
                storage_first.push(name);
            }
        }
        versions.extend(storage_first);
        let kind = Kind {
            group: group.clone(),
            versions,
            kind: names["kind"].as_str().unwrap_or("").into(),
            plural: plural.clone(),
            singular: names["singular"].as_str().unwrap_or("").into(),
            short_names: names["shortNames"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            status_subresource: status,
            schemas,
            builtin: false,
        };
        self.kinds.insert((group, plural), kind);
        Ok(())
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        type_: &'static str,
        group: &str,
        plural: &str,
        ns: Option<String>,
        object: Value,
    ) {
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv);
        self.history.push_back(Event {
            rv,
            group: group.into(),
            plural: plural.into(),
            namespace: ns,
            type_,
            object,
        });
        while self.history.len() > HISTORY {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
    }

    pub fn get(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let k = self.kind(group, plural)?;
        self.objects
            .get(&(
                group.into(),
                plural.into(),
                ns.map(String::from).filter(|_| k.namespaced),
                name.into(),
            ))
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(&format!(
                    "{}.{} \"{name}\"",
                    plural,
                    if group.is_empty() { "" } else { group }
                ))
            })
    }

    pub fn list(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                g == group && p == plural && (ns.is_none() || n.as_deref() == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn check_namespace(&self, k: &Kind, ns: Option<&str>) -> Result<(), ApiError> {
        if !k.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| {
            ApiError::new(400, "BadRequest", "the namespace of the object is required")
        })?;
        if !self
            .objects
            .contains_key(&(String::new(), "namespaces".into(), None, ns.into()))
        {
            return Err(ApiError::not_found(&format!("namespaces \"{ns}\"")));
        }
        Ok(())
    }

    /// Sets server fields and stores; emits ADDED or MODIFIED. `spec_changed` bumps generation.
    fn commit(&mut self, key: Key, mut obj: Value, existed: Option<&Value>) -> Value {
        let rv = self.next_rv();
        let meta = meta_mut(&mut obj);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let gen = existed
            .and_then(|old| old.pointer("/metadata/generation").and_then(Value::as_i64))
            .unwrap_or(1);
        meta.insert("generation".into(), json!(gen));
        if let Some(old) = existed {
            if strip_meta_status(old) != strip_meta_status(&obj) {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    + 1;
                meta_mut(&mut obj).insert("generation".into(), json!(g));
            }
        }
        let type_ = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(key.clone(), obj.clone());
        self.record(type_, &key.0, &key.1, key.2.clone(), obj.clone());
        obj
    }

    pub fn create(
        &mut self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let k = self.kind(group, plural)?.clone();
        let ns = if k.namespaced {
            ns.map(String::from).or_else(|| {
                obj.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
        } else {
            None
        };
        self.check_namespace(&k, ns.as_deref())?;
        let mut name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                self.uid += 1;
                name = format!("{prefix}{:05x}", self.uid * 7919 % 0xfffff);
            } else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value",
                ));
            }
        }
        let key: Key = (group.into(), plural.into(), ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{plural} \"{name}\" already exists"),
            ));
        }
        if k.status_subresource && !k.builtin {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        self.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid);
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            match &ns {
                Some(n) => m.insert("namespace".into(), json!(n)),
                None => m.remove("namespace"),
            };
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(now()));
        }
        let obj = self.validate(&k, obj)?.0;
        let fields = leaves(&obj);
        let mut obj = obj;
        set_managed(
            &mut obj,
            &[Managed {
                manager: manager.into(),
                operation: "Update".into(),
                fields,
                subresource: None,
            }],
        );
        if group == "apiextensions.k8s.io" {
            self.register_crd(&obj)?;
        }
        Ok(self.commit(key, obj, None))
    }

    /// PUT (or the result of a merge/JSON patch): replaces the object. For the status subresource only
    /// `.status` changes; otherwise `.status` is kept when the kind has a status subresource.
    pub fn update(
        &mut self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        manager: &str,
        status: bool,
        check_rv: bool,
    ) -> Result<(Value, bool), ApiError> {
        let k = self.kind(group, plural)?.clone();
        let ns = ns.map(String::from).filter(|_| k.namespaced);
        let key: Key = (group.into(), plural.into(), ns.clone(), name.into());
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&format!("{plural} \"{name}\"")))?;
        if check_rv {
            if let Some(rv) = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                if !rv.is_empty()
                    && Some(rv)
                        != old
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                {
                    return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")));
                }
            }
        }
        if status {
            let mut merged = old.clone();
            match obj.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            obj = merged;
        } else {
            if k.status_subresource {
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            // Server-owned metadata is kept from the stored object.
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut obj);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "managedFields",
            ] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            m.insert("name".into(), json!(name));
            match &ns {
                Some(n) => m.insert("namespace".into(), json!(n)),
                None => m.remove("namespace"),
            };
        }
        let (obj, _) = self.validate(&k, obj)?;
        let mut obj = obj;
        // Ownership: changed leaves move to `manager` (operation Update).
        let mut managed = get_managed(&old);
        let changed = changed_leaves(&old, &obj);
        if !changed.is_empty() {
            for m in &mut managed {
                m.fields.retain(|f| !changed.contains(f));
            }
            let sub = status.then(|| "status".to_string());
            match managed
                .iter_mut()
                .find(|m| m.manager == manager && m.operation == "Update" && m.subresource == sub)
            {
                Some(m) => m.fields.extend(changed),
                None => managed.push(Managed {
                    manager: manager.into(),
                    operation: "Update".into(),
                    fields: changed,
                    subresource: sub,
                }),
            }
            managed.retain(|m| !m.fields.is_empty());
        }
        set_managed(&mut obj, &managed);
        self.finish_write(key, obj, &old)
    }

    fn finish_write(
        &mut self,
        key: Key,
        obj: Value,
        old: &Value,
    ) -> Result<(Value, bool), ApiError> {
        if without_rv(&obj) == without_rv(old) {
            return Ok((old.clone(), false));
        }
        // Removing the last finalizer of an object being deleted deletes it.
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let out = self.commit(key.clone(), obj, Some(old));
        if deleting && !finalizers {
            self.remove(&key);
        }
        Ok((out, true))
    }

    /// Server-side apply of `config` by `manager`.
    pub fn apply(
        &mut self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
        config: Value,
        manager: &str,
        force: bool,
        status: bool,
    ) -> Result<(Value, bool, Vec<String>), ApiError> {
        let k = self.kind(group, plural)?.clone();
        let ns = ns.map(String::from).filter(|_| k.namespaced);
        let key: Key = (group.into(), plural.into(), ns.clone(), name.into());
        let mut config = config;
        if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
        let (config, warnings) = self.validate(&k, config)?;
        let mut applied = leaves(&config);
        applied.retain(|f| !is_identity(f));
        if status {
            applied.retain(|f| f.first().map(String::as_str) == Some("status"));
        } else if k.status_subresource {
            applied.retain(|f| f.first().map(String::as_str) != Some("status"));
        }
        let Some(old) = self.objects.get(&key).cloned() else {
            if status {
                return Err(ApiError::not_found(&format!("{plural} \"{name}\"")));
            }
            let mut obj = config.clone();
            if k.status_subresource {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            let created = self.create(group, plural, ns.as_deref(), obj, manager)?;
            let mut created = created;
            set_managed(
                &mut created,
                &[Managed {
                    manager: manager.into(),
                    operation: "Apply".into(),
                    fields: applied,
                    subresource: None,
                }],
            );
            let key2 = key.clone();
            self.objects.insert(key2, created.clone());
            return Ok((created, true, warnings));
        };
        let sub = status.then(|| "status".to_string());
        let mut managed = get_managed(&old);
        // Conflicts: a field another manager owns, applied with a different value.
        let mut conflicts = Vec::new();
        for m in managed
            .iter()
            .filter(|m| !(m.manager == manager && m.operation == "Apply"))
        {
            for f in &m.fields {
                if applied.contains(f) && get_path(&old, f) != get_path(&config, f) {
                    conflicts.push(format!("conflict with \"{}\": .{}", m.manager, f.join(".")));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join("; ")
                ),
            ));
        }
        let previously: BTreeSet<Vec<String>> = managed
            .iter()
            .filter(|m| m.manager == manager && m.operation == "Apply" && m.subresource == sub)
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        for m in &mut managed {
            if !(m.manager == manager && m.operation == "Apply") {
                m.fields.retain(|f| !applied.contains(f));
            }
        }
        let others: BTreeSet<Vec<String>> = managed
            .iter()
            .filter(|m| !(m.manager == manager && m.operation == "Apply" && m.subresource == sub))
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        let mut obj = old.clone();
        for f in previously
            .iter()
            .filter(|f| !applied.contains(*f) && !others.contains(*f))
        {
            remove_path(&mut obj, f);
        }
        merge(&mut obj, &config, status, k.status_subresource);
        managed
            .retain(|m| !(m.manager == manager && m.operation == "Apply" && m.subresource == sub));
        managed.push(Managed {
            manager: manager.into(),
            operation: "Apply".into(),
            fields: applied,
            subresource: sub,
        });
        managed.retain(|m| !m.fields.is_empty());
        // Keep the stored managedFields order stable so that a no-op apply compares equal.
        managed.sort_by(|a, b| {
            (&a.manager, &a.operation, &a.subresource).cmp(&(
                &b.manager,
                &b.operation,
                &b.subresource,
            ))
        });
        let mut old_sorted = old.clone();
        let mut om = get_managed(&old);
        om.sort_by(|a, b| {
            (&a.manager, &a.operation, &a.subresource).cmp(&(
                &b.manager,
                &b.operation,
                &b.subresource,
            ))
        });
        set_managed(&mut old_sorted, &om);
        set_managed(&mut obj, &managed);
        if without_rv(&obj) == without_rv(&old_sorted) {
            return Ok((old, false, warnings));
        }
        let (out, changed) = self.finish_write(key, obj, &old)?;
        Ok((out, changed, warnings))
    }

    pub fn delete(
        &mut self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let k = self.kind(group, plural)?.clone();
        let key: Key = (
            group.into(),
            plural.into(),
            ns.map(String::from).filter(|_| k.namespaced),
            name.into(),
        );
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&format!("{plural} \"{name}\"")))?;
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut obj = old.clone();
            meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(now()));
            return Ok(self.commit(key, obj, Some(&old)));
        }
        Ok(self.remove(&key).unwrap_or(old))
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let obj = self.objects.remove(key)?;
        let rv = self.next_rv();
        let mut gone = obj.clone();
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record("DELETED", &key.0, &key.1, key.2.clone(), gone.clone());
        if key.0.is_empty() && key.1 == "namespaces" {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.2.as_deref() == Some(key.3.as_str()))
                .cloned()
                .collect();
            for k in inside {
                self.remove(&k);
            }
        }
        if key.0 == "apiextensions.k8s.io" {
            if let (Some(g), Some(p)) = (
                obj.pointer("/spec/group").and_then(Value::as_str),
                obj.pointer("/spec/names/plural").and_then(Value::as_str),
            ) {
                let (g, p) = (g.to_string(), p.to_string());
                let inside: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.0 == g && k.1 == p)
                    .cloned()
                    .collect();
                for k in inside {
                    self.remove(&k);
                }
                self.kinds.remove(&(g, p));
            }
        }
        Some(gone)
    }

    /// Deletes every object (a cluster that comes back empty); kinds stay registered.
    pub fn wipe(&mut self) {
        let keys: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.0 != "apiextensions.k8s.io")
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
        for ns in ["default", "kube-system"] {
            let _ = self.create(
                "",
                "namespaces",
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "emulator",
            );
        }
    }

    /// Validates a custom resource against its schema: type errors fail; unknown fields are pruned (and
    /// named in the returned warnings), or fail under `fieldValidation=Strict` (handled by the caller).
    pub fn validate(&self, k: &Kind, mut obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        let mut warnings = Vec::new();
        let version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or("")
            .to_string();
        let Some(schema) = k
            .schemas
            .get(&version)
            .or_else(|| k.schemas.values().next())
        else {
            return Ok((obj, warnings));
        };
        let mut errors = Vec::new();
        if let Some(spec_schema) = schema.pointer("/properties/spec") {
            if let Some(spec) = obj.get_mut("spec") {
                check(spec, spec_schema, ".spec", &mut errors, &mut warnings);
            }
        }
        if let Some(status_schema) = schema.pointer("/properties/status") {
            if let Some(st) = obj.get_mut("status") {
                check(st, status_schema, ".status", &mut errors, &mut warnings);
            }
        }
        // A status-only write (an apply to /status) need not repeat the spec.
        let status_only = obj.get("spec").is_none() && obj.get("status").is_some();
        if let Some(Value::Array(req)) = schema.get("required").filter(|_| !status_only) {
            for r in req.iter().filter_map(Value::as_str) {
                if obj.get(r).is_none() {
                    errors.push(format!(".{r}: Required value"));
                }
            }
        }
        if let Some(o) = obj.as_object_mut() {
            let known: BTreeSet<&str> = ["apiVersion", "kind", "metadata"].into_iter().collect();
            let props = schema.get("properties").and_then(Value::as_object);
            let unknown: Vec<String> = o
                .keys()
                .filter(|key| {
                    !known.contains(key.as_str()) && !props.is_some_and(|p| p.contains_key(*key))
                })
                .cloned()
                .collect();
            for u in unknown {
                o.remove(&u);
                warnings.push(format!(".{u}"));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"{}\" is invalid: {}",
                    k.kind,
                    obj.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    errors.join(", ")
                ),
            ));
        }
        Ok((obj, warnings))
    }
}

fn check(
    v: &mut Value,
    s: &Value,
    path: &str,
    errors: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) != Some(true) {
            // Kubernetes drops nulls from apply configurations; treat as absent.
        }
        return;
    }
    if s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!(
                "{path}: Invalid value: must be an integer or a string"
            ));
        }
        return;
    }
    let ty = s.get("type").and_then(Value::as_str);
    let ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!(
            "{path}: Invalid value: \"{}\": {path} in body must be of type {}",
            short(v),
            ty.unwrap_or("?")
        ));
        return;
    }
    if let Some(Value::Array(en)) = s.get("enum") {
        if !en.contains(v) {
            errors.push(format!("{path}: Unsupported value: {}", short(v)));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            errors.push(format!(
                "{path}: Invalid value: {x}: must be greater than or equal to {min}"
            ));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            errors.push(format!(
                "{path}: Invalid value: {x}: must be less than or equal to {max}"
            ));
        }
    }
    let preserve = s
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errors.push(format!("{path}.{r}: Required value"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let keys: Vec<String> = m.keys().cloned().collect();
            for key in keys {
                let sub = format!("{path}.{key}");
                if let Some(ps) = props.and_then(|p| p.get(&key)) {
                    if let Some(x) = m.get_mut(&key) {
                        check(x, ps, &sub, errors, unknown);
                    }
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    if let Some(x) = m.get_mut(&key) {
                        check(x, a, &sub, errors, unknown);
                    }
                } else if additional.and_then(Value::as_bool) == Some(true)
                    || preserve
                    || (props.is_none() && additional.is_none() && ty != Some("object"))
                {
                } else if props.is_none() && additional.is_none() {
                    // An object schema with neither properties nor additionalProperties keeps nothing.
                    m.remove(&key);
                    unknown.push(sub);
                } else {
                    m.remove(&key);
                    unknown.push(sub);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    check(x, items, &format!("{path}[{i}]"), errors, unknown);
                }
            }
        }
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..40])
    } else {
        s.trim_matches('"').to_string()
    }
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Value::Object(o) = obj else {
        unreachable!("made an object above")
    };
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let Value::Object(m) = meta else {
        unreachable!("made an object above")
    };
    m
}

fn strip_meta_status(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "metadata" && *k != "status")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    v
}

fn is_identity(f: &[String]) -> bool {
    matches!(
        f.first().map(String::as_str),
        Some("apiVersion") | Some("kind")
    ) || (f.first().map(String::as_str) == Some("metadata")
        && matches!(
            f.get(1).map(String::as_str),
            Some("name") | Some("namespace")
        ))
}

/// Leaf paths of an object: maps are walked, everything else (arrays included) is one field.
pub fn leaves(v: &Value) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    if path.len() == 1
                        && path[0] == "metadata"
                        && matches!(
                            k.as_str(),
                            "managedFields"
                                | "resourceVersion"
                                | "uid"
                                | "creationTimestamp"
                                | "generation"
                                | "deletionTimestamp"
                        )
                    {
                        continue;
                    }
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out.retain(|f| !is_identity(f));
    out
}

fn changed_leaves(old: &Value, new: &Value) -> BTreeSet<Vec<String>> {
    leaves(new)
        .into_iter()
        .filter(|f| get_path(old, f) != get_path(new, f))
        .collect()
}

fn get_path<'a>(v: &'a Value, f: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for k in f {
        cur = cur.get(k)?;
    }
    Some(cur)
}

fn remove_path(v: &mut Value, f: &[String]) {
    let Some((last, parents)) = f.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(x) => cur = x,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Merges an apply configuration into the stored object: maps merge, everything else replaces.
fn merge(obj: &mut Value, config: &Value, status_only: bool, has_status_subresource: bool) {
    fn deep(a: &mut Value, b: &Value) {
        match (a, b) {
            (Value::Object(am), Value::Object(bm)) => {
                for (k, bv) in bm {
                    if bv.is_null() {
                        am.remove(k);
                        continue;
                    }
                    match am.get_mut(k) {
                        Some(av) if av.is_object() && bv.is_object() => deep(av, bv),
                        _ => {
                            am.insert(k.clone(), bv.clone());
                        }
                    }
                }
            }
            (a, b) => *a = b.clone(),
        }
    }
    let Some(cm) = config.as_object() else { return };
    for (k, v) in cm {
        let is_status = k == "status";
        if (status_only && !is_status) || (!status_only && is_status && has_status_subresource) {
            continue;
        }
        if matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        match obj.get_mut(k) {
            Some(existing) => deep(existing, v),
            None => {
                if let Some(o) = obj.as_object_mut() {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub fields: BTreeSet<Vec<String>>,
    pub subresource: Option<String>,
}

fn fields_v1(fields: &BTreeSet<Vec<String>>) -> Value {
    let mut root = Map::new();
    for f in fields {
        let mut cur = &mut root;
        for k in f {
            let e = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            cur = match e {
                Value::Object(m) => m,
                _ => break,
            };
        }
    }
    Value::Object(root)
}

fn parse_fields_v1(v: &Value) -> BTreeSet<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let Some(name) = k.strip_prefix("f:") else {
                        continue;
                    };
                    path.push(name.to_string());
                    walk(x, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get_managed(obj: &Value) -> Vec<Managed> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e["manager"].as_str().unwrap_or("").into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    fields: parse_fields_v1(&e["fieldsV1"]),
                    subresource: e["subresource"].as_str().map(String::from),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set_managed(obj: &mut Value, managed: &[Managed]) {
    let version = obj.get("apiVersion").cloned().unwrap_or(json!("v1"));
    let entries: Vec<Value> = managed
        .iter()
        .map(|m| {
            let mut e = json!({"manager": m.manager, "operation": m.operation, "apiVersion": version, "time": now(),
                               "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&m.fields)});
            if let Some(s) = &m.subresource {
                e["subresource"] = json!(s);
            }
            e
        })
        .collect();
    meta_mut(obj).insert("managedFields".into(), Value::Array(entries));
}

/// Kubernetes label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
pub fn selector_matches(sel: &str, labels: &Map<String, Value>) -> bool {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&sel[start..]);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .all(|p| {
            let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            if let Some((k, v)) = p.split_once("!=") {
                return get(k) != Some(v.trim());
            }
            if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                return get(k) == Some(v.trim());
            }
            let set = |s: &str| -> Vec<String> {
                s.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .collect()
            };
            if let Some((k, v)) = p.split_once(" notin ") {
                return !get(k).is_some_and(|x| set(v).iter().any(|s| s == x));
            }
            if let Some((k, v)) = p.split_once(" in ") {
                return get(k).is_some_and(|x| set(v).iter().any(|s| s == x));
            }
            if let Some(k) = p.strip_prefix('!') {
                return get(k).is_none();
            }
            get(p).is_some()
        })
}
