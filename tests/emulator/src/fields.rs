//! Field paths for server-side apply, in the element syntax of `metadata.managedFields[].fieldsV1`:
//! `f:<name>` (a map field), `k:{"key":value,...}` (an item of a list whose schema says
//! `x-kubernetes-list-type: map`, keyed by its `x-kubernetes-list-map-keys`) and `v:<json>` (an item of a
//! `x-kubernetes-list-type: set` list of scalars). Every other list is atomic: one field.
//!
//! A field set holds *members*: leaves, and the inner nodes that are owned themselves (an item of a keyed
//! list, the key of a map that is not a declared property, a map or list that a write added). It follows
//! Kubernetes' structured-merge-diff: [`field_set`] is what an apply configuration owns, [`compare`] what a
//! write added, changed and removed. In FieldsV1, a member that also has owned children is marked `"."`.
//!
//! Schemas are the CRD version's `openAPIV3Schema` (absent for built-in kinds, whose lists are all atomic,
//! except `metadata.finalizers` (a set) and `metadata.ownerReferences` (a map keyed by `uid`), as in
//! Kubernetes).

use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// A field path: FieldsV1 elements from the root.
pub type FieldPath = Vec<String>;
/// A set of owned fields (members).
pub type FieldSet = BTreeSet<FieldPath>;

/// Server-set metadata that nobody owns.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn metadata_schema() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| {
        let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"}, "generateName": {"type": "string"},
            "labels": strings, "annotations": strings,
            "finalizers": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"],
                                "items": {"type": "object"}},
        }})
    })
}

/// The schema of `key` inside an object whose schema is `s` (the root's `metadata` has a fixed one).
pub fn child_schema<'a>(s: Option<&'a Value>, key: &str, at_root: bool) -> Option<&'a Value> {
    if at_root && key == "metadata" {
        return Some(metadata_schema());
    }
    let s = s?;
    s.get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn items_schema(s: Option<&Value>) -> Option<&Value> {
    s?.get("items")
}

/// Whether `key` is a declared property of the object schema `s` (a struct field, in Kubernetes' terms).
/// Without a schema (built-in kinds) every key counts as declared.
fn declared(s: Option<&Value>, key: &str, at_root: bool) -> bool {
    if at_root && key == "metadata" {
        return true;
    }
    match s {
        None => true,
        Some(s) => s
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| p.contains_key(key)),
    }
}

fn atomic_map(s: Option<&Value>) -> bool {
    s.and_then(|s| s.get("x-kubernetes-map-type"))
        .and_then(Value::as_str)
        == Some("atomic")
}

/// The key fields of a `x-kubernetes-list-type: map` list, sorted.
pub fn list_map_keys(s: Option<&Value>) -> Option<Vec<String>> {
    let s = s?;
    if s.get("x-kubernetes-list-type")?.as_str()? != "map" {
        return None;
    }
    let mut keys: Vec<String> = s
        .get("x-kubernetes-list-map-keys")?
        .as_array()?
        .iter()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    keys.sort();
    (!keys.is_empty()).then_some(keys)
}

fn is_set(s: Option<&Value>) -> bool {
    s.and_then(|s| s.get("x-kubernetes-list-type"))
        .and_then(Value::as_str)
        == Some("set")
}

/// `k:{...}` for a list item (key fields sorted by name), or None when it lacks a key field.
pub fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    for k in keys {
        let v = item.get(k)?;
        parts.push(format!("{}:{}", Value::String(k.clone()), v));
    }
    Some(format!("k:{{{}}}", parts.join(",")))
}

fn keyed(a: &[Value], keys: &[String]) -> bool {
    a.iter().all(|i| item_key(i, keys).is_some())
}

fn settable(a: &[Value]) -> bool {
    a.iter().all(|x| !x.is_object() && !x.is_array())
}

/// How a list merges and is owned.
enum ListKind {
    Atomic,
    Map(Vec<String>),
    Set,
}

fn list_kind(s: Option<&Value>, items: &[&[Value]]) -> ListKind {
    if let Some(keys) = list_map_keys(s).filter(|k| items.iter().all(|a| keyed(a, k))) {
        return ListKind::Map(keys);
    }
    if is_set(s) && items.iter().all(|a| settable(a)) {
        return ListKind::Set;
    }
    ListKind::Atomic
}

/// Whether a path is the object's identity (apiVersion, kind, metadata.name/namespace): never owned.
pub fn is_identity(f: &[String]) -> bool {
    matches!(
        f.first().map(String::as_str),
        Some("f:apiVersion") | Some("f:kind")
    ) || (f.first().map(String::as_str) == Some("f:metadata")
        && matches!(
            f.get(1).map(String::as_str),
            Some("f:name") | Some("f:namespace")
        ))
}

/// Paths no field set holds: the root, `metadata` itself, the identity and what the server sets.
fn ignored(f: &[String]) -> bool {
    match f {
        [] => true,
        [m] if m == "f:metadata" => true,
        [m, x, ..] if m == "f:metadata" => {
            is_identity(f)
                || x.strip_prefix("f:")
                    .is_some_and(|x| SERVER_METADATA.contains(&x))
        }
        _ => is_identity(f),
    }
}

/// What an apply configuration owns (structured-merge-diff's `ToFieldSet`): its leaves, keyed-list items
/// and set values, empty maps and nulls, and the keys of maps that are not declared properties.
pub fn field_set(v: &Value, schema: Option<&Value>) -> FieldSet {
    fn walk(v: &Value, s: Option<&Value>, path: &mut FieldPath, out: &mut FieldSet) {
        if ignored(path) && !path.is_empty() && path.len() > 1 {
            return;
        }
        match v {
            Value::Object(m) => {
                if !path.is_empty() && atomic_map(s) {
                    out.insert(path.clone());
                    return;
                }
                let at_root = path.is_empty();
                for (k, x) in m {
                    let cs = child_schema(s, k, at_root);
                    path.push(format!("f:{k}"));
                    walk(x, cs, path, out);
                    let empty = x.is_null() || x.as_object().is_some_and(Map::is_empty);
                    if empty || !declared(s, k, at_root) {
                        out.insert(path.clone());
                    }
                    path.pop();
                }
            }
            Value::Array(a) => match list_kind(s, &[a]) {
                ListKind::Atomic => {
                    out.insert(path.clone());
                }
                ListKind::Map(keys) => {
                    for item in a {
                        if let Some(k) = item_key(item, &keys) {
                            path.push(k);
                            walk(item, items_schema(s), path, out);
                            out.insert(path.clone());
                            path.pop();
                        }
                    }
                }
                ListKind::Set => {
                    for x in a {
                        path.push(format!("v:{x}"));
                        out.insert(path.clone());
                        path.pop();
                    }
                }
            },
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, schema, &mut Vec::new(), &mut out);
    out.retain(|f| !ignored(f));
    out
}

/// What a write did (structured-merge-diff's `Compare`): fields it added (maps and lists too), changed
/// (leaves) and removed.
#[derive(Debug, Default, Clone)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    /// Keeps only the paths `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&FieldPath) -> bool) {
        self.added.retain(&keep);
        self.modified.retain(&keep);
        self.removed.retain(&keep);
    }
    /// Added and modified.
    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified).cloned().collect()
    }
}

/// Compares the stored object with the written one.
pub fn compare(old: &Value, new: &Value, schema: Option<&Value>) -> Comparison {
    fn leaf(l: Option<&Value>, r: Option<&Value>, path: &FieldPath, c: &mut Comparison) {
        match (l, r) {
            (None, Some(_)) => {
                c.added.insert(path.clone());
            }
            (Some(_), None) => {
                c.removed.insert(path.clone());
            }
            (Some(a), Some(b)) if a != b => {
                c.modified.insert(path.clone());
            }
            _ => {}
        }
    }
    fn container(l: Option<&Value>, r: Option<&Value>, path: &FieldPath, c: &mut Comparison) {
        if l.is_none() {
            c.added.insert(path.clone());
        } else if r.is_none() {
            c.removed.insert(path.clone());
        }
    }
    fn node(
        l: Option<&Value>,
        r: Option<&Value>,
        s: Option<&Value>,
        path: &mut FieldPath,
        c: &mut Comparison,
    ) {
        if path.len() > 1 && ignored(path) {
            return;
        }
        let objects = (l.is_none() || l.is_some_and(Value::is_object))
            && (r.is_none() || r.is_some_and(Value::is_object));
        let arrays = (l.is_none() || l.is_some_and(Value::is_array))
            && (r.is_none() || r.is_some_and(Value::is_array));
        if objects && (path.is_empty() || !atomic_map(s)) {
            let (lm, rm) = (l.and_then(Value::as_object), r.and_then(Value::as_object));
            if lm.is_none_or(Map::is_empty) && rm.is_none_or(Map::is_empty) {
                leaf(l, r, path, c);
                return;
            }
            let keys: BTreeSet<&String> = lm.into_iter().chain(rm).flat_map(|m| m.keys()).collect();
            let at_root = path.is_empty();
            for k in keys {
                path.push(format!("f:{k}"));
                node(
                    lm.and_then(|m| m.get(k)),
                    rm.and_then(|m| m.get(k)),
                    child_schema(s, k, at_root),
                    path,
                    c,
                );
                path.pop();
            }
            container(l, r, path, c);
            return;
        }
        if arrays {
            let empty: Vec<Value> = Vec::new();
            let la = l.and_then(Value::as_array).unwrap_or(&empty);
            let ra = r.and_then(Value::as_array).unwrap_or(&empty);
            if la.is_empty() && ra.is_empty() {
                leaf(l, r, path, c);
                return;
            }
            match list_kind(s, &[la, ra]) {
                ListKind::Atomic => leaf(l, r, path, c),
                ListKind::Map(keys) => {
                    let index = |a: &'_ [Value]| -> BTreeMap<String, Value> {
                        a.iter()
                            .filter_map(|i| item_key(i, &keys).map(|k| (k, i.clone())))
                            .collect()
                    };
                    let (li, ri) = (index(la), index(ra));
                    let all: BTreeSet<&String> = li.keys().chain(ri.keys()).collect();
                    for k in all {
                        path.push(k.clone());
                        node(li.get(k), ri.get(k), items_schema(s), path, c);
                        path.pop();
                    }
                    container(l, r, path, c);
                }
                ListKind::Set => {
                    let ls: BTreeSet<String> = la.iter().map(Value::to_string).collect();
                    let rs: BTreeSet<String> = ra.iter().map(Value::to_string).collect();
                    for x in ls.union(&rs) {
                        path.push(format!("v:{x}"));
                        let (lv, rv) = (
                            ls.contains(x).then_some(&Value::Null),
                            rs.contains(x).then_some(&Value::Null),
                        );
                        leaf(lv, rv, path, c);
                        path.pop();
                    }
                    container(l, r, path, c);
                }
            }
            return;
        }
        if !path.is_empty() {
            leaf(l, r, path, c);
        }
    }
    let mut c = Comparison::default();
    node(Some(old), Some(new), schema, &mut Vec::new(), &mut c);
    c.retain(|f| !ignored(f));
    c
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(f) = el.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?.iter().find(|i| matches_key(i, &key))
    } else if let Some(v) = el.strip_prefix("v:") {
        let val: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|x| **x == val)
    } else {
        None
    }
}

fn step_mut<'a>(cur: &'a mut Value, el: &str) -> Option<&'a mut Value> {
    if let Some(f) = el.strip_prefix("f:") {
        cur.get_mut(f)
    } else if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array_mut()?
            .iter_mut()
            .find(|i| matches_key(i, &key))
    } else {
        None
    }
}

/// The value at a field path, if any.
pub fn get_path<'a>(v: &'a Value, f: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for el in f {
        cur = step(cur, el)?;
    }
    Some(cur)
}

/// Removes a field. Removing a key field of a map-list item removes the item, unless `keep_item` says
/// another manager still owns something in it. Maps emptied by the removal are removed too.
pub fn remove_path(v: &mut Value, f: &[String], keep_item: &dyn Fn(&[String]) -> bool) {
    fn go(cur: &mut Value, f: &[String], full: &[String], keep_item: &dyn Fn(&[String]) -> bool) {
        let Some((first, rest)) = f.split_first() else {
            return;
        };
        if rest.is_empty() {
            if let Some(v) = first.strip_prefix("v:") {
                if let (Ok(val), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
                    a.retain(|x| *x != val);
                }
            } else if let (Some(name), Some(m)) = (first.strip_prefix("f:"), cur.as_object_mut()) {
                m.remove(name);
            } else if let (Some(k), Some(a)) = (first.strip_prefix("k:"), cur.as_array_mut()) {
                if let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) {
                    a.retain(|i| !matches_key(i, &key));
                }
            }
            return;
        }
        // An item's key field: the item goes.
        if let (Some(k), [last]) = (first.strip_prefix("k:"), rest) {
            if let (Ok(key), Some(field)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                last.strip_prefix("f:"),
            ) {
                if key.contains_key(field) {
                    let item_path = &full[..full.len() - 1];
                    if !keep_item(item_path) {
                        if let Some(a) = cur.as_array_mut() {
                            a.retain(|i| !matches_key(i, &key));
                        }
                    }
                    return;
                }
            }
        }
        let Some(next) = step_mut(cur, first) else {
            return;
        };
        go(next, rest, full, keep_item);
        // A map or list the removal emptied goes too (a real server drops it: an empty map or list of a
        // built-in kind is not serialized, and a custom resource's is pruned as null).
        let emptied = (next.as_object().is_some_and(Map::is_empty)
            || next.as_array().is_some_and(Vec::is_empty))
            && first.starts_with("f:");
        if emptied {
            if let (Some(name), Some(m)) = (first.strip_prefix("f:"), cur.as_object_mut()) {
                m.remove(name);
            }
        }
    }
    go(v, f, f, keep_item);
}

/// Merges an apply configuration into an object: maps merge, map-lists merge by key, sets add their
/// values, everything else is replaced. A null in the configuration removes the field.
pub fn merge(a: &mut Value, b: &Value, s: Option<&Value>, at_root: bool) {
    match (a, b) {
        (Value::Object(am), Value::Object(bm)) => {
            for (k, bv) in bm {
                if bv.is_null() {
                    am.remove(k);
                    continue;
                }
                let cs = child_schema(s, k, at_root);
                match am.get_mut(k) {
                    Some(av)
                        if (av.is_object() && bv.is_object())
                            || (av.is_array() && bv.is_array()) =>
                    {
                        merge(av, bv, cs, false)
                    }
                    _ => {
                        am.insert(k.clone(), bv.clone());
                    }
                }
            }
        }
        (Value::Array(aa), Value::Array(ba)) => {
            if let Some(keys) = list_map_keys(s).filter(|k| keyed(aa, k) && keyed(ba, k)) {
                for item in ba {
                    let key = item_key(item, &keys);
                    match aa.iter_mut().find(|i| item_key(i, &keys) == key) {
                        Some(existing) => merge(existing, item, items_schema(s), false),
                        None => aa.push(item.clone()),
                    }
                }
            } else if is_set(s) && settable(aa) && settable(ba) {
                for x in ba {
                    if !aa.contains(x) {
                        aa.push(x.clone());
                    }
                }
            } else {
                *aa = ba.clone();
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// FieldsV1 JSON for a set of members (`"."` marks a member that has owned children too).
pub fn to_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for f in fields {
        let mut cur = &mut root;
        for el in f {
            let Value::Object(m) = cur else { break };
            cur = m.entry(el.clone()).or_insert_with(|| json!({}));
        }
    }
    for f in fields {
        let pointer: String = f
            .iter()
            .map(|el| format!("/{}", el.replace('~', "~0").replace('/', "~1")))
            .collect();
        if let Some(Value::Object(m)) = root.pointer_mut(&pointer) {
            if !m.is_empty() {
                m.insert(".".into(), json!({}));
            }
        }
    }
    root
}

/// The members of a FieldsV1 value.
pub fn parse_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        for (k, x) in m.iter().filter(|(k, _)| k.as_str() != ".") {
            path.push(k.clone());
            let children = x.as_object().is_some_and(|c| c.keys().any(|k| k != "."));
            if !children || x.get(".").is_some() {
                out.insert(path.clone());
            }
            walk(x, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The order in which structured-merge-diff lists a set (and so a real server its apply conflicts): at
/// each level the members first, then the children, each by element.
pub fn smd_order(a: &FieldPath, b: &FieldPath) -> Ordering {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    match (a.len() - n, b.len() - n) {
        (0, 0) => Ordering::Equal,
        (0, _) => Ordering::Less,
        (_, 0) => Ordering::Greater,
        (1, l) if l > 1 => Ordering::Less,
        (l, 1) if l > 1 => Ordering::Greater,
        _ => a[n].cmp(&b[n]),
    }
}

/// `.spec.ports[port=80,protocol="TCP"].name`-style text for messages.
pub fn display(f: &[String]) -> String {
    let mut s = String::new();
    for el in f {
        if let Some(x) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(x);
        } else if let Some(x) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(x).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(x) = el.strip_prefix("v:") {
            s.push_str(&format!("[={x}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"],
                      "items": {"type": "object", "properties": {"port": {"type": "integer"}, "protocol": {"type": "string"},
                                                                "name": {"type": "string"}}}},
            "hosts": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}})
    }

    fn p(v: &[&str]) -> FieldPath {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn an_apply_owns_leaves_keyed_items_and_undeclared_keys() {
        let s = schema();
        let o = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "hosts": ["a", "b"],
                                "extra": {"x": {"y": 1}}},
                       "metadata": {"finalizers": ["x"], "uid": "u", "labels": {"a": "1"}}});
        let f = field_set(&o, Some(&s));
        let k = r#"k:{"port":80,"protocol":"TCP"}"#;
        assert!(f.contains(&p(&["f:spec", "f:ports", k, "f:name"])));
        assert!(
            f.contains(&p(&["f:spec", "f:ports", k])),
            "the item is a member"
        );
        assert!(
            f.contains(&p(&["f:spec", "f:hosts"])),
            "an atomic list is one field"
        );
        assert!(
            f.contains(&p(&["f:spec", "f:extra", "f:x"])),
            "an undeclared key is a member"
        );
        assert!(!f.contains(&p(&["f:spec"])), "a declared map is not");
        assert!(f.contains(&p(&["f:metadata", "f:finalizers", "v:\"x\""])));
        assert!(f.contains(&p(&["f:metadata", "f:labels", "f:a"])));
        assert!(!f.iter().any(|x| x.contains(&"f:uid".to_string())));
        let v1 = to_fields_v1(&f);
        assert_eq!(v1["f:spec"]["f:ports"][k]["."], json!({}));
        assert!(v1["f:spec"].get(".").is_none());
        assert_eq!(parse_fields_v1(&v1), f);
    }

    #[test]
    fn compare_names_added_maps_changed_leaves_and_removals() {
        let s = schema();
        let old = json!({"metadata": {"name": "x"}, "spec": {"hosts": ["a"]}});
        let new = json!({"metadata": {"name": "x", "labels": {"l": "1"}},
                         "spec": {"hosts": ["b"], "ports": [{"port": 1, "protocol": "TCP"}]}});
        let c = compare(&old, &new, Some(&s));
        let k = r#"k:{"port":1,"protocol":"TCP"}"#;
        assert_eq!(
            c.added,
            [
                p(&["f:metadata", "f:labels"]),
                p(&["f:metadata", "f:labels", "f:l"]),
                p(&["f:spec", "f:ports"]),
                p(&["f:spec", "f:ports", k]),
                p(&["f:spec", "f:ports", k, "f:port"]),
                p(&["f:spec", "f:ports", k, "f:protocol"]),
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(
            c.modified,
            [p(&["f:spec", "f:hosts"])].into_iter().collect()
        );
        let back = compare(&new, &old, Some(&s));
        assert_eq!(back.removed, c.added);
    }

    #[test]
    fn removing_a_keyed_item_or_the_last_field_of_a_map_removes_it() {
        let s = schema();
        let mut m = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "hosts": ["a"]}});
        let k = r#"k:{"port":80,"protocol":"TCP"}"#;
        assert_eq!(
            get_path(&m, &p(&["f:spec", "f:ports", k, "f:name"])),
            Some(&json!("http"))
        );
        remove_path(&mut m, &p(&["f:spec", "f:ports", k]), &|_| false);
        assert!(
            m["spec"].get("ports").is_none(),
            "an emptied list goes: {m}"
        );
        remove_path(&mut m, &p(&["f:spec", "f:hosts"]), &|_| false);
        assert!(m.get("spec").is_none(), "an emptied map goes: {m}");
        let _ = s;
    }

    #[test]
    fn smd_lists_members_before_children() {
        let mut v = vec![
            p(&["f:spec", "f:a", "f:b"]),
            p(&["f:spec", "f:x"]),
            p(&["f:data", "f:k"]),
        ];
        v.sort_by(smd_order);
        assert_eq!(
            v,
            vec![
                p(&["f:data", "f:k"]),
                p(&["f:spec", "f:x"]),
                p(&["f:spec", "f:a", "f:b"])
            ]
        );
    }

    #[test]
    fn merge_by_key() {
        let s = schema();
        let mut a = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "hosts": ["a"]}});
        let b = json!({"spec": {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP", "x": 1}], "hosts": ["b"]}});
        merge(&mut a, &b, Some(&s), true);
        assert_eq!(
            a,
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http", "x": 1}, {"port": 443, "protocol": "TCP"}], "hosts": ["b"]}})
        );
    }
}
