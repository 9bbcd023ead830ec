//! The emulator's object store: resource kinds, objects, resourceVersions, watch history, server-side
//! apply field ownership, status subresource, finalizers, generation and schema validation.
#![allow(clippy::too_many_arguments)] // the write paths mirror the API's parameters one to one

use crate::fields::{self, FieldSet};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many past events a watch can resume from before it gets 410 Gone (by default; see
/// `Emulator::set_history_limit`).
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

impl Kind {
    /// The openAPIV3Schema of the object's version (or of the storage version), for custom resources.
    pub fn schema_for(&self, obj: &Value) -> Option<&Value> {
        let version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or("");
        self.schemas
            .get(version)
            .or_else(|| self.versions.first().and_then(|v| self.schemas.get(v)))
    }
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
    /// `details` of the Status (e.g. the causes of an apply conflict).
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    pub fn not_found(what: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{what} not found"))
    }
    pub fn body(&self) -> Value {
        let mut b = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            b["details"] = d.clone();
        }
        b
    }
}

pub type Key = (String, String, Option<String>, String); // group, plural, namespace, name

#[derive(Default, Clone)]
pub struct Store {
    pub rv: u64,
    pub kinds: BTreeMap<(String, String), Kind>,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Event>,
    /// Oldest resourceVersion a watch may resume from.
    pub compacted: u64,
    /// How many events `history` keeps.
    pub history_limit: usize,
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
        let mut s = Store {
            history_limit: HISTORY,
            ..Store::default()
        };
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
        while self.history.len() > self.history_limit.max(1) {
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
        obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        self.create_as(group, plural, ns, obj, manager, "Update", None)
    }

    /// Creates an object; its fields are owned by `manager` with `operation` (Update, or Apply with the
    /// applied fields in `owned`).
    fn create_as(
        &mut self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        mut obj: Value,
        manager: &str,
        operation: &str,
        owned: Option<FieldSet>,
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
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        }
        let key: Key = (group.into(), plural.into(), ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(group, plural)),
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
            for f in ["resourceVersion", "generation", "deletionTimestamp"] {
                m.remove(f);
            }
        }
        let mut obj = self.validate(&k, obj)?.0;
        let fields = owned.unwrap_or_else(|| fields::leaves(&obj, k.schema_for(&obj)));
        set_managed(
            &mut obj,
            &[Managed {
                manager: manager.into(),
                operation: operation.into(),
                fields,
                subresource: None,
                time: None,
            }],
        );
        if group == "apiextensions.k8s.io" {
            self.register_crd(&obj)?;
        }
        Ok(self.commit(key, obj, None))
    }

    /// PUT (or the result of a merge/JSON patch): replaces the object. For the status subresource only
    /// `.status` changes; otherwise `.status` is kept when the kind has a status subresource.
    /// `check_rv`: a PUT (a stale resourceVersion conflicts; custom resources must carry one).
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
        let old = self.objects.get(&key).cloned().ok_or_else(|| {
            ApiError::not_found(&format!("{} \"{name}\"", qualified(group, plural)))
        })?;
        if let Some(body_name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                ));
            }
        }
        if check_rv {
            match obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|rv| !rv.is_empty())
            {
                Some(rv)
                    if Some(rv)
                        != old
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str) =>
                {
                    return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", qualified(group, plural))));
                }
                Some(_) => {}
                None if !k.builtin => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update", k.kind),
                    ));
                }
                None => {}
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
        let changed = fields::changed_leaves(&old, &obj, k.schema_for(&obj));
        if !changed.is_empty() {
            for m in &mut managed {
                m.fields.retain(|f| !changed.contains(f));
            }
            let sub = status.then(|| "status".to_string());
            match managed
                .iter_mut()
                .find(|m| m.manager == manager && m.operation == "Update" && m.subresource == sub)
            {
                Some(m) => {
                    m.fields.extend(changed);
                    m.time = None;
                }
                None => managed.push(Managed {
                    manager: manager.into(),
                    operation: "Update".into(),
                    fields: changed,
                    subresource: sub,
                    time: None,
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

    /// Server-side apply of `config` by `manager`. Returns the object, whether it changed, and the unknown
    /// fields that were pruned.
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
                "deletionTimestamp",
            ] {
                m.remove(f);
            }
        }
        let (config, warnings) = self.validate_partial(&k, config)?;
        let schema = k.schema_for(&config);
        let mut applied = fields::leaves(&config, schema);
        if status {
            applied.retain(|f| f.first().map(String::as_str) == Some("f:status"));
        } else if k.status_subresource {
            applied.retain(|f| f.first().map(String::as_str) != Some("f:status"));
        }
        let Some(old) = self.objects.get(&key).cloned() else {
            if status {
                return Err(ApiError::not_found(&format!(
                    "{} \"{name}\"",
                    qualified(group, plural)
                )));
            }
            let mut obj = config.clone();
            if k.status_subresource {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            meta_mut(&mut obj).insert("name".into(), json!(name));
            let created = self.create_as(
                group,
                plural,
                ns.as_deref(),
                obj,
                manager,
                "Apply",
                Some(applied),
            )?;
            return Ok((created, true, warnings));
        };
        let sub = status.then(|| "status".to_string());
        let mine =
            |m: &Managed| m.manager == manager && m.operation == "Apply" && m.subresource == sub;
        let mut managed = get_managed(&old);
        // Conflicts: a field another manager owns, applied with a different value.
        let mut conflicts: Vec<(String, String)> = Vec::new();
        for m in managed.iter().filter(|m| !mine(m)) {
            for f in &m.fields {
                if applied.contains(f) && fields::get_path(&old, f) != fields::get_path(&config, f)
                {
                    conflicts.push((m.manager.clone(), fields::display(f)));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, f)| json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
                .collect();
            let text: Vec<String> = conflicts
                .iter()
                .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
                .collect();
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    text.join("\n")
                ),
            );
            e.details =
                Some(json!({"name": name, "group": group, "kind": plural, "causes": causes}));
            return Err(e);
        }
        let previously: FieldSet = managed
            .iter()
            .filter(|m| mine(m))
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        // Applied fields move to this manager (with force, from the others; without conflicts, fields
        // applied with the same value become shared, as in Kubernetes).
        for m in managed.iter_mut().filter(|m| !mine(m)) {
            let before = m.fields.len();
            m.fields.retain(|f| {
                !(applied.contains(f) && fields::get_path(&old, f) != fields::get_path(&config, f))
            });
            if m.fields.len() != before {
                m.time = None;
            }
        }
        let others: FieldSet = managed
            .iter()
            .filter(|m| !mine(m))
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        let mut obj = old.clone();
        let keep_item = |item: &[String]| others.iter().any(|f| f.starts_with(item));
        for f in previously
            .iter()
            .filter(|f| !applied.contains(*f) && !others.contains(*f))
        {
            fields::remove_path(&mut obj, f, &keep_item);
        }
        merge_config(&mut obj, &config, status, k.status_subresource, schema);
        self.validate(&k, obj.clone())?;
        let same_fields = previously == applied;
        let old_time = managed
            .iter()
            .find(|m| mine(m))
            .and_then(|m| m.time.clone());
        managed.retain(|m| !mine(m));
        managed.push(Managed {
            manager: manager.into(),
            operation: "Apply".into(),
            fields: applied,
            subresource: sub.clone(),
            time: if same_fields { old_time } else { None },
        });
        managed.retain(|m| !m.fields.is_empty());
        set_managed(&mut obj, &managed);
        if strip_managed(&obj) == strip_managed(&old) && same_managed(&obj, &old) {
            return Ok((old, false, warnings));
        }
        if strip_managed(&obj) != strip_managed(&old) {
            // The object changed: this manager's entry gets a new time.
            if let Some(m) = managed.iter_mut().find(|m| mine(m)) {
                m.time = None;
            }
            set_managed(&mut obj, &managed);
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
    pub fn validate(&self, k: &Kind, obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        self.validate_with(k, obj, true)
    }

    /// As [`Store::validate`], without `required` checks: for an apply configuration, which need not
    /// repeat fields others own (the merged object is validated in full).
    pub fn validate_partial(&self, k: &Kind, obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        self.validate_with(k, obj, false)
    }

    fn validate_with(
        &self,
        k: &Kind,
        mut obj: Value,
        required: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let mut warnings = Vec::new();
        let Some(schema) = k.schema_for(&obj).cloned() else {
            return Ok((obj, warnings));
        };
        let mut errors = Vec::new();
        if let (Some(props), Some(o)) = (
            schema.get("properties").and_then(Value::as_object),
            obj.as_object_mut(),
        ) {
            for (key, value) in o.iter_mut() {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(ps) = props.get(key) {
                    check(value, ps, &format!(".{key}"), &mut errors, &mut warnings);
                }
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
        if !required {
            errors.retain(|e| !e.ends_with(": Required value"));
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
    if let (Some(p), Some(x)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        if pattern_matches(p, x) == Some(false) {
            errors.push(format!(
                "{path}: Invalid value: \"{}\": {path} in body should match '{p}'",
                short(v)
            ));
        }
    }
    let len = |v: &Value| match v {
        Value::String(x) => Some(x.chars().count() as u64),
        Value::Array(a) => Some(a.len() as u64),
        Value::Object(m) => Some(m.len() as u64),
        _ => None,
    };
    for (bound, kind) in [
        ("minLength", "String"),
        ("maxLength", "String"),
        ("minItems", "Array"),
        ("maxItems", "Array"),
        ("minProperties", "Object"),
        ("maxProperties", "Object"),
    ] {
        let applies = match kind {
            "String" => v.is_string(),
            "Array" => v.is_array(),
            _ => v.is_object(),
        };
        if let (true, Some(b), Some(n)) = (applies, s.get(bound).and_then(Value::as_u64), len(v)) {
            let too_short = bound.starts_with("min") && n < b;
            let too_long = bound.starts_with("max") && n > b;
            if too_short || too_long {
                errors.push(format!(
                    "{path}: Invalid value: {n}: {path} in body should have {} {b} {}",
                    if too_short { "at least" } else { "at most" },
                    match kind {
                        "String" => "chars long",
                        "Array" => "items",
                        _ => "properties",
                    }
                ));
            }
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

/// Whether `text` matches a schema `pattern` (None when the pattern is not one regex-lite understands:
/// then it is not checked). Compiled patterns are cached per thread.
fn pattern_matches(pattern: &str, text: &str) -> Option<bool> {
    thread_local! {
        static CACHE: std::cell::RefCell<BTreeMap<String, Option<regex_lite::Regex>>> =
            const { std::cell::RefCell::new(BTreeMap::new()) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let re = c
            .entry(pattern.to_string())
            .or_insert_with(|| regex_lite::Regex::new(pattern).ok());
        re.as_ref().map(|r| r.is_match(text))
    })
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

/// The object without managedFields (to tell whether a write changed anything but ownership).
fn strip_managed(v: &Value) -> Value {
    let mut v = without_rv(v);
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Same owners and fields (order and times aside).
fn same_managed(a: &Value, b: &Value) -> bool {
    let key = |v: &Value| {
        let mut m: Vec<(String, String, Option<String>, FieldSet)> = get_managed(v)
            .into_iter()
            .map(|m| (m.manager, m.operation, m.subresource, m.fields))
            .collect();
        m.sort();
        m
    };
    key(a) == key(b)
}

/// `plural.group` (or `plural` for the core group), as in the real server's messages.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Merges an apply configuration into the stored object (see [`fields::merge`]); `.status` only for a
/// status write, and never `.status` on the main resource of a kind with the status subresource.
fn merge_config(
    obj: &mut Value,
    config: &Value,
    status_only: bool,
    has_status_subresource: bool,
    schema: Option<&Value>,
) {
    let Some(cm) = config.as_object() else { return };
    let filtered: Map<String, Value> = cm
        .iter()
        .filter(|(k, _)| {
            let is_status = *k == "status";
            !((status_only && !is_status)
                || (!status_only && is_status && has_status_subresource)
                || matches!(k.as_str(), "apiVersion" | "kind"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fields::merge(obj, &Value::Object(filtered), schema, true);
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Managed {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub fields: FieldSet,
    pub subresource: Option<String>,
    /// When it last changed; None: now.
    pub time: Option<String>,
}

pub fn get_managed(obj: &Value) -> Vec<Managed> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e["manager"].as_str().unwrap_or("").into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    fields: fields::parse_fields_v1(&e["fieldsV1"]),
                    subresource: e["subresource"].as_str().map(String::from),
                    time: e["time"].as_str().map(String::from),
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
            let mut e = json!({"manager": m.manager, "operation": m.operation, "apiVersion": version,
                               "time": m.time.clone().unwrap_or_else(now),
                               "fieldsType": "FieldsV1", "fieldsV1": fields::to_fields_v1(&m.fields)});
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
