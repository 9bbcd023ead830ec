//! What to do on one member cluster, decided from what it should hold and what it holds, with no I/O: the
//! worker (`member.rs`) gathers what the cluster holds, asks [`plan`], and carries the actions out.
//!
//! The rules, each a row of the tests below:
//! - an object is ksit's only if it carries ksit's label AND `ksit-controller` is one of its field managers;
//! - a missing object is created; a create-only one (KubeStellar `createOnly`, and every namespace) that
//!   exists is never updated;
//! - an existing object ksit does not own is left untouched and reported;
//! - an owned object that already holds every desired field (the config-hash annotation among them) is not
//!   written; otherwise it is server-side applied;
//! - an object whose source is invalid right now is retained: neither updated nor pruned;
//! - an owned object no longer wanted is deleted, unless it is a namespace.

use crate::desired::{DesiredObject, ObjectKey, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::member::ClusterPlan;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// An object's identity on a cluster, whichever API version names it: group, resource, namespace, name.
pub type Id = (String, String, Option<String>, String);

pub fn id(k: &ObjectKey) -> Id {
    (
        k.kind.group.clone(),
        k.kind.plural.clone(),
        k.namespace.clone(),
        k.name.clone(),
    )
}

/// What the cluster holds in place of one desired object.
#[derive(Clone, Debug, PartialEq)]
pub enum Live {
    Absent,
    /// There, as this JSON.
    Present(Value),
    /// There, and unchanged since it was last found to hold this very desired object: nothing to compare.
    Verified,
    /// The cluster does not serve the kind.
    KindMissing,
    /// It could not be read; the error, to report.
    Unreadable(String),
}

/// An object carrying ksit's label in a kind looked at for pruning.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub key: ObjectKey,
    pub meta: ObjectMeta,
}

/// What the cluster holds, as the worker found it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// One entry per desired object, in the plan's order (a missing entry counts as unreadable).
    pub objects: Vec<Live>,
    /// The ksit-labelled objects of the kinds looked at for pruning this pass.
    pub labelled: Vec<Labelled>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// It already holds every desired field.
    AsDesired,
    /// It exists, and create-only objects are never updated.
    CreateOnly,
    /// Its source is invalid right now: left as it is.
    Retained,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Server-side apply (with force): `create` when the object is not there yet.
    Apply {
        object: Arc<DesiredObject>,
        create: bool,
    },
    Keep {
        object: Arc<DesiredObject>,
        why: Kept,
    },
    /// It exists and ksit does not own it: left untouched, and reported with its field managers.
    NotOwned {
        object: Arc<DesiredObject>,
        managers: String,
    },
    /// Cannot be sent here: the kind is missing, or the object could not be read.
    Fail {
        object: Arc<DesiredObject>,
        error: Failure,
    },
    /// ksit owns it and no longer wants it here.
    Delete { key: ObjectKey },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    MissingKind,
    Unreadable(String),
}

/// Whether ksit owns a live object, by its metadata: it carries ksit's label and ksit-controller is one of
/// its field managers.
pub fn owned(meta: &ObjectMeta) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY_VALUE);
    let managed = meta.managed_fields.as_ref().is_some_and(|m| {
        m.iter()
            .any(|f| f.manager.as_deref() == Some(crate::desired::FIELD_MANAGER))
    });
    labelled && managed
}

/// The field managers of an object, for a report.
pub fn managers(meta: &ObjectMeta) -> String {
    let m: Vec<String> = meta
        .managed_fields
        .as_ref()
        .map(|m| m.iter().filter_map(|f| f.manager.clone()).collect())
        .unwrap_or_default();
    if m.is_empty() {
        "no field managers".into()
    } else {
        format!("field managers: {}", m.join(", "))
    }
}

/// True when every field of `desired` is in `live` with the same value (maps may hold more in `live`;
/// numbers compare by value, as the API server writes 5.0 back as 5).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| contains(lv, dv))),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(a, b)| contains(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// What to do about one desired object, given what the cluster holds in its place.
pub fn plan_object(object: &Arc<DesiredObject>, live: &Live, retained: bool) -> Action {
    let keep = |why| Action::Keep {
        object: object.clone(),
        why,
    };
    match live {
        Live::KindMissing => Action::Fail {
            object: object.clone(),
            error: Failure::MissingKind,
        },
        Live::Unreadable(e) => Action::Fail {
            object: object.clone(),
            error: Failure::Unreadable(e.clone()),
        },
        Live::Absent => Action::Apply {
            object: object.clone(),
            create: true,
        },
        Live::Verified => keep(Kept::AsDesired),
        Live::Present(v) => {
            if object.create_only {
                return keep(Kept::CreateOnly);
            }
            // Unreadable metadata counts as not ksit's.
            let meta: ObjectMeta =
                serde::Deserialize::deserialize(&v["metadata"]).unwrap_or_default();
            if !owned(&meta) {
                return Action::NotOwned {
                    object: object.clone(),
                    managers: managers(&meta),
                };
            }
            if retained {
                return keep(Kept::Retained);
            }
            if contains(v, &object.manifest) {
                keep(Kept::AsDesired)
            } else {
                Action::Apply {
                    object: object.clone(),
                    create: false,
                }
            }
        }
    }
}

/// Every action for one cluster: one per desired object, in the plan's order, then the deletions.
pub fn plan(desired: &ClusterPlan, observed: &Observed) -> Vec<Action> {
    let retained: BTreeSet<Id> = desired.retain.iter().map(id).collect();
    let not_looked_at = Live::Unreadable("not looked at".into());
    let mut actions: Vec<Action> = desired
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let live = observed.objects.get(i).unwrap_or(&not_looked_at);
            // Identities are only built when something is held (rarely).
            let held = !retained.is_empty() && retained.contains(&id(&o.key()));
            plan_object(o, live, held)
        })
        .collect();
    if !observed.labelled.is_empty() {
        let wanted: BTreeSet<Id> = desired.objects.iter().map(|o| id(&o.key())).collect();
        for l in &observed.labelled {
            let i = id(&l.key);
            if l.key.kind.kind == "Namespace" || !owned(&l.meta) {
                continue;
            }
            if wanted.contains(&i) || retained.contains(&i) {
                continue;
            }
            actions.push(Action::Delete { key: l.key.clone() });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::ResourceKind;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use serde_json::json;

    fn vs(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::virtual_service(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn ns(name: &str) -> ObjectKey {
        ObjectKey {
            kind: ResourceKind::namespace_kind(),
            namespace: None,
            name: name.into(),
        }
    }

    fn desired(key: &ObjectKey, spec: Value, create_only: bool) -> Arc<DesiredObject> {
        Arc::new(DesiredObject {
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            bindings: vec!["b".into()],
            create_only,
            traffic_policies: vec![],
            manifest: json!({"metadata": {"name": key.name, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE},
                "annotations": {"ksit.io/config-hash": "h1"}}, "spec": spec}),
        })
    }

    /// A live object: `label` ksit's label, `managers` its field managers.
    fn live(label: bool, managers: &[&str], spec: Value, hash: &str) -> Value {
        let mut labels = json!({});
        if label {
            labels[MANAGED_BY_LABEL] = json!(MANAGED_BY_VALUE);
        }
        let mf: Vec<Value> = managers
            .iter()
            .map(|m| json!({"manager": m, "operation": "Apply"}))
            .collect();
        json!({"metadata": {"name": "v", "labels": labels, "managedFields": mf,
            "annotations": {"ksit.io/config-hash": hash}}, "spec": spec})
    }

    fn meta(label: bool, managers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            labels: label
                .then(|| [(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
            managed_fields: Some(
                managers
                    .iter()
                    .map(|m| ManagedFieldsEntry {
                        manager: Some(m.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Create,
        Update,
        Keep(Kept),
        NotOwned,
        Fail,
    }

    fn short(a: &Action) -> Want {
        match a {
            Action::Apply { create: true, .. } => Want::Create,
            Action::Apply { create: false, .. } => Want::Update,
            Action::Keep { why, .. } => Want::Keep(*why),
            Action::NotOwned { .. } => Want::NotOwned,
            Action::Fail { .. } => Want::Fail,
            Action::Delete { .. } => unreachable!("plan_object never deletes"),
        }
    }

    #[test]
    fn one_object_table() {
        let spec = json!({"hosts": ["a"], "http": [{"route": [{"weight": 5}]}]});
        let same_but_float = json!({"hosts": ["a"], "http": [{"route": [{"weight": 5.0}]}]});
        let other = json!({"hosts": ["hijacked"]});
        let ksit = ["ksit-controller"];
        let cases: Vec<(&str, bool, Live, bool, Want)> = vec![
            ("missing: created", false, Live::Absent, false, Want::Create),
            ("missing create-only: created", true, Live::Absent, false, Want::Create),
            ("owned and as desired: no write", false, Live::Present(live(true, &ksit, spec.clone(), "h1")), false, Want::Keep(Kept::AsDesired)),
            ("numbers compare by value", false, Live::Present(live(true, &ksit, same_but_float, "h1")), false, Want::Keep(Kept::AsDesired)),
            ("extra live fields are fine", false, Live::Present({ let mut v = live(true, &ksit, spec.clone(), "h1"); v["spec"]["extra"] = json!(1); v }), false, Want::Keep(Kept::AsDesired)),
            ("owned, edited by hand: applied", false, Live::Present(live(true, &ksit, other.clone(), "h1")), false, Want::Update),
            ("owned, fields as desired but another config hash: applied (a field ksit stopped setting goes)", false, Live::Present(live(true, &ksit, spec.clone(), "h0")), false, Want::Update),
            ("label without ksit's field manager: not owned", false, Live::Present(live(true, &["kubectl"], spec.clone(), "h1")), false, Want::NotOwned),
            ("ksit's field manager without the label: not owned", false, Live::Present(live(false, &ksit, spec.clone(), "h1")), false, Want::NotOwned),
            ("someone else's object of that name: not owned", false, Live::Present(live(false, &["kubectl-client-side-apply"], other.clone(), "")), false, Want::NotOwned),
            ("create-only and present: never updated", true, Live::Present(live(false, &["kubectl"], other.clone(), "")), false, Want::Keep(Kept::CreateOnly)),
            ("create-only wins over ownership checks", true, Live::Present(live(true, &ksit, other.clone(), "h0")), false, Want::Keep(Kept::CreateOnly)),
            ("retained (invalid source): left as it is", false, Live::Present(live(true, &ksit, other.clone(), "h0")), true, Want::Keep(Kept::Retained)),
            ("retained but not ours: still reported", false, Live::Present(live(false, &["kubectl"], other.clone(), "")), true, Want::NotOwned),
            ("verified unchanged since: no compare, no write", false, Live::Verified, false, Want::Keep(Kept::AsDesired)),
            ("kind not served: fails", false, Live::KindMissing, false, Want::Fail),
            ("unreadable: fails", false, Live::Unreadable("500".into()), false, Want::Fail),
        ];
        for (what, create_only, l, retained, want) in cases {
            let o = desired(&vs("v"), spec.clone(), create_only);
            assert_eq!(short(&plan_object(&o, &l, retained)), want, "{what}");
        }
    }

    #[test]
    fn prune_table() {
        let wanted = desired(&vs("wanted"), json!({}), false);
        let plan_ = ClusterPlan {
            objects: vec![wanted.clone()],
            retain: std::sync::Arc::new([vs("held")].into()),
            ..Default::default()
        };
        let ksit = ["ksit-controller"];
        let labelled = vec![
            Labelled {
                key: vs("wanted"),
                meta: meta(true, &ksit),
            },
            Labelled {
                key: vs("stale"),
                meta: meta(true, &ksit),
            },
            Labelled {
                key: vs("held"),
                meta: meta(true, &ksit),
            },
            Labelled {
                key: vs("labelled-by-hand"),
                meta: meta(true, &["kubectl"]),
            },
            Labelled {
                key: ns("old-namespace"),
                meta: meta(true, &ksit),
            },
        ];
        let observed = Observed {
            objects: vec![Live::Verified],
            labelled,
        };
        let deleted: Vec<String> = plan(&plan_, &observed)
            .iter()
            .filter_map(|a| match a {
                Action::Delete { key } => Some(key.name.clone()),
                _ => None,
            })
            .collect();
        // Only what ksit owns and no longer wants; never what it still wants, holds for an invalid source,
        // does not own, or a namespace.
        assert_eq!(deleted, ["stale"]);
    }

    #[test]
    fn the_version_an_object_is_read_at_does_not_matter() {
        let mut v1 = vs("a");
        v1.kind.version = "v1alpha3".into();
        assert_eq!(id(&v1), id(&vs("a")));
        let p = ClusterPlan {
            objects: vec![desired(&vs("a"), json!({}), false)],
            ..Default::default()
        };
        let observed = Observed {
            objects: vec![Live::Verified],
            labelled: vec![Labelled {
                key: v1,
                meta: meta(true, &["ksit-controller"]),
            }],
        };
        assert!(!plan(&p, &observed)
            .iter()
            .any(|a| matches!(a, Action::Delete { .. })));
    }

    #[test]
    fn an_object_not_looked_at_is_reported_not_applied() {
        let p = ClusterPlan {
            objects: vec![desired(&vs("a"), json!({}), false)],
            ..Default::default()
        };
        assert!(matches!(
            plan(&p, &Observed::default()).as_slice(),
            [Action::Fail {
                error: Failure::Unreadable(_),
                ..
            }]
        ));
    }
}
