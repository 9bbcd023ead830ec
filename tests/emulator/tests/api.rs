//! The emulator driven by kube-rs (and, where the client hides what is checked, by raw HTTP): watches,
//! server-side apply on keyed lists, CRDs created through the API, the real shared CRDs, discovery, faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ksit_emulator::Emulator;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{json, Value};
use std::time::Duration;

async fn client(e: &Emulator) -> Client {
    let kc = Kubeconfig::from_yaml(&e.kubeconfig()).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": data})
}

/// A raw HTTP/1.1 request; returns the status line + headers, and the body read until `until` appears in
/// it or the time is up.
async fn raw(
    e: &Emulator,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (String, String) {
    raw_until(e, method, path, body, "", Duration::from_secs(2)).await
}

async fn raw_until(
    e: &Emulator,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    until: &str,
    limit: Duration,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(e.addr()).await.unwrap();
    let (ct, b) = body.unwrap_or(("application/json", ""));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 65536];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if !until.is_empty() && body.contains(until) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.x.io}
spec:
  group: x.io
  names: {kind: Gadget, plural: gadgets, singular: gadget, shortNames: [gd]}
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
          spec:
            type: object
            required: [mode]
            properties:
              mode: {type: string, enum: [a, b]}
              replicas: {type: integer, minimum: 0, maximum: 10}
              host: {type: string, pattern: '^[a-z.]+$'}
              port: {x-kubernetes-int-or-string: true}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
                    protocol: {type: string}
              tags: {type: array, items: {type: string}}
          status:
            type: object
            properties:
              ready: {type: boolean}
  - name: v1beta1
    served: true
    storage: false
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn gadgets(c: Client, version: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "x.io".into(),
        version: version.into(),
        api_version: format!("x.io/{version}"),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    Api::namespaced_with(c, "default", &ar)
}

fn gadget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "x.io/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec})
}

async fn next_event<S>(w: &mut S) -> watcher::Event<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a watch event within 5 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

async fn wait_init<S>(w: &mut S) -> Vec<String>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let mut names = Vec::new();
    loop {
        match next_event(w).await {
            watcher::Event::InitApply(o) => names.push(o.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => return names,
            _ => {}
        }
    }
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted_in_order() {
    let e = Emulator::start("w").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&e).await, "default");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("a", json!({"v": "1"}))).unwrap(),
    )
    .await
    .unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(wait_init(&mut w).await, vec!["a"]);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(cm("b", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next_event(&mut w).await {
            watcher::Event::Apply(o) => seen.push(format!(
                "apply {} {}",
                o.metadata.name.unwrap_or_default(),
                o.data
                    .unwrap_or_default()
                    .get("v")
                    .cloned()
                    .unwrap_or_default()
            )),
            watcher::Event::Delete(o) => {
                seen.push(format!("delete {}", o.metadata.name.unwrap_or_default()))
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply b ", "apply a 2", "delete b"]);
}

#[tokio::test]
async fn too_old_resource_version_gets_410_and_the_watcher_relists() {
    let e = Emulator::start("gone").await.unwrap();
    e.set_history_limit(5);
    let api: Api<ConfigMap> = Api::namespaced(client(&e).await, "default");
    e.put(cm("first", json!({})), "t").unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(wait_init(&mut w).await, vec!["first"]);
    let rv_before = e.resource_version();
    // While the watcher cannot connect, more changes happen than the history keeps.
    e.faults().set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..10 {
        e.put(cm(&format!("n{i}"), json!({})), "t").unwrap();
    }
    // A watch from the old version is told it is too old.
    e.faults().set_down(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, body) = raw_until(
        &e,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv_before}"),
        None,
        "\n",
        Duration::from_secs(2),
    )
    .await;
    let ev: Value =
        serde_json::from_str(body.lines().find(|l| l.starts_with('{')).unwrap_or(&body))
            .unwrap_or(json!({}));
    assert_eq!(ev["type"], "ERROR", "{body}");
    assert_eq!(
        (
            ev["object"]["code"].as_i64(),
            ev["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );
    // The watcher recovers by listing again, and sees all eleven objects.
    e.reset_stats();
    let names = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(watcher::Event::Init) => break wait_init(&mut w).await,
            _ => continue,
        }
    };
    assert_eq!(names.len(), 11, "{names:?}");
    assert!(e
        .request_log()
        .iter()
        .any(|r| r.verb == "list" && r.resource == "configmaps"));
    // And keeps watching.
    e.put(cm("after", json!({})), "t").unwrap();
    loop {
        if let watcher::Event::Apply(o) = next_event(&mut w).await {
            assert_eq!(o.metadata.name.as_deref(), Some("after"));
            break;
        }
    }
}

#[tokio::test]
async fn bookmarks_initial_events_and_timeout() {
    let e = Emulator::start("bm").await.unwrap();
    e.set_bookmark_interval(Duration::from_millis(100));
    e.put(cm("x", json!({})), "t").unwrap();
    let rv = e.resource_version();
    // A bookmark tells of a newer version than the watch saw: a ConfigMap elsewhere changes meanwhile
    // (with nothing newer, there is no bookmark, as on a real server).
    let other = e.clone();
    let elsewhere = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut o = cm("elsewhere", json!({}));
        o["metadata"]["namespace"] = json!("kube-system");
        other.put(o, "t").unwrap();
    });
    let (_, body) = raw_until(
        &e,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"),
        None,
        "BOOKMARK",
        Duration::from_secs(3),
    )
    .await;
    let ev: Value =
        serde_json::from_str(body.lines().find(|l| l.contains("BOOKMARK")).unwrap()).unwrap();
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        (rv + 1).to_string()
    );
    assert!(
        !body.contains("ADDED"),
        "the other namespace's object is not sent: {body}"
    );
    elsewhere.await.unwrap();
    let rv = e.resource_version();
    // sendInitialEvents: the current objects, then a bookmark marking their end.
    let (_, body) = raw_until(
        &e,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan",
        None,
        "initial-events-end",
        Duration::from_secs(3),
    )
    .await;
    let lines: Vec<Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // timeoutSeconds ends the stream.
    let start = std::time::Instant::now();
    let (_, body) = raw_until(
        &e,
        "GET",
        &format!("/api/v1/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        None,
        "",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the watch ended on its timeout"
    );
    assert!(!body.contains("ADDED"));
    // kube-rs in streaming-list mode works too.
    let api: Api<ConfigMap> = Api::all(client(&e).await);
    let mut w = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    assert_eq!(wait_init(&mut w).await, vec!["x", "elsewhere"]);
}

#[tokio::test]
async fn crd_created_through_the_api_serves_validates_and_goes_away() {
    let e = Emulator::start("crd").await.unwrap();
    let c = client(&e).await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let api = gadgets(c.clone(), "v1");
    let o = api
        .patch(
            "g",
            &PatchParams::apply("me"),
            &Patch::Apply(gadget(
                "g",
                json!({"mode": "a", "replicas": 3, "port": "http", "extra": {"any": {"thing": 1}}}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["extra"]["any"]["thing"], 1);
    // Readable at every served version (only apiVersion changes).
    let beta = gadgets(c.clone(), "v1beta1").get("g").await.unwrap();
    assert_eq!(beta.types.unwrap().api_version, "x.io/v1beta1");
    assert_eq!(beta.data["spec"]["replicas"], 3);
    let invalid = |spec: Value| {
        let api = api.clone();
        async move {
            match api
                .patch(
                    "bad",
                    &PatchParams::apply("me"),
                    &Patch::Apply(gadget("bad", spec)),
                )
                .await
            {
                Err(kube::Error::Api(s)) => (s.code, s.message),
                other => panic!("expected a validation error, got {other:?}"),
            }
        }
    };
    let (code, msg) = invalid(json!({"mode": "c"})).await;
    assert!(
        code == 422 && msg.contains("spec.mode: Unsupported value: \"c\""),
        "{msg}"
    );
    let (code, msg) = invalid(json!({"mode": "a", "replicas": 11})).await;
    assert!(
        code == 422
            && msg.contains("spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"),
        "{msg}"
    );
    // A value of the wrong type: an apply configuration cannot even be typed (500, as kube-apiserver).
    let (code, msg) = invalid(json!({"mode": "a", "replicas": "3"})).await;
    assert!(
        code == 500 && msg.contains(".spec.replicas: expected numeric (int or float), got string"),
        "{msg}"
    );
    let (_, msg) = invalid(json!({"replicas": 1})).await;
    assert!(msg.contains("spec.mode: Required value"), "{msg}");
    let (_, msg) = invalid(json!({"mode": "a", "host": "UPPER"})).await;
    assert!(
        msg.contains("spec.host in body should match '^[a-z.]+$'"),
        "{msg}"
    );
    let (_, msg) = invalid(json!({"mode": "a", "port": 1.5})).await;
    assert!(msg.contains("spec.port"), "{msg}");
    let (_, msg) = invalid(json!({"mode": "a", "tags": [1]})).await;
    assert!(msg.contains("spec.tags[0]"), "{msg}");
    // Unknown fields: an apply configuration with one fails (500, as kube-apiserver cannot type it, Strict
    // or not); a create prunes with a Warning header.
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::apply("me")
    };
    let r = api
        .patch(
            "s",
            &strict,
            &Patch::Apply(gadget("s", json!({"mode": "a", "upsync": []}))),
        )
        .await;
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 500);
            assert!(
                s.message
                    .contains(".spec.upsync: field not declared in schema"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    let (head, body) = raw(
        &e,
        "POST",
        "/apis/x.io/v1/namespaces/default/gadgets",
        Some((
            "application/json",
            &gadget(
                "w",
                json!({"mode": "b", "upsync": [], "ports": [{"name": "p", "bogus": 1}]}),
            )
            .to_string(),
        )),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 201"), "{head}\n{body}");
    assert!(
        head.to_lowercase()
            .contains(r#"warning: 299 - "unknown field \"spec.upsync\"""#),
        "{head}"
    );
    assert!(head.contains(r#"spec.ports[0].bogus"#), "{head}");
    let stored = e.object("x.io", "gadgets", Some("default"), "w").unwrap();
    assert!(
        stored["spec"].get("upsync").is_none() && stored["spec"]["ports"][0].get("bogus").is_none()
    );
    // Discovery lists it, with its status subresource and short name.
    let (_, body) = raw(&e, "GET", "/apis/x.io/v1", None).await;
    let rl: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gadgets", "gadgets/status"]);
    assert_eq!(rl["resources"][0]["shortNames"], json!(["gd"]));
    // Deleting the CRD removes the kind and its objects.
    crds.delete("gadgets.x.io", &DeleteParams::default())
        .await
        .unwrap();
    assert!(e.objects("x.io", "gadgets").is_empty());
    match api.get("g").await {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (404, "the server could not find the requested resource")
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn apply_merges_keyed_lists_and_removes_what_a_manager_drops() {
    let e = Emulator::start("ssa").await.unwrap();
    e.load_crds_yaml(CRD).unwrap();
    let api = gadgets(client(&e).await, "v1");
    let ssa = PatchParams::apply;
    api.patch(
        "g",
        &ssa("alice"),
        &Patch::Apply(gadget(
            "g",
            json!({"mode": "a", "ports": [{"name": "http", "port": 80}], "tags": ["x"]}),
        )),
    )
    .await
    .unwrap();
    // bob adds his own port item: the list is keyed by name, so alice's stays.
    let o = api
        .patch(
            "g",
            &ssa("bob"),
            &Patch::Apply(gadget(
                "g",
                json!({"ports": [{"name": "grpc", "port": 9000}]}),
            )),
        )
        .await
        .unwrap();
    let ports: Vec<&str> = o.data["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, vec!["http", "grpc"]);
    let mf = serde_json::to_value(&o.metadata.managed_fields).unwrap();
    let bob = mf
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "bob")
        .unwrap();
    assert!(
        bob["fieldsV1"]["f:spec"]["f:ports"]
            .get(r#"k:{"name":"grpc"}"#)
            .is_some(),
        "{bob}"
    );
    assert_eq!(bob["operation"], "Apply");
    // bob changing alice's port conflicts, naming the field and alice; force takes it over.
    let r = api
        .patch(
            "g",
            &ssa("bob"),
            &Patch::Apply(gadget(
                "g",
                json!({"ports": [{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]}),
            )),
        )
        .await;
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("alice")
                    && s.message.contains(".spec.ports[name=\"http\"].port"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    let (_, body) = raw(
        &e,
        "PATCH",
        "/apis/x.io/v1/namespaces/default/gadgets/g?fieldManager=bob",
        Some(("application/apply-patch+yaml", "apiVersion: x.io/v1\nkind: Gadget\nmetadata: {name: g}\nspec:\n  ports: [{name: http, port: 8080}]\n")),
    )
    .await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["details"]["causes"][0]["field"], ".spec.ports[name=\"http\"].port",
        "{status}"
    );
    let o = api
        .patch(
            "g",
            &ssa("bob").force(),
            &Patch::Apply(gadget(
                "g",
                json!({"ports": [{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["ports"][0]["port"], 8080);
    // alice stops applying tags and the http port: tags go; the http item stays (bob owns its port).
    let o = api
        .patch(
            "g",
            &ssa("alice"),
            &Patch::Apply(gadget("g", json!({"mode": "a"}))),
        )
        .await
        .unwrap();
    assert!(o.data["spec"].get("tags").is_none(), "{}", o.data);
    assert_eq!(
        o.data["spec"]["ports"].as_array().unwrap().len(),
        2,
        "{}",
        o.data
    );
    // bob stops applying grpc: that item goes.
    let o = api
        .patch(
            "g",
            &ssa("bob"),
            &Patch::Apply(gadget(
                "g",
                json!({"ports": [{"name": "http", "port": 8080}]}),
            )),
        )
        .await
        .unwrap();
    let ports: Vec<&str> = o.data["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, vec!["http"]);
    // A no-op re-apply changes nothing: same resourceVersion, no effective change, no event.
    e.reset_stats();
    let again = api
        .patch(
            "g",
            &ssa("bob"),
            &Patch::Apply(gadget(
                "g",
                json!({"ports": [{"name": "http", "port": 8080}]}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, o.metadata.resource_version);
    assert_eq!(
        again.metadata.managed_fields, o.metadata.managed_fields,
        "managedFields times do not move"
    );
    let st = e.stats();
    assert_eq!(
        (st.writes, st.changes, st.by_verb.get("patch").copied()),
        (1, 0, Some(1))
    );
    // Non-apply writes are recorded under their manager (fieldManager, else the user agent) as Update.
    api.patch(
        "g",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    let o = api.get("g").await.unwrap();
    let edit = o
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("kubectl-edit"))
        .unwrap();
    assert_eq!(edit.operation.as_deref(), Some("Update"));
    assert!(serde_json::to_string(&edit.fields_v1)
        .unwrap()
        .contains("f:replicas"));
    assert_eq!(e.stats().changes_by_verb.get("patch"), Some(&1));
}

#[tokio::test]
async fn status_is_a_separate_subresource_and_generation_tracks_spec() {
    let e = Emulator::start("st").await.unwrap();
    e.load_crds_yaml(CRD).unwrap();
    let api = gadgets(client(&e).await, "v1");
    let mut g = gadget("g", json!({"mode": "a"}));
    g["status"] = json!({"ready": true});
    let o = api
        .patch("g", &PatchParams::apply("m"), &Patch::Apply(&g))
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    assert!(
        o.data.get("status").is_none(),
        "status ignored on the main resource"
    );
    let rv1 = o.metadata.resource_version.clone();
    let o = api
        .patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"mode": "b"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (o.metadata.generation, o.data["spec"]["mode"].as_str()),
        (Some(1), Some("a")),
        "a status write changes only status"
    );
    assert_eq!(o.data["status"]["ready"], true);
    assert_ne!(o.metadata.resource_version, rv1);
    // metadata changes keep the generation; spec changes bump it.
    let o = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    let o = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/mode", "value": "b"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (o.metadata.generation, o.data["status"]["ready"].as_bool()),
        (Some(2), Some(true))
    );
    // PUT with a stale resourceVersion conflicts.
    let mut stale = o.clone();
    stale.metadata.resource_version = rv1;
    match api.replace("g", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("{other:?}"),
    }
    api.replace("g", &PostParams::default(), &o).await.unwrap();
}

#[tokio::test]
async fn scopes_and_unknown_resources_answer_like_a_real_server() {
    let e = Emulator::start("scope").await.unwrap();
    let (head, body) = raw(
        &e,
        "GET",
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices",
        None,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            s["kind"].as_str(),
            s["reason"].as_str(),
            s["message"].as_str()
        ),
        (
            Some("Status"),
            Some("NotFound"),
            Some("the server could not find the requested resource")
        )
    );
    // A cluster-scoped kind under a namespace: no such route.
    let (head, _) = raw(&e, "GET", "/api/v1/namespaces/default/namespaces", None).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // A namespaced object through the cluster-wide path: not allowed.
    let (head, _) = raw(
        &e,
        "POST",
        "/api/v1/configmaps",
        Some(("application/json", &cm("c", json!({})).to_string())),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // A body namespace that is not the URL's.
    let (head, body) = raw(
        &e,
        "POST",
        "/api/v1/namespaces/kube-system/configmaps",
        Some(("application/json", &cm("c", json!({})).to_string())),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 400") && body.contains("does not match"),
        "{head} {body}"
    );
    // Cluster-wide list across namespaces, paging, field selectors, generateName.
    let api_all: Api<ConfigMap> = Api::all(client(&e).await);
    let c = client(&e).await;
    for ns in ["default", "kube-system"] {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
        for i in 0..3 {
            let mut o = cm("", json!({}));
            o["metadata"] = json!({"generateName": "gen-", "labels": {"i": i.to_string()}});
            api.create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                .await
                .unwrap();
        }
    }
    let all = api_all.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(all
        .items
        .iter()
        .all(|o| o.metadata.name.as_deref().unwrap().starts_with("gen-")));
    let page = api_all.list(&ListParams::default().limit(4)).await.unwrap();
    assert_eq!(
        (page.items.len(), page.metadata.remaining_item_count),
        (4, Some(2))
    );
    let rest = api_all
        .list(
            &ListParams::default()
                .limit(4)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!((rest.items.len(), rest.metadata.continue_), (2, None));
    let by_ns = api_all
        .list(&ListParams::default().fields("metadata.namespace=kube-system"))
        .await
        .unwrap();
    assert_eq!(by_ns.items.len(), 3);
    for (sel, n) in [
        ("i", 6),
        ("!i", 0),
        ("i notin (0,1)", 2),
        ("i==1", 2),
        ("i in (0)", 2),
    ] {
        assert_eq!(
            api_all
                .list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len(),
            n,
            "{sel}"
        );
    }
    // deletecollection in a namespace.
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("i in (0,1)"),
    )
    .await
    .unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    // Deleting a namespace deletes what is in it; finalizers hold an object until removed.
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    nsapi
        .delete("kube-system", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_all
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let log = e.request_log();
    assert!(log.iter().any(|r| r.verb == "deletecollection"
        && r.resource == "configmaps"
        && r.namespace.as_deref() == Some("default")));
    assert!(log
        .iter()
        .any(|r| r.verb == "list" && r.namespace.is_none()));
}

#[tokio::test]
async fn discovery_plain_and_aggregated() {
    let e = Emulator::start("disc").await.unwrap();
    e.load_crds_yaml(CRD).unwrap();
    let c = client(&e).await;
    for d in [
        kube::Discovery::new(c.clone()).run().await.unwrap(),
        kube::Discovery::new(c.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let (ar, caps) = d
            .resolve_gvk(&kube::api::GroupVersionKind::gvk("x.io", "v1", "Gadget"))
            .unwrap();
        assert_eq!(ar.plural, "gadgets");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(
            caps.subresources
                .iter()
                .any(|(s, _)| s.plural == "gadgets/status" || s.plural == "status"),
            "{:?}",
            caps.subresources
        );
        let (_, caps) = d
            .resolve_gvk(&kube::api::GroupVersionKind::gvk(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ))
            .unwrap();
        assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
        assert!(d
            .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "ConfigMap"))
            .is_some());
        assert!(d
            .resolve_gvk(&kube::api::GroupVersionKind::gvk(
                "coordination.k8s.io",
                "v1",
                "Lease"
            ))
            .is_some());
        assert!(d
            .resolve_gvk(&kube::api::GroupVersionKind::gvk(
                "events.k8s.io",
                "v1",
                "Event"
            ))
            .is_some());
    }
    // DynamicObject with what discovery found.
    let d = kube::Discovery::new(c.clone()).run().await.unwrap();
    let (ar, _) = d
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "apps",
            "v1",
            "Deployment",
        ))
        .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
    api.patch("d", &PatchParams::apply("t"), &Patch::Apply(&dep))
        .await
        .unwrap();
    let got: Vec<DynamicObject> = api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["spec"]["replicas"], 1);
    let version: Value = serde_json::from_str(&raw(&e, "GET", "/version", None).await.1).unwrap();
    assert!(version["gitVersion"].as_str().unwrap().contains("emulator"));
}

#[tokio::test]
async fn istio_and_kubestellar_crds() {
    let e = Emulator::start("real-crds").await.unwrap();
    let start = std::time::Instant::now();
    // Istio's own CRDs from the pinned istio.io/istio module; BindingPolicy's as `ksit crds` generates it.
    let n = e
        .load_crds_yaml(&ksit_kube::istio_crds_yaml().unwrap())
        .unwrap()
        + e.load_crds_yaml(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../manifests/crds.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
    assert!(n > 10, "{n} CRDs");
    eprintln!("{n} CRDs loaded in {:?}", start.elapsed());
    let c = client(&e).await;
    let dynamic = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::apply("ksit")
    };
    let vs: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &dynamic(
            "networking.istio.io",
            "v1",
            "VirtualService",
            "virtualservices",
        ),
    );
    let o = vs
        .patch("reviews", &strict, &Patch::Apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews"},
            "spec": {"hosts": ["reviews"], "http": [{"match": [{"headers": {"x-canary": {"exact": "1"}}}],
                     "route": [{"destination": {"host": "reviews", "subset": "v2"}, "weight": 100}]}]}})))
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["http"][0]["route"][0]["weight"], 100);
    let bad = vs
        .patch("bad", &strict, &Patch::Apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "bad"},
            "spec": {"hosts": ["x"], "htp": []}})))
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 500 && s.message.contains(".spec.htp: field not declared in schema")),
        "{bad:?}"
    );
    let wp: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &dynamic(
            "extensions.istio.io",
            "v1alpha1",
            "WasmPlugin",
            "wasmplugins",
        ),
    );
    let o = wp
        .patch("ksit", &strict, &Patch::Apply(json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "ksit"},
            "spec": {"url": "oci://example/ksit:1", "phase": "AUTHN", "pluginConfig": {"rules": [{"a": 1}]},
                     "selector": {"matchLabels": {"istio": "ingressgateway"}}}})))
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["pluginConfig"]["rules"][0]["a"], 1);
    let bad = wp
        .patch("bad", &PatchParams::apply("ksit"), &Patch::Apply(json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "bad"},
            "spec": {"url": "oci://x", "phase": "SOMETIME"}})))
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.phase: Unsupported value")),
        "{bad:?}"
    );
    // KubeStellar's BindingPolicy is cluster-scoped: a namespace in its metadata is dropped.
    let bp: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &dynamic(
            "control.kubestellar.io",
            "v1alpha1",
            "BindingPolicy",
            "bindingpolicies",
        ),
    );
    let o = bp
        .patch("mesh", &PatchParams::apply("ksit"), &Patch::Apply(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": "mesh", "namespace": "default"},
            "spec": {"clusterSelectors": [{"matchLabels": {"mesh": "enabled"}}], "downsync": [{"objectSelectors": [{"matchLabels": {"app": "x"}}]}]}})))
        .await
        .unwrap();
    assert!(o.metadata.namespace.is_none());
    assert_eq!(
        o.data["spec"]["clusterSelectors"][0]["matchLabels"]["mesh"],
        "enabled"
    );
    let (head, _) = raw(
        &e,
        "GET",
        "/apis/control.kubestellar.io/v1alpha1/namespaces/default/bindingpolicies/mesh",
        None,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let r = bp
        .patch("mesh", &PatchParams { field_validation: Some(kube::api::ValidationDirective::Strict), ..PatchParams::apply("ksit") },
            &Patch::Apply(json!({"apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy", "metadata": {"name": "mesh"}, "spec": {"upsync": [{"x": 1}], "bogus": 1}})))
        .await;
    assert!(
        matches!(&r, Err(kube::Error::Api(s)) if s.code == 500 && s.message.contains(".spec.bogus: field not declared in schema")),
        "{r:?}"
    );
}

#[tokio::test]
async fn faults_down_up_dropped_watches_error_rate_latency_wipe() {
    let e = Emulator::start("faulty").await.unwrap();
    let c = client(&e).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    e.put(cm("a", json!({})), "t").unwrap();
    // Down: connection refused at the TCP level; up: the same port serves the same objects.
    e.faults().set_down(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(e.faults().is_down());
    let refused = tokio::net::TcpStream::connect(e.addr()).await;
    assert_eq!(
        refused.err().map(|x| x.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(api.get("a").await.is_err());
    e.faults().set_down(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(api.get("a").await.is_ok());
    // Dropped watches: the watcher reconnects and goes on.
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    wait_init(&mut w).await;
    e.reset_stats();
    e.faults().drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.put(cm("b", json!({})), "t").unwrap();
    loop {
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = next_event(&mut w).await {
            if o.metadata.name.as_deref() == Some("b") {
                break;
            }
        }
    }
    assert!(
        e.request_log().iter().any(|r| r.verb == "watch"),
        "the watcher came back"
    );
    // Error rate: deterministic for a seed.
    let outcomes = |e: Emulator| async move {
        let api: Api<ConfigMap> = Api::namespaced(client(&e).await, "default");
        e.faults().set_seed(7);
        e.faults().set_error_rate(0.3);
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(match api.get_opt("a").await {
                Err(kube::Error::Api(s)) if s.code == 500 => false,
                Ok(_) => true,
                other => panic!("{other:?}"),
            });
        }
        e.faults().set_error_rate(0.0);
        v
    };
    let first = outcomes(e.clone()).await;
    let failed = first.iter().filter(|ok| !**ok).count();
    assert!((4..=20).contains(&failed), "{failed} of 40 failed at 30%");
    assert_eq!(outcomes(e.clone()).await, first, "same seed, same failures");
    // Latency applies to every request.
    e.faults().set_latency(Duration::from_millis(200));
    let t = std::time::Instant::now();
    api.get("a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    e.faults().set_latency(Duration::ZERO);
    // Wipe: a member that comes back empty; watchers see the deletions.
    e.faults().wipe();
    assert!(api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let mut deleted = 0;
    while deleted < 2 {
        if let watcher::Event::Delete(_) = next_event(&mut w).await {
            deleted += 1;
        }
    }
    e.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(e.addr()).await.is_err());
}

#[tokio::test]
async fn dry_run_and_kubeconfig() {
    let e = Emulator::start("kc").await.unwrap();
    let kc = e.kubeconfig();
    assert!(
        kc.contains(&format!("server: {}", e.url())) && kc.contains("current-context: kc"),
        "{kc}"
    );
    let dir = std::env::temp_dir().join(format!("ksit-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kc.kubeconfig");
    e.write_kubeconfig(&path).unwrap();
    let cfg = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(cfg).unwrap(), "default");
    let o = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &serde_json::from_value(cm("dry", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(o.metadata.name.as_deref(), Some("dry"));
    assert!(
        api.get_opt("dry").await.unwrap().is_none(),
        "a dry run stores nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_starts_clusters_and_writes_kubeconfigs() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir().join(format!("ksit-emulator-bin-{}", std::process::id()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ksit-emulator"))
        .args(["--cluster", "hub", "--cluster", "member", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let l = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 3, "{l}");
        urls.push(parts[1].to_string());
        let kc = std::fs::read_to_string(parts[2]).unwrap();
        assert!(kc.contains(parts[1]));
    }
    let cfg = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(dir.join("member.kubeconfig")).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let c = Client::try_from(cfg).unwrap();
    let v = c.apiserver_version().await.unwrap();
    assert!(v.git_version.contains("emulator"));
    // SIGTERM ends it.
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
