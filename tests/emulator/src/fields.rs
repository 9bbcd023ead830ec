//! Field paths for server-side apply, in the element syntax of `metadata.managedFields[].fieldsV1`:
//! `f:<name>` (a map field), `k:{"key":value,...}` (an item of a list whose schema says
//! `x-kubernetes-list-type: map`, keyed by its `x-kubernetes-list-map-keys`) and `v:<json>` (an item of a
//! `x-kubernetes-list-type: set` list of scalars). Every other list is atomic: one field.
//!
//! Schemas are the CRD version's `openAPIV3Schema` (absent for built-in kinds, whose lists are all atomic,
//! except `metadata.finalizers` (a set) and `metadata.ownerReferences` (a map keyed by `uid`), as in
//! Kubernetes).

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::OnceLock;

/// A field path: FieldsV1 elements from the root.
pub type FieldPath = Vec<String>;
/// A set of owned leaf fields.
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
        json!({"type": "object", "properties": {
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

/// The leaf fields of an object: maps are walked, map-lists and sets by item, other lists are leaves.
pub fn leaves(v: &Value, schema: Option<&Value>) -> FieldSet {
    fn walk(v: &Value, s: Option<&Value>, path: &mut FieldPath, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    if path.len() == 1
                        && path[0] == "f:metadata"
                        && SERVER_METADATA.contains(&k.as_str())
                    {
                        continue;
                    }
                    let cs = child_schema(s, k, path.is_empty());
                    path.push(format!("f:{k}"));
                    walk(x, cs, path, out);
                    path.pop();
                }
            }
            Value::Array(a) if !a.is_empty() => {
                if let Some(keys) = list_map_keys(s).filter(|k| keyed(a, k)) {
                    for item in a {
                        if let Some(k) = item_key(item, &keys) {
                            path.push(k);
                            walk(item, items_schema(s), path, out);
                            path.pop();
                        }
                    }
                } else if is_set(s) && settable(a) {
                    for x in a {
                        path.push(format!("v:{x}"));
                        out.insert(path.clone());
                        path.pop();
                    }
                } else if !path.is_empty() {
                    out.insert(path.clone());
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
    walk(v, schema, &mut Vec::new(), &mut out);
    out.retain(|f| !is_identity(f));
    out
}

/// Leaves of `new` whose value differs from `old`'s.
pub fn changed_leaves(old: &Value, new: &Value, schema: Option<&Value>) -> FieldSet {
    leaves(new, schema)
        .into_iter()
        .filter(|f| get_path(old, f) != get_path(new, f))
        .collect()
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
        let emptied = next.as_object().is_some_and(Map::is_empty) && first.starts_with("f:");
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

/// FieldsV1 JSON for a set of leaves (`"."` marks a map-list item that has fields of its own).
pub fn to_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for f in fields {
        let mut cur = &mut root;
        for (i, el) in f.iter().enumerate() {
            let e = cur.entry(el.clone()).or_insert_with(|| json!({}));
            let Value::Object(m) = e else { break };
            if el.starts_with("k:") && i + 1 < f.len() {
                m.entry(".").or_insert_with(|| json!({}));
            }
            cur = m;
        }
    }
    Value::Object(root)
}

/// The leaves of a FieldsV1 value.
pub fn parse_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.as_str() != ".").collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, x) in children {
            path.push(k.clone());
            walk(x, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
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
                      "items": {"type": "object"}},
            "hosts": {"type": "array", "items": {"type": "string"}}}}}})
    }

    #[test]
    fn map_lists_are_keyed_other_lists_atomic() {
        let s = schema();
        let o = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "hosts": ["a", "b"]},
                       "metadata": {"finalizers": ["x"], "uid": "u"}});
        let l = leaves(&o, Some(&s));
        let k = r#"k:{"port":80,"protocol":"TCP"}"#.to_string();
        let p = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(l.contains(&p(&["f:spec", "f:ports", &k, "f:name"])));
        assert!(l.contains(&p(&["f:spec", "f:hosts"])));
        assert!(l.contains(&p(&["f:metadata", "f:finalizers", "v:\"x\""])));
        assert!(!l.iter().any(|f| f.contains(&"f:uid".to_string())));
        assert_eq!(
            get_path(&o, &p(&["f:spec", "f:ports", &k, "f:name"])),
            Some(&json!("http"))
        );
        assert_eq!(parse_fields_v1(&to_fields_v1(&l)), l);
        let mut m = o.clone();
        remove_path(&mut m, &p(&["f:spec", "f:ports", &k, "f:port"]), &|_| false);
        assert_eq!(m["spec"]["ports"], json!([]));
        remove_path(&mut m, &p(&["f:spec", "f:hosts"]), &|_| false);
        remove_path(&mut m, &p(&["f:spec", "f:ports"]), &|_| false);
        assert!(m.get("spec").is_none(), "an emptied map goes: {m}");
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
