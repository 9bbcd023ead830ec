//! The emulator's object store: resource kinds, objects, resourceVersions, watch history, server-side
//! apply field ownership, status subresource, finalizers, generation and schema validation.
#![allow(clippy::too_many_arguments)] // the write paths mirror the API's parameters one to one

use crate::fields::{self, FieldPath, FieldSet};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};

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
    /// openAPIV3Schema per version (custom resources only), shared: a kind is cloned for every write.
    pub schemas: BTreeMap<String, std::sync::Arc<Value>>,
    pub builtin: bool,
    /// Whether objects carry `metadata.generation` (custom resources, CRDs, Deployments).
    pub generation: bool,
    /// Whether a delete answers with the object (as for namespaces, services, service accounts) rather
    /// than a `Success` Status.
    pub return_deleted: bool,
    /// The fields a field selector may name, besides none: None is Kubernetes' default
    /// (`metadata.name`, `metadata.namespace`).
    pub field_selectors: Option<Vec<String>>,
}

impl Kind {
    /// The openAPIV3Schema of the object's version (or of the storage version), for custom resources.
    pub fn schema_for(&self, obj: &Value) -> Option<&std::sync::Arc<Value>> {
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
    /// 404 for an object: `configmaps "x" not found`, details naming it.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .with_details(details(name, group, plural))
    }
    /// 409 AlreadyExists for an object.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .with_details(details(name, group, plural))
    }
    /// 409 Conflict: the object changed since the resourceVersion the write names.
    pub fn stale(group: &str, plural: &str, name: &str) -> Self {
        ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", qualified(group, plural)))
            .with_details(details(name, group, plural))
    }
    /// 422 Invalid: `Kind.group "name" is invalid: <errors>` (`kind` a Kind, or a plural for the errors
    /// kube-apiserver words with the resource), a cause per error.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: Vec<FieldErr>) -> Self {
        let mut texts: Vec<String> = Vec::new();
        for e in &errors {
            let t = e.text();
            if !texts.contains(&t) {
                texts.push(t);
            }
        }
        let joined = if texts.len() == 1 {
            texts.remove(0)
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
            .collect();
        let mut d = details(name, group, kind);
        d["causes"] = Value::Array(causes);
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {joined}",
                qualified_kind(group, kind)
            ),
        )
        .with_details(d)
    }
    pub fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }
    pub fn body(&self) -> Value {
        let mut b = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "code": self.code});
        if !self.reason.is_empty() {
            b["reason"] = json!(self.reason);
        }
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
    /// Light mode (for benchmarks of what talks to many emulators): an apply to an existing object replaces
    /// its top-level fields (labels and annotations merged) without schema checks or field ownership, and
    /// only adds the manager's name to managedFields. Not what a real server does; see README.md.
    pub light: bool,
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
        generation: false,
        return_deleted: false,
        field_selectors: None,
    }
}

fn with_fields(mut k: Kind, fields: &[&str]) -> Kind {
    k.field_selectors = Some(fields.iter().map(|f| f.to_string()).collect());
    k
}

fn returning_deleted(mut k: Kind) -> Kind {
    k.return_deleted = true;
    k
}

fn with_generation(mut k: Kind) -> Kind {
    k.generation = true;
    k
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
            light: false,
            ..Store::default()
        };
        for k in [
            returning_deleted(with_fields(
                builtin("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
                &["status.phase", "metadata.name"],
            )),
            with_fields(
                builtin("", "v1", "Secret", "secrets", true, false, &[]),
                &["type", "metadata.namespace", "metadata.name"],
            ),
            builtin("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
            returning_deleted(with_fields(
                builtin("", "v1", "Service", "services", true, true, &["svc"]),
                &[
                    "metadata.namespace",
                    "metadata.name",
                    "spec.clusterIP",
                    "spec.type",
                ],
            )),
            returning_deleted(builtin(
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                false,
                &["sa"],
            )),
            with_fields(
                builtin("", "v1", "Event", "events", true, false, &["ev"]),
                &[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                    "metadata.namespace",
                    "metadata.name",
                ],
            ),
            builtin(
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                true,
                false,
                &["ev"],
            ),
            with_generation(builtin(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                true,
                &["deploy"],
            )),
            builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                false,
                &[],
            ),
            with_generation(builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &["crd"],
            )),
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
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let mut selectable = vec!["metadata.name".to_string()];
        if namespaced {
            selectable.push("metadata.namespace".into());
        }
        for v in spec["versions"].as_array().cloned().unwrap_or_default() {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            for f in v["selectableFields"].as_array().into_iter().flatten() {
                if let Some(p) = f["jsonPath"].as_str() {
                    let p = p.trim_start_matches('.').to_string();
                    if !selectable.contains(&p) {
                        selectable.push(p);
                    }
                }
            }
            if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
                schemas.insert(name.clone(), std::sync::Arc::new(s.clone()));
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
            namespaced,
            status_subresource: status,
            schemas,
            builtin: false,
            generation: true,
            return_deleted: false,
            field_selectors: Some(selectable),
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
            .ok_or_else(|| ApiError::not_found(group, plural, name))
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
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        Ok(())
    }

    /// Sets server fields and stores; emits ADDED or MODIFIED. `spec_changed` bumps generation.
    fn commit(&mut self, key: Key, mut obj: Value, existed: Option<&Value>) -> Value {
        let rv = self.next_rv();
        let tracks_generation = self
            .kinds
            .get(&(key.0.clone(), key.1.clone()))
            .is_some_and(|k| k.generation);
        let meta = meta_mut(&mut obj);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        let gen = existed
            .and_then(|old| old.pointer("/metadata/generation").and_then(Value::as_i64))
            .unwrap_or(1);
        if tracks_generation {
            meta.insert("generation".into(), json!(gen));
        } else {
            meta.remove("generation");
        }
        if let (Some(old), true) = (existed, tracks_generation) {
            if strip_meta_status(old) != strip_meta_status(&obj) {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    + 1;
                meta_mut(&mut obj).insert("generation".into(), json!(g));
            }
        }
        if key.0 == "apiextensions.k8s.io" && existed.is_some() {
            // A changed CRD serves its new versions and schemas.
            let _ = self.register_crd(&obj);
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

    /// Creates an object; its fields are owned by `manager` with `operation` (Update: what the create
    /// set, defaults included; Apply: the applied fields in `owned`).
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
                return Err(ApiError::invalid(
                    group,
                    &k.kind,
                    "",
                    vec![FieldErr::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        }
        let key: Key = (group.into(), plural.into(), ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(group, plural, &name));
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
            for f in [
                "resourceVersion",
                "generation",
                "deletionTimestamp",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
        builtin_defaults(&k, &mut obj, &name);
        let mut obj = self.validate(&k, obj)?.0;
        let schema = k.schema_for(&obj).cloned();
        // An apply's empty maps are its own until stored; a create's are never seen.
        if owned.is_none() {
            drop_empty(&k, &mut obj);
        }
        let fields = owned.unwrap_or_else(|| {
            // What the write is compared with: an empty object. A built-in kind's (typed) one already
            // has its `spec` and `status` structs, so a create does not own them as added maps.
            let empty = if k.builtin {
                json!({"spec": {}, "status": {}})
            } else {
                json!({})
            };
            let mut c = fields::compare(&empty, &obj, schema.as_deref());
            scope(&mut c, false, k.status_subresource);
            c.changed()
        });
        drop_empty(&k, &mut obj);
        if !fields.is_empty() {
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
        }
        if k.builtin && group.is_empty() && plural == "namespaces" {
            // Set after ownership is recorded, as kube-apiserver's namespace strategy does.
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
        }
        if group == "apiextensions.k8s.io" {
            self.register_crd(&obj)?;
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), crd_status(o.get("spec")));
            }
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
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(group, plural, name))?;
        if let Some(body_name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!("the name of the object ({body_name}) does not match the name on the URL ({name})"),
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
                    return Err(ApiError::stale(group, plural, name));
                }
                Some(_) => {}
                None if !k.builtin => {
                    // Worded with the resource, not the kind, as kube-apiserver does here.
                    return Err(ApiError::invalid(
                        group,
                        plural,
                        name,
                        vec![FieldErr::invalid(
                            "metadata.resourceVersion",
                            "0",
                            "must be specified for an update",
                        )],
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
        builtin_defaults(&k, &mut obj, name);
        let (mut obj, _) = self.validate(&k, obj)?;
        drop_empty(&k, &mut obj);
        let schema = k.schema_for(&obj).cloned();
        let mut managed = get_managed(&old);
        let mut cmp = fields::compare(&old, &obj, schema.as_deref());
        scope(&mut cmp, status, k.status_subresource);
        record_update(&mut managed, manager, status.then(|| "status".into()), &cmp);
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

    /// Server-side apply of `config` by `manager`, as Kubernetes' structured-merge-diff does it: the
    /// configuration is merged into the stored object; what this manager applied before, no longer
    /// applies and nobody else owns is removed; other managers that own a field the apply changes or adds
    /// are conflicts (409) unless `force`, which takes the fields from them. Returns the object, whether
    /// it changed, and the unknown fields that were pruned.
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
        if self.light && !status {
            if let Some(old) = self.objects.get(&key).cloned() {
                return self.apply_light(key, config, &old, manager);
            }
        }
        if let Some(schema) = k.schema_for(&config) {
            // kube-apiserver types an apply configuration of a custom resource before anything else: a
            // field its schema does not declare, or a value of the wrong type, fails the request (500),
            // whatever fieldValidation says.
            let mut errs = Vec::new();
            typed_errors(&config, schema, "", true, &mut errs);
            if !errs.is_empty() {
                let text = if errs.len() == 1 {
                    errs.remove(0)
                } else {
                    format!("errors:\n  {}", errs.join("\n  "))
                };
                return Err(ApiError::new(
                    500,
                    "",
                    format!(
                        "failed to create typed patch object ({}/{name}; {}, Kind={}): {text}",
                        ns.as_deref().unwrap_or(""),
                        config["apiVersion"].as_str().unwrap_or(""),
                        k.kind
                    ),
                ));
            }
        }
        let (config, unknown) = self.validate_partial(&k, config)?;
        let schema = k.schema_for(&config).cloned();
        let schema = schema.as_deref();
        let mut applied = fields::field_set(&config, schema);
        let under_status = |f: &FieldPath| f.first().map(String::as_str) == Some("f:status");
        if status {
            applied.retain(under_status);
        } else if k.status_subresource {
            applied.retain(|f| !under_status(f));
        }
        let Some(old) = self.objects.get(&key).cloned() else {
            if status {
                return Err(ApiError::not_found(group, plural, name));
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
            return Ok((created, true, unknown));
        };
        let sub = status.then(|| "status".to_string());
        let mine =
            |m: &Managed| m.manager == manager && m.operation == "Apply" && m.subresource == sub;
        let mut managed = get_managed(&old);
        let last: FieldSet = managed
            .iter()
            .filter(|m| mine(m))
            .flat_map(|m| m.fields.iter().cloned())
            .collect();
        let owned: FieldSet = managed
            .iter()
            .filter(|m| !mine(m))
            .flat_map(|m| m.fields.iter().cloned())
            .chain(applied.iter().cloned())
            .collect();
        // Anything owned at or under a path keeps it (a keyed item another manager has fields in stays).
        let kept = |p: &[String]| owned.iter().any(|f| f.starts_with(p));
        let mut obj = old.clone();
        merge_config(&mut obj, &config, status, k.status_subresource, schema);
        for f in last.iter().filter(|f| !kept(f)) {
            fields::remove_path(&mut obj, f, &kept);
        }
        builtin_defaults(&k, &mut obj, name);
        let (mut obj, _) = self.validate(&k, obj)?;
        let mut cmp = fields::compare(&strip_managed(&old), &strip_managed(&obj), schema);
        scope(&mut cmp, status, k.status_subresource);
        drop_empty(&k, &mut obj);
        let changed = cmp.changed();
        let mut conflicts: Vec<(&Managed, FieldPath)> = Vec::new();
        for m in managed.iter().filter(|m| !mine(m)) {
            for f in m.fields.intersection(&changed) {
                conflicts.push((m, f.clone()));
            }
        }
        if !conflicts.is_empty() && !force {
            let version = obj["apiVersion"].as_str().unwrap_or("").to_string();
            return Err(conflict_error(&conflicts, &version));
        }
        for m in managed.iter_mut().filter(|m| !mine(m)) {
            m.fields
                .retain(|f| !changed.contains(f) && !cmp.removed.contains(f));
        }
        let object_changed = strip_managed(&obj) != strip_managed(&old);
        match managed.iter_mut().find(|m| mine(m)) {
            Some(m) => {
                if m.fields != applied || object_changed {
                    m.time = None;
                }
                m.fields = applied;
            }
            None => managed.push(Managed {
                manager: manager.into(),
                operation: "Apply".into(),
                fields: applied,
                subresource: sub.clone(),
                time: None,
            }),
        }
        managed.retain(|m| !m.fields.is_empty());
        set_managed(&mut obj, &managed);
        if !object_changed && same_managed(&obj, &old) {
            return Ok((old, false, unknown));
        }
        let (out, changed) = self.finish_write(key, obj, &old)?;
        Ok((out, changed, unknown))
    }

    /// An apply in light mode (`Store::light`) to an existing object.
    fn apply_light(
        &mut self,
        key: Key,
        config: Value,
        old: &Value,
        manager: &str,
    ) -> Result<(Value, bool, Vec<String>), ApiError> {
        let mut obj = old.clone();
        if let (Some(o), Some(c)) = (obj.as_object_mut(), config.as_object()) {
            for (field, v) in c {
                match field.as_str() {
                    "status" => {}
                    "metadata" => {
                        for part in ["labels", "annotations"] {
                            if let Some(add) = v.get(part).and_then(Value::as_object) {
                                let m = o
                                    .entry("metadata")
                                    .or_insert_with(|| json!({}))
                                    .as_object_mut()
                                    .and_then(|m| {
                                        m.entry(part).or_insert_with(|| json!({})).as_object_mut()
                                    });
                                if let Some(m) = m {
                                    for (k2, v2) in add {
                                        m.insert(k2.clone(), v2.clone());
                                    }
                                }
                            }
                        }
                    }
                    _ => {
                        o.insert(field.clone(), v.clone());
                    }
                }
            }
        }
        let managers = meta_mut(&mut obj)
            .entry("managedFields")
            .or_insert_with(|| json!([]));
        if let Some(list) = managers.as_array_mut() {
            if !list.iter().any(|m| m["manager"] == manager) {
                list.push(json!({"manager": manager, "operation": "Apply", "apiVersion": config["apiVersion"],
                    "fieldsType": "FieldsV1", "fieldsV1": {}}));
            }
        }
        if obj == *old {
            return Ok((old.clone(), false, vec![]));
        }
        let (out, changed) = self.finish_write(key, obj, old)?;
        Ok((out, changed, vec![]))
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
            .ok_or_else(|| ApiError::not_found(group, plural, name))?;
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
        let gone = self.remove(&key).unwrap_or(old);
        if k.builtin && group.is_empty() && plural == "namespaces" {
            // A real server answers with the namespace Terminating; its namespace controller empties and
            // removes it later. The emulator has done both already.
            let mut answer = gone;
            meta_mut(&mut answer).insert("deletionTimestamp".into(), json!(now()));
            answer["status"] = json!({"phase": "Terminating"});
            return Ok(answer);
        }
        Ok(gone)
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

    /// Admits a custom resource as a real server does: unknown fields are pruned (and returned, for the
    /// `Warning` header or a `fieldValidation=Strict` refusal), nulls of non-nullable fields dropped,
    /// `default`s filled in, then the schema checked (422 Invalid, with a cause per error).
    pub fn validate(&self, k: &Kind, obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        self.validate_with(k, obj, true)
    }

    /// As [`Store::validate`], without `required` checks and without defaults: for an apply configuration,
    /// which need not repeat fields others own (the merged object is validated in full).
    pub fn validate_partial(&self, k: &Kind, obj: Value) -> Result<(Value, Vec<String>), ApiError> {
        self.validate_with(k, obj, false)
    }

    fn validate_with(
        &self,
        k: &Kind,
        mut obj: Value,
        full: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let mut unknown = Vec::new();
        let Some(schema) = k.schema_for(&obj).cloned() else {
            return Ok((obj, unknown));
        };
        prune(&mut obj, &schema, "", true, &mut unknown);
        if full {
            apply_defaults(&mut obj, &schema, true);
        }
        let mut errors = Vec::new();
        if let Some(o) = obj.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            // A status-only write (an apply to /status) need not repeat the spec.
            let status_only = o.get("spec").is_none() && o.get("status").is_some();
            if let Some(Value::Array(req)) = schema.get("required").filter(|_| full && !status_only)
            {
                for r in req.iter().filter_map(Value::as_str) {
                    if o.get(r).is_none() {
                        errors.push(FieldErr::required(r, ""));
                    }
                }
            }
            for (key, value) in o {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(key)) {
                    check(value, ps, key, full, &mut errors);
                }
            }
        }
        if !errors.is_empty() {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            // As kube-apiserver: with CEL rules in the schema, an error that keeps them from running says so.
            let blocking = errors.iter().any(|e| {
                matches!(
                    e.reason,
                    "FieldValueNotSupported"
                        | "FieldValueRequired"
                        | "FieldValueTooLong"
                        | "FieldValueTooMany"
                        | "FieldValueTypeInvalid"
                )
            });
            if blocking && has_cel(&schema) {
                errors.push(FieldErr {
                    field: "<nil>".into(),
                    reason: "FieldValueInvalid",
                    body: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
                });
            }
            return Err(ApiError::invalid(&k.group, &k.kind, name, errors));
        }
        Ok((obj, unknown))
    }
}

/// One validation error, as Kubernetes' `field.Error`: the field path, its reason (cause type) and its
/// text (`ErrorBody`).
#[derive(Clone, Debug)]
pub struct FieldErr {
    pub field: String,
    pub reason: &'static str,
    pub body: String,
}

impl FieldErr {
    pub fn required(field: &str, detail: &str) -> FieldErr {
        FieldErr {
            field: field.into(),
            reason: "FieldValueRequired",
            body: with_detail("Required value", detail),
        }
    }
    pub fn invalid(field: &str, value: &str, detail: &str) -> FieldErr {
        FieldErr {
            field: field.into(),
            reason: "FieldValueInvalid",
            body: with_detail(&format!("Invalid value: {value}"), detail),
        }
    }
    fn type_invalid(field: &str, type_name: &str, detail: &str) -> FieldErr {
        FieldErr {
            field: field.into(),
            reason: "FieldValueTypeInvalid",
            body: with_detail(&format!("Invalid value: {}", go_quote(type_name)), detail),
        }
    }
    fn not_supported(field: &str, value: &str, supported: &[String]) -> FieldErr {
        let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        FieldErr {
            field: field.into(),
            reason: "FieldValueNotSupported",
            body: with_detail(
                &format!("Unsupported value: {value}"),
                &if quoted.is_empty() {
                    String::new()
                } else {
                    format!("supported values: {}", quoted.join(", "))
                },
            ),
        }
    }
    fn too_long(field: &str, max: u64) -> FieldErr {
        FieldErr {
            field: field.into(),
            reason: "FieldValueTooLong",
            body: format!(
                "Too long: may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            ),
        }
    }
    fn too_many(field: &str, actual: u64, max: u64) -> FieldErr {
        FieldErr {
            field: field.into(),
            reason: "FieldValueTooMany",
            body: format!(
                "Too many: {actual}: must have at most {max} {}",
                if max == 1 { "item" } else { "items" }
            ),
        }
    }
    /// `field: body`, as in a Status message.
    pub fn text(&self) -> String {
        format!("{}: {}", self.field, self.body)
    }
}

fn with_detail(head: &str, detail: &str) -> String {
    if detail.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {detail}")
    }
}

/// A string as Go's `%q` prints it (JSON's escaping agrees for what schemas and names hold).
pub fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A value as `field.Error` prints it: strings quoted, numbers and booleans plain, the rest as JSON.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

/// The JSON type of a value, in OpenAPI's words.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether a schema holds a CEL rule anywhere.
fn has_cel(s: &Value) -> bool {
    match s {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_cel),
        Value::Array(a) => a.iter().any(has_cel),
        _ => false,
    }
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool) == Some(true)
}

/// Structural pruning: drops what the schema does not declare (naming it in `unknown`, `spec.x` style)
/// and nulls of fields that are not nullable.
fn prune(v: &mut Value, s: &Value, path: &str, at_root: bool, unknown: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            if flag(s, "x-kubernetes-int-or-string") {
                return;
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let keys: Vec<String> = m.keys().cloned().collect();
            for key in keys {
                if at_root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(ps) => {
                        let null = m.get(&key).is_some_and(Value::is_null);
                        if null && !flag(ps, "nullable") {
                            m.remove(&key);
                        } else if let Some(x) = m.get_mut(&key) {
                            prune(x, ps, &join(&key), false, unknown);
                        }
                    }
                    None => {
                        let keep = preserve
                            || additional.and_then(Value::as_bool) == Some(true)
                            || (props.is_none()
                                && additional.is_none()
                                && s.get("type").and_then(Value::as_str) != Some("object"));
                        if !keep {
                            m.remove(&key);
                            unknown.push(join(&key));
                        }
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    prune(x, items, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// What structured-merge-diff refuses when it types an apply configuration: undeclared fields and values
/// of the wrong type, as `.path: message`.
fn typed_errors(v: &Value, s: &Value, path: &str, at_root: bool, out: &mut Vec<String>) {
    if v.is_null() || flag(s, "x-kubernetes-int-or-string") {
        return;
    }
    let got = |v: &Value| match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
        Value::Null => "<nil>",
    };
    match s.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") if !v.is_number() => {
            out.push(format!(
                "{path}: expected numeric (int or float), got {}",
                got(v)
            ));
            return;
        }
        Some("string") if !v.is_string() => {
            out.push(format!("{path}: expected string, got {v}"));
            return;
        }
        Some("boolean") if !v.is_boolean() => {
            out.push(format!("{path}: expected boolean, got {v}"));
            return;
        }
        Some("object") if !v.is_object() => {
            out.push(format!("{path}: expected map, got {v}"));
            return;
        }
        Some("array") if !v.is_array() => {
            out.push(format!("{path}: expected list, got {v}"));
            return;
        }
        _ => {}
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            for (k, x) in m {
                if at_root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = format!("{path}.{k}");
                match props
                    .and_then(|p| p.get(k))
                    .or_else(|| additional.filter(|a| a.is_object()))
                {
                    Some(ps) => typed_errors(x, ps, &sub, false, out),
                    None if preserve || additional.and_then(Value::as_bool) == Some(true) => {}
                    None => out.push(format!("{sub}: field not declared in schema")),
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                let keys = fields::list_map_keys(Some(s));
                for (i, x) in a.iter().enumerate() {
                    let el = match keys.as_ref().and_then(|k| fields::item_key(x, k)) {
                        Some(k) => fields::display(&[k]),
                        None => format!("[{i}]"),
                    };
                    typed_errors(x, items, &format!("{path}{el}"), false, out);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the schema's `default`s where a field is absent (inside objects that are there, a defaulted
/// object included), as a real server does on every write and read.
fn apply_defaults(v: &mut Value, s: &Value, at_root: bool) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, ps) in props {
                    if at_root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    if let (None, Some(d)) = (m.get(k), ps.get("default")) {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m.iter_mut() {
                if at_root && k == "metadata" {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(k)).or(additional) {
                    apply_defaults(x, ps, false);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for x in a {
                    apply_defaults(x, items, false);
                }
            }
        }
        _ => {}
    }
}

/// Checks a value against its schema, as kube-apiserver's OpenAPI validation words it. `required`:
/// whether required fields are checked (not for an apply configuration).
fn check(v: &Value, s: &Value, path: &str, required: bool, errors: &mut Vec<FieldErr>) {
    if v.is_null() {
        return;
    }
    let name = path;
    if flag(s, "x-kubernetes-int-or-string") {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(FieldErr::type_invalid(
                path,
                type_name(v),
                &format!(
                    "{name} in body must be of type integer,string: {}",
                    go_quote(type_name(v))
                ),
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
        errors.push(FieldErr::type_invalid(
            path,
            type_name(v),
            &format!(
                "{name} in body must be of type {}: {}",
                ty.unwrap_or("?"),
                go_quote(type_name(v))
            ),
        ));
        return;
    }
    if let Some(Value::Array(en)) = s.get("enum") {
        if !en.contains(v) {
            let supported: Vec<String> = en
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            errors.push(FieldErr::not_supported(path, &go_value(v), &supported));
        }
    }
    if let Some(x) = v.as_f64() {
        let exclusive = |k: &str| flag(s, k);
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            let (bad, words) = if exclusive("exclusiveMaximum") {
                (x >= max, "less than")
            } else {
                (x > max, "less than or equal to")
            };
            if bad {
                errors.push(FieldErr::invalid(
                    path,
                    &go_value(v),
                    &format!("{name} in body should be {words} {max}"),
                ));
            }
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            let (bad, words) = if exclusive("exclusiveMinimum") {
                (x <= min, "greater than")
            } else {
                (x < min, "greater than or equal to")
            };
            if bad {
                errors.push(FieldErr::invalid(
                    path,
                    &go_value(v),
                    &format!("{name} in body should be {words} {min}"),
                ));
            }
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if n > max {
                errors.push(FieldErr::too_long(path, max));
            }
        }
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if n < min {
                errors.push(FieldErr::invalid(
                    path,
                    &go_value(v),
                    &format!("{name} in body should be at least {min} chars long"),
                ));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if pattern_matches(p, text) == Some(false) {
                errors.push(FieldErr::invalid(
                    path,
                    &go_value(v),
                    &format!("{name} in body should match '{p}'"),
                ));
            }
        }
    }
    match v {
        Value::Object(m) => {
            let n = m.len() as u64;
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
                if n > max {
                    errors.push(FieldErr::too_many(path, n, max));
                }
            }
            if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
                if n < min {
                    errors.push(FieldErr::invalid(
                        path,
                        &n.to_string(),
                        &format!("{name} in body should have at least {min} properties"),
                    ));
                }
            }
            if let Some(Value::Array(req)) = s.get("required").filter(|_| required) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errors.push(FieldErr::required(&format!("{path}.{r}"), ""));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (key, x) in m {
                if let Some(ps) = props.and_then(|p| p.get(key)).or(additional) {
                    check(x, ps, &format!("{path}.{key}"), required, errors);
                }
            }
        }
        Value::Array(a) => {
            let n = a.len() as u64;
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    errors.push(FieldErr::too_many(path, n, max));
                }
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    errors.push(FieldErr::invalid(
                        path,
                        &n.to_string(),
                        &format!("{name} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    check(x, items, &format!("{path}[{i}]"), required, errors);
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

/// A CustomResourceDefinition's status as a real server reports it once the CRD is served: names accepted,
/// Established, the storage version stored.
fn crd_status(spec: Option<&Value>) -> Value {
    let spec = spec.cloned().unwrap_or(json!({}));
    let mut names = spec.get("names").cloned().unwrap_or(json!({}));
    if names.get("listKind").is_none() {
        if let Some(kind) = names.get("kind").and_then(Value::as_str) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    let stored: Vec<Value> = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let t = now();
    json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": t, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": t, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
        "storedVersions": stored,
    })
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

/// A Status's `details`: name and group only when not empty, as a real server leaves them out.
pub fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = json!({"kind": kind});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

/// `Kind.group` (or `Kind` for the core group).
pub fn qualified_kind(group: &str, kind: &str) -> String {
    qualified(group, kind)
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

/// Only what a write may change counts: `.status` alone on the status subresource, everything but
/// `.status` on the main resource of a kind with a status subresource.
fn scope(c: &mut fields::Comparison, status: bool, has_status_subresource: bool) {
    let under_status = |f: &FieldPath| f.first().map(String::as_str) == Some("f:status");
    if status {
        c.retain(under_status);
    } else if has_status_subresource {
        c.retain(|f| !under_status(f));
    }
}

/// Ownership after a non-apply write by `manager` (operation Update): what it added or changed becomes
/// its own and leaves the other managers; what it removed leaves everyone.
fn record_update(
    managed: &mut Vec<Managed>,
    manager: &str,
    subresource: Option<String>,
    c: &fields::Comparison,
) {
    let changed = c.changed();
    if changed.is_empty() && c.removed.is_empty() {
        return;
    }
    let me = |m: &Managed| {
        m.manager == manager && m.operation == "Update" && m.subresource == subresource
    };
    for m in managed.iter_mut().filter(|m| !me(m)) {
        m.fields
            .retain(|f| !changed.contains(f) && !c.removed.contains(f));
    }
    match managed.iter_mut().find(|m| me(m)) {
        Some(m) => {
            m.fields.retain(|f| !c.removed.contains(f));
            m.fields.extend(changed);
            m.time = None;
        }
        None => managed.push(Managed {
            manager: manager.into(),
            operation: "Update".into(),
            fields: changed,
            subresource,
            time: None,
        }),
    }
    managed.retain(|m| !m.fields.is_empty());
}

/// How kube-apiserver names a manager in a conflict.
fn print_manager(m: &Managed, version: &str) -> String {
    let mut s = go_quote(&m.manager);
    if let Some(sub) = &m.subresource {
        s = format!("{s} with subresource {}", go_quote(sub));
    }
    if m.operation == "Update" {
        s = format!("{s} using {version}");
    }
    s
}

/// The 409 of an apply that conflicts, worded as kube-apiserver words it.
fn conflict_error(conflicts: &[(&Managed, FieldPath)], version: &str) -> ApiError {
    let mut sorted: Vec<(&Managed, FieldPath)> = conflicts.to_vec();
    sorted.sort_by(|(a, f), (b, g)| {
        (&a.manager, &a.operation, &a.subresource)
            .cmp(&(&b.manager, &b.operation, &b.subresource))
            .then_with(|| fields::smd_order(f, g))
    });
    let causes: Vec<Value> = sorted
        .iter()
        .map(|(m, f)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(m, version)),
                   "field": fields::display(f)})
        })
        .collect();
    let message = if let [(m, f)] = sorted.as_slice() {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(m, version),
            fields::display(f)
        )
    } else {
        let mut lines: Vec<String> = Vec::new();
        let mut last: Option<String> = None;
        for (m, f) in &sorted {
            let who = print_manager(m, version);
            if last.as_ref() != Some(&who) {
                lines.push(format!("conflicts with {who}:"));
                last = Some(who);
            }
            lines.push(format!("- {}", fields::display(f)));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            sorted.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// What kube-apiserver's decoding and defaulting do to built-in kinds: a namespace carries the
/// `kubernetes.io/metadata.name` label; a Secret's `stringData` is merged into `data` (base64) and its
/// `type` defaults to `Opaque`.
fn builtin_defaults(k: &Kind, obj: &mut Value, name: &str) {
    if k.builtin && k.group.is_empty() && k.plural == "secrets" {
        if let Some(o) = obj.as_object_mut() {
            if let Some(Value::Object(strings)) = o.remove("stringData") {
                let data = o.entry("data").or_insert_with(|| json!({}));
                if !data.is_object() {
                    *data = json!({});
                }
                for (key, v) in strings {
                    let text = v.as_str().unwrap_or_default().as_bytes().to_vec();
                    data[key] = json!(base64(&text));
                }
            }
            o.entry("type").or_insert_with(|| json!("Opaque"));
        }
    }
    if k.builtin && k.group.is_empty() && k.plural == "namespaces" {
        let m = meta_mut(obj);
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        labels["kubernetes.io/metadata.name"] = json!(name);
    }
}

/// Standard base64 with padding (a Secret's data).
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(T[((n >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// What a real server does not serialize: empty maps and lists of metadata (and of a ConfigMap's or
/// Secret's data). Ownership is computed before this, as kube-apiserver computes it on the decoded
/// object.
fn drop_empty(k: &Kind, obj: &mut Value) {
    let empty = |v: &Value| {
        v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
    };
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
            if m.get(f).is_some_and(|v| empty(v) || v.is_null()) {
                m.remove(f);
            }
        }
    }
    if !k.builtin || !k.group.is_empty() {
        return;
    }
    if matches!(k.plural.as_str(), "configmaps" | "secrets") {
        if let Some(o) = obj.as_object_mut() {
            for f in ["data", "binaryData", "stringData"] {
                if o.get(f).is_some_and(|v| empty(v) || v.is_null()) {
                    o.remove(f);
                }
            }
        }
    }
}

fn set_managed(obj: &mut Value, managed: &[Managed]) {
    let version = obj.get("apiVersion").cloned().unwrap_or(json!("v1"));
    // kube-apiserver's order: by operation, time, manager, subresource.
    let mut managed = managed.to_vec();
    let t = now();
    managed.sort_by(|a, b| {
        (
            &a.operation,
            a.time.as_deref().unwrap_or(&t),
            &a.manager,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                b.time.as_deref().unwrap_or(&t),
                &b.manager,
                &b.subresource,
            ))
    });
    if managed.is_empty() {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }
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
