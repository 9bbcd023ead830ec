//! The emulator driven by the real kube-rs client: what the controller relies on must behave as a real
//! API server would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::collapsible_match
)]

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use ksit_emulator::Emulator;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use std::time::Duration;

async fn client(e: &Emulator) -> Client {
    let kc = Kubeconfig::from_yaml(&e.kubeconfig()).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn cm(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}}, "data": data})
}

#[tokio::test]
async fn create_get_list_with_selectors() {
    let e = Emulator::start("c1").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&e).await, "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("a", json!({"k": "1"}))).unwrap(),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("b", json!({"k": "2"}))).unwrap(),
    )
    .await
    .unwrap();
    let dup = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm("a", json!({}))).unwrap(),
        )
        .await;
    assert!(matches!(dup, Err(kube::Error::Api(s)) if s.code == 409));
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "1");
    assert!(api.get_opt("zzz").await.unwrap().is_none());
    let l = api
        .list(&ListParams::default().labels("app in (b,c)"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    let l = api
        .list(&ListParams::default().labels("app!=b"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    // A namespaced object in a missing namespace is refused.
    let other: Api<ConfigMap> = Api::namespaced(client(&e).await, "nope");
    assert!(other
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm("x", json!({}))).unwrap()
        )
        .await
        .is_err());
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_and_no_ops() {
    let e = Emulator::start("c1").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&e).await, "default");
    let ssa = |m: &str| PatchParams::apply(m);
    let o = api
        .patch(
            "s",
            &ssa("alice"),
            &Patch::Apply(cm("s", json!({"x": "1", "y": "1"}))),
        )
        .await
        .unwrap();
    let rv = o.metadata.resource_version.clone();
    e.reset_stats();
    // Re-applying the same thing changes nothing: no new resourceVersion.
    let o2 = api
        .patch(
            "s",
            &ssa("alice"),
            &Patch::Apply(cm("s", json!({"x": "1", "y": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(o2.metadata.resource_version, rv);
    assert_eq!((e.stats().writes, e.stats().changes), (1, 0));
    // Another manager setting x differently conflicts, unless forced.
    let c = api
        .patch("s", &ssa("bob"), &Patch::Apply(cm("s", json!({"x": "2"}))))
        .await;
    assert!(
        matches!(&c, Err(kube::Error::Api(s)) if s.code == 409 && s.message.contains("alice")),
        "{c:?}"
    );
    api.patch(
        "s",
        &ssa("bob").force(),
        &Patch::Apply(cm("s", json!({"x": "2"}))),
    )
    .await
    .unwrap();
    // alice no longer applies y: it is removed (nobody else owns it); x stays bob's.
    let o = api
        .patch("s", &ssa("alice"), &Patch::Apply(cm("s", json!({}))))
        .await
        .unwrap();
    let data = o.data.unwrap_or_default();
    assert_eq!(data.get("x").map(String::as_str), Some("2"));
    assert!(!data.contains_key("y"), "{data:?}");
    let managers: Vec<String> = o
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"bob".to_string()));
}

#[tokio::test]
async fn watch_list_and_410_recovery() {
    let e = Emulator::start("c1").await.unwrap();
    let c = client(&e).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("w1", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let mut w = kube::runtime::watcher(api.clone(), Default::default()).boxed();
    let mut saw_init = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
    {
        if matches!(ev.unwrap(), kube::runtime::watcher::Event::InitDone) {
            saw_init = true;
            break;
        }
    }
    assert!(saw_init);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("w2", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, kube::runtime::watcher::Event::Apply(ref o) if o.metadata.name.as_deref() == Some("w2")),
        "{ev:?}"
    );
    // Dropped watch streams: the watcher reconnects and still sees later changes.
    e.faults().drop_watches();
    api.delete("w1", &DeleteParams::default()).await.unwrap();
    let mut deleted = false;
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(kube::runtime::watcher::Event::Delete(o))
                if o.metadata.name.as_deref() == Some("w1") =>
            {
                deleted = true;
                break;
            }
            Ok(kube::runtime::watcher::Event::InitDone) => {
                if api.get_opt("w1").await.unwrap().is_none() {
                    deleted = true;
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(deleted);
    // A watch from a compacted resourceVersion gets 410.
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        e.url()
    );
    for i in 0..(ksit_emulator::store::HISTORY + 5) {
        e.put(
            cm(&format!("bulk-{}", i % 3), json!({"i": i.to_string()})),
            "test",
        )
        .unwrap();
    }
    let body = raw_get(&url).await;
    assert!(body.contains("\"code\":410"), "{body}");
}

async fn raw_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url.strip_prefix("http://").unwrap();
    let (host, path) = u.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn status_subresource_generation_and_finalizers() {
    let e = Emulator::start("c1").await.unwrap();
    e.load_crds_yaml(CRD).unwrap();
    let c = client(&e).await;
    let ar = kube::api::ApiResource {
        group: "x.io".into(),
        version: "v1".into(),
        api_version: "x.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(c, "default", &ar);
    let w = json!({"apiVersion": "x.io/v1", "kind": "Widget", "metadata": {"name": "w", "finalizers": ["x.io/keep"]}, "spec": {"size": 1}, "status": {"ok": true}});
    let o = api
        .patch("w", &PatchParams::apply("me"), &Patch::Apply(&w))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    assert!(
        o.data.get("status").is_none(),
        "status is ignored on the main resource"
    );
    let o = api
        .patch_status(
            "w",
            &PatchParams::apply("me"),
            &Patch::Apply(
                json!({"apiVersion": "x.io/v1", "kind": "Widget", "status": {"ok": true}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (o.metadata.generation, o.data["status"]["ok"].as_bool()),
        (Some(1), Some(true))
    );
    let o = api.patch("w", &PatchParams::apply("me"), &Patch::Apply(json!({"apiVersion": "x.io/v1", "kind": "Widget", "metadata": {"name": "w", "finalizers": ["x.io/keep"]}, "spec": {"size": 2}}))).await.unwrap();
    assert_eq!(o.metadata.generation, Some(2));
    // Schema validation: a wrong type or an unknown field fails an apply (500, as kube-apiserver cannot
    // type the configuration, Strict or not); a create prunes the unknown field.
    let bad = api.patch("v", &PatchParams::apply("me"), &Patch::Apply(json!({"apiVersion": "x.io/v1", "kind": "Widget", "metadata": {"name": "v"}, "spec": {"size": "big"}}))).await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.message.contains(".spec.size")),
        "{bad:?}"
    );
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::apply("me")
    };
    let bad = api.patch("v", &strict, &Patch::Apply(json!({"apiVersion": "x.io/v1", "kind": "Widget", "metadata": {"name": "v"}, "spec": {"size": 1, "upsync": []}}))).await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 500 && s.message.contains(".spec.upsync: field not declared in schema")),
        "{bad:?}"
    );
    let v: DynamicObject = serde_json::from_value(json!({"apiVersion": "x.io/v1", "kind": "Widget", "metadata": {"name": "v"}, "spec": {"size": 1, "upsync": []}})).unwrap();
    let o = api.create(&PostParams::default(), &v).await.unwrap();
    assert!(o.data["spec"].get("upsync").is_none());
    // Finalizers hold deletion until removed.
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let o = api.get("w").await.unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("w").await.unwrap().is_none());
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.x.io}
spec:
  group: x.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, properties: {ok: {type: boolean}}}
"#;

#[tokio::test]
async fn real_crds_and_discovery() {
    let e = Emulator::start("c1").await.unwrap();
    let n = e
        .load_crds_yaml(&ksit_kube::istio_crds_yaml().unwrap())
        .unwrap();
    assert!(n > 10, "{n} Istio CRDs");
    let c = client(&e).await;
    let d = kube::Discovery::new(c.clone()).run().await.unwrap();
    assert!(d.has_group("networking.istio.io") && d.has_group("extensions.istio.io"));
    let ar = kube::api::ApiResource {
        group: "extensions.istio.io".into(),
        version: "v1alpha1".into(),
        api_version: "extensions.istio.io/v1alpha1".into(),
        kind: "WasmPlugin".into(),
        plural: "wasmplugins".into(),
    };
    let ns: Api<Namespace> = Api::all(c.clone());
    ns.patch(
        "istio-system",
        &PatchParams::apply("t"),
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
        ),
    )
    .await
    .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "istio-system", &ar);
    let wp = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "p"},
        "spec": {"url": "http://x/y.wasm", "pluginConfig": {"a": 1}, "selector": {"matchLabels": {"istio": "ingressgateway"}}}});
    let o = api
        .patch("p", &PatchParams::apply("t"), &Patch::Apply(&wp))
        .await
        .unwrap();
    assert_eq!(
        o.data["spec"]["pluginConfig"]["a"], 1,
        "pluginConfig keeps unknown fields (preserve-unknown-fields)"
    );
    // Down: connection refused; up: same port works again.
    e.faults().set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(api.get("p").await.is_err());
    e.faults().set_down(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(api.get("p").await.is_ok());
}
