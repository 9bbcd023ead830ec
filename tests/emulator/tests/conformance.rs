//! Emulator conformance: one request script runs against the emulator and against a real kube-apiserver
//! (v1.37.2, `ksit-kube`), and every answer is compared: status code, `Warning` headers and the body.
//! Volatile values are normalised, not dropped: resourceVersions and uids become per-object ordinals (so
//! "unchanged" and "new" still compare), a list's or bookmark's resourceVersion and continue token become
//! placeholders, timestamps `<time>`; managedFields entries are compared without their order (a real server
//! orders them by the second they were written in) and a 422's causes without theirs (a real server's
//! varies from run to run).
//!
//! A step either expects the same answer from both, or names a [`Known`] difference, which must be listed
//! (in bold) in README.md under "Known differences from a real API server" and must still show: a
//! difference that went away fails the step until its exception is removed. Any other difference fails
//! the test. Facts the script relies on are also checked on the real server's answers, so two wrong
//! answers that agree cannot pass. The transcript (stderr with `--nocapture`, and
//! `target/tmp/conformance-transcript.txt`) shows both answers of every step that differed: what the real
//! server does where the emulator knowingly does not (a CEL rejection, say) is on record.
//!
//! One real server for the whole script (it takes a few seconds to start); it must start: this test never
//! skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http_body_util::BodyExt;
use ksit_emulator::Emulator;
use ksit_kube::ApiServer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A difference between the emulator and a real API server that ksit's tests do not depend on. `name` must
/// appear in bold in README.md's "Known differences" section.
struct Known {
    name: &'static str,
}

const CEL: Known = Known {
    name: "CEL `x-kubernetes-validations` rules are not evaluated",
};

const NAMESPACE_DELETION: Known = Known {
    name: "Deleting a namespace completes at once",
};

const PAST_LISTS: Known = Known {
    name: "Lists are of the current objects",
};

const NS: &str = "conformance";

/// The test's own kind: defaults (scalar, nested, object), CEL rules (one a transition rule), a keyed list,
/// a preserve-unknown-fields object, bounds, enum, pattern, the status subresource.
const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.conformance.ksit.io}
spec:
  group: conformance.ksit.io
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    selectableFields: [{jsonPath: .spec.mode}]
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {rule: "self.min <= self.max", message: "min must not exceed max"}
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              mode: {type: string, enum: [fast, safe], default: safe}
              label:
                type: string
                maxLength: 8
                pattern: '^[a-z]+$'
                x-kubernetes-validations:
                - {rule: "self == oldSelf", message: "label is immutable"}
              min: {type: integer, default: 0}
              max: {type: integer, default: 100}
              tags: {type: array, items: {type: string}}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
              limits:
                type: object
                default: {}
                properties:
                  cpu: {type: string, default: "1"}
                  memory: {type: string}
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
          status:
            type: object
            properties:
              phase: {type: string}
              observedGeneration: {type: integer}
"#;

/// One request of the script; `${var}` in the path or body is replaced by that side's saved value.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<String>,
}

fn get(path: impl Into<String>) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        content_type: None,
        body: None,
    }
}
fn delete(path: impl Into<String>) -> Req {
    Req {
        method: "DELETE",
        ..get(path)
    }
}
fn with_body(method: &'static str, ct: &'static str, path: impl Into<String>, body: Value) -> Req {
    Req {
        method,
        path: path.into(),
        content_type: Some(ct),
        body: Some(body.to_string()),
    }
}
fn post(path: impl Into<String>, body: Value) -> Req {
    with_body("POST", "application/json", path, body)
}
fn put(path: impl Into<String>, body: Value) -> Req {
    with_body("PUT", "application/json", path, body)
}
fn merge_patch(path: impl Into<String>, body: Value) -> Req {
    with_body("PATCH", "application/merge-patch+json", path, body)
}
/// Server-side apply as `manager`.
fn apply(path: &str, manager: &str, force: bool, body: Value) -> Req {
    let sep = if path.contains('?') { '&' } else { '?' };
    with_body(
        "PATCH",
        "application/apply-patch+yaml",
        format!("{path}{sep}fieldManager={manager}&force={force}"),
        body,
    )
}

/// What a side answered, normalised for comparison.
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    status: u16,
    warnings: Vec<String>,
    body: Value,
}

impl Outcome {
    fn show(&self) -> String {
        let mut s = format!("{}", self.status);
        for w in &self.warnings {
            let _ = write!(s, "\n      Warning: {w}");
        }
        let _ = write!(
            s,
            "\n      {}",
            serde_json::to_string_pretty(&self.body)
                .unwrap_or_default()
                .replace('\n', "\n      ")
        );
        s
    }
}

/// What both sides answered: the raw bodies (to save values from) and the normalised outcomes.
struct Answer {
    raw: [Value; 2],
    out: [Outcome; 2],
}

impl Answer {
    fn real(&self) -> &Outcome {
        &self.out[1]
    }
}

/// One server under test, with what the script saved from its answers and its normalisation state.
struct Side {
    label: &'static str,
    client: kube::Client,
    vars: BTreeMap<String, String>,
    /// Per object (namespace, name): the resourceVersions and uids seen, in order of first appearance.
    rvs: BTreeMap<(String, String), Vec<String>>,
    uids: BTreeMap<(String, String), Vec<String>>,
}

fn ordinal(
    seen: &mut BTreeMap<(String, String), Vec<String>>,
    key: &(String, String),
    v: &str,
) -> usize {
    let list = seen.entry(key.clone()).or_default();
    match list.iter().position(|x| x == v) {
        Some(i) => i + 1,
        None => {
            list.push(v.to_string());
            list.len()
        }
    }
}

impl Side {
    async fn new(label: &'static str, kubeconfig: &str) -> Side {
        let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        Side {
            label,
            client: kube::Client::try_from(cfg).unwrap(),
            vars: BTreeMap::new(),
            rvs: BTreeMap::new(),
            uids: BTreeMap::new(),
        }
    }

    fn subst(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("${{{k}}}"), v);
        }
        out
    }

    fn request(&self, req: &Req) -> hyper::http::Request<kube::client::Body> {
        let mut b = hyper::http::Request::builder()
            .method(req.method)
            .uri(self.subst(&req.path))
            .header("accept", "application/json");
        if let Some(ct) = req.content_type {
            b = b.header("content-type", ct);
        }
        let body = req
            .body
            .as_deref()
            .map(|t| self.subst(t).into_bytes())
            .unwrap_or_default();
        b.body(kube::client::Body::from(body)).unwrap()
    }

    async fn send(&self, req: &Req) -> (u16, Vec<String>, Value) {
        let res = self
            .client
            .send(self.request(req))
            .await
            .unwrap_or_else(|e| panic!("{}: {} {}: {e}", self.label, req.method, req.path));
        let status = res.status().as_u16();
        let warnings = warnings(res.headers());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(format!("(not JSON) {}", String::from_utf8_lossy(&bytes)))
        });
        (status, warnings, body)
    }

    /// Normalises an answer's body in place (see the module documentation).
    fn normalize(&mut self, v: &mut Value) {
        self.normalize_as(v, "")
    }

    /// `kind`: the kind of the objects at this level when they do not say (a built-in list's items).
    fn normalize_as(&mut self, v: &mut Value, kind: &str) {
        match v {
            Value::Object(m) => {
                let is_list = m.get("items").is_some_and(Value::is_array);
                let is_bookmark = m.get("type").and_then(Value::as_str) == Some("BOOKMARK");
                let is_status = m.get("kind").and_then(Value::as_str) == Some("Status");
                let own_kind = m
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or(kind)
                    .to_string();
                if is_bookmark {
                    if let Some(rv) = m
                        .get_mut("object")
                        .and_then(|o| o.pointer_mut("/metadata/resourceVersion"))
                    {
                        *rv = json!("<rv>");
                    }
                }
                if is_status {
                    if let Some(uid) = m.get_mut("details").and_then(|d| d.get_mut("uid")) {
                        *uid = json!("<uid>");
                    }
                    if let Some(Value::String(msg)) = m.get_mut("message") {
                        *msg = normalize_message(msg);
                    }
                    sort_causes(m);
                }
                if let Some(Value::Object(meta)) = m.get_mut("metadata") {
                    if is_list {
                        for k in ["resourceVersion", "continue"] {
                            if meta
                                .get(k)
                                .and_then(Value::as_str)
                                .is_some_and(|x| !x.is_empty())
                            {
                                meta.insert(k.into(), json!(format!("<{k}>")));
                            }
                        }
                    } else {
                        self.normalize_meta(meta, &own_kind);
                    }
                }
                let item_kind = own_kind.strip_suffix("List").unwrap_or("").to_string();
                for (k, x) in m.iter_mut() {
                    if k == "items" {
                        self.normalize_as(x, &item_kind);
                    } else if k != "metadata" {
                        self.normalize_as(x, "");
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.normalize_as(x, kind)),
            _ => {}
        }
    }

    fn normalize_meta(&mut self, meta: &mut serde_json::Map<String, Value>, kind: &str) {
        let key = (
            format!(
                "{kind}/{}",
                meta.get("namespace").and_then(Value::as_str).unwrap_or("")
            ),
            meta.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        );
        if let Some(Value::String(rv)) = meta.get_mut("resourceVersion") {
            if key.1.is_empty() {
                *rv = "<rv>".into();
            } else {
                *rv = format!("rv{}", ordinal(&mut self.rvs, &key, rv));
            }
        }
        if let Some(Value::String(uid)) = meta.get_mut("uid") {
            *uid = format!("uid{}", ordinal(&mut self.uids, &key, uid));
        }
        for k in ["creationTimestamp", "deletionTimestamp"] {
            if let Some(t @ Value::String(_)) = meta.get_mut(k) {
                *t = json!("<time>");
            }
        }
        if let Some(Value::Array(mf)) = meta.get_mut("managedFields") {
            for e in mf.iter_mut() {
                if let Some(t @ Value::String(_)) = e.get_mut("time") {
                    *t = json!("<time>");
                }
            }
            // A real server orders entries by time (to the second) first: the order is left out, since
            // the two servers' seconds can tick over between their requests.
            mf.sort_by_key(|e| {
                (
                    e["operation"].as_str().unwrap_or("").to_string(),
                    e["manager"].as_str().unwrap_or("").to_string(),
                    e["subresource"].as_str().unwrap_or("").to_string(),
                )
            });
        }
    }
}

/// Numbers in messages that name resourceVersions.
fn normalize_message(msg: &str) -> String {
    let re = regex_lite::Regex::new(r"too old resource version: \d+ \(\d+\)").unwrap();
    re.replace_all(msg, "too old resource version: <rv> (<rv>)")
        .into_owned()
}

/// A real server lists a 422's errors in a random order (it walks a Go map): the causes are sorted, and
/// the message's `[a, b]` list with them when it is exactly the causes' texts.
fn sort_causes(status: &mut serde_json::Map<String, Value>) {
    let Some(Value::Array(causes)) = status.get_mut("details").and_then(|d| d.get_mut("causes"))
    else {
        return;
    };
    let text = |c: &Value| {
        format!(
            "{}: {}",
            c["field"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        )
    };
    let before: Vec<String> = causes.iter().map(text).collect();
    causes.sort_by_key(text);
    let after: Vec<String> = causes.iter().map(text).collect();
    if let Some(Value::String(msg)) = status.get_mut("message") {
        let listed = format!("[{}]", before.join(", "));
        if let Some(head) = msg.strip_suffix(&listed) {
            *msg = format!("{head}[{}]", after.join(", "));
        }
    }
}

fn warnings(h: &hyper::http::HeaderMap) -> Vec<String> {
    let mut w: Vec<String> = h
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    w.sort();
    w
}

/// How long to read a watch stream.
#[derive(Clone, Copy)]
enum Until {
    /// This many events (or the stream's end).
    Events(usize),
    /// An event of this type (or the stream's end).
    Type(&'static str),
}

/// An open watch on both sides.
struct Watch {
    request: String,
    streams: Vec<(u16, kube::client::Body, Vec<u8>)>,
}

struct Diff {
    sides: [Side; 2],
    readme: String,
    transcript: String,
    failures: Vec<String>,
    steps: usize,
    known_seen: Vec<&'static str>,
}

impl Diff {
    async fn step(&mut self, name: &str, req: Req) -> Answer {
        self.step_expecting(name, req, None).await
    }

    /// A step whose answers differ in a known, documented way.
    async fn differs(&mut self, name: &str, req: Req, known: &Known) -> Answer {
        self.step_expecting(name, req, Some(known)).await
    }

    async fn step_expecting(&mut self, name: &str, req: Req, known: Option<&Known>) -> Answer {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        for side in &mut self.sides {
            let (status, warnings, body) = side.send(&req).await;
            let mut norm = body.clone();
            side.normalize(&mut norm);
            raw.push(body);
            out.push(Outcome {
                status,
                warnings,
                body: norm,
            });
        }
        let what = format!("{} {}", req.method, req.path);
        let answer = Answer {
            raw: [raw[0].clone(), raw[1].clone()],
            out: [out[0].clone(), out[1].clone()],
        };
        self.judge(name, &what, &answer.out, known);
        answer
    }

    fn judge(&mut self, name: &str, what: &str, out: &[Outcome; 2], known: Option<&Known>) {
        self.steps += 1;
        let same = out[0] == out[1];
        let verdict = match (same, known) {
            (true, None) => "same",
            (false, Some(k)) => {
                if !known_section(&self.readme).contains(&format!("**{}", k.name)) {
                    self.failures.push(format!(
                        "{name}: known difference {:?} is not listed in README.md",
                        k.name
                    ));
                }
                self.known_seen.push(k.name);
                "known difference"
            }
            (false, None) => {
                self.failures
                    .push(format!("{name}: the emulator answers differently"));
                "DIFFERENT"
            }
            (true, Some(k)) => {
                self.failures.push(format!(
                    "{name}: known difference {:?} no longer shows: remove the exception",
                    k.name
                ));
                "SAME, but a difference was expected"
            }
        };
        let _ = writeln!(
            self.transcript,
            "[{verdict}] {name}: {what} -> {}",
            out[1].status
        );
        if let Some(k) = known {
            let _ = writeln!(self.transcript, "    ({})", k.name);
        }
        if !same {
            for (side, o) in self.sides.iter().zip(out) {
                let _ = writeln!(self.transcript, "    {}: {}", side.label, o.show());
            }
        }
    }

    /// Saves the value at a JSON pointer of each side's raw answer as `${var}`.
    fn save(&mut self, var: &str, a: &Answer, pointer: &str) {
        for (side, raw) in self.sides.iter_mut().zip(&a.raw) {
            let v = match raw.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => panic!("{}: no {pointer} in {raw}", side.label),
            };
            side.vars.insert(var.to_string(), v);
        }
    }

    /// Opens a watch (a GET with `watch=true`) on both sides.
    async fn open_watch(&mut self, path: &str) -> Watch {
        let mut streams = Vec::new();
        for side in &self.sides {
            let res = side
                .client
                .send(side.request(&get(path)))
                .await
                .unwrap_or_else(|e| panic!("{}: watch {path}: {e}", side.label));
            streams.push((res.status().as_u16(), res.into_body(), Vec::new()));
        }
        Watch {
            request: format!("GET {path}"),
            streams,
        }
    }

    /// Reads a watch's events on both sides (until `until`, for at most `limit`) and compares them.
    async fn read_watch(
        &mut self,
        name: &str,
        w: &mut Watch,
        until: Until,
        limit: Duration,
        known: Option<&Known>,
    ) -> Answer {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        for (side, (status, body, buf)) in self.sides.iter_mut().zip(w.streams.iter_mut()) {
            let events = read_events(body, buf, until, limit).await;
            let v = Value::Array(events);
            let mut norm = v.clone();
            side.normalize(&mut norm);
            raw.push(v);
            out.push(Outcome {
                status: *status,
                warnings: vec![],
                body: norm,
            });
        }
        let answer = Answer {
            raw: [raw[0].clone(), raw[1].clone()],
            out: [out[0].clone(), out[1].clone()],
        };
        let what = w.request.clone();
        self.judge(name, &what, &answer.out, known);
        answer
    }

    /// A watch from open to `until`.
    async fn watch(&mut self, name: &str, path: &str, until: Until, limit: Duration) -> Answer {
        let mut w = self.open_watch(path).await;
        self.read_watch(name, &mut w, until, limit, None).await
    }

    /// A fact about the real server's answer the script relies on (so a comparison of two wrong answers
    /// cannot pass).
    fn expect_real(&mut self, name: &str, ok: bool, what: &str) {
        if !ok {
            self.failures.push(format!(
                "{name}: the real server did not answer as the script expects: {what}"
            ));
        }
    }
}

async fn read_events(
    body: &mut kube::client::Body,
    buf: &mut Vec<u8>,
    until: Until,
    limit: Duration,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut events: Vec<Value> = Vec::new();
    let done = |events: &[Value]| match until {
        Until::Events(n) => events.len() >= n,
        Until::Type(t) => events.iter().any(|e| e["type"] == t),
    };
    loop {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                events.push(v);
            }
        }
        if done(&events) {
            return events;
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            // The stream ended, failed, or the time is up.
            _ => return events,
        }
    }
}

fn cm(name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "labels": labels}, "data": data})
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "conformance.ksit.io/v1", "kind": "Widget", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_like_a_real_api_server() {
    let started = Instant::now();
    let istio =
        ksit_kube::istio_crds_yaml().expect("Istio's CRDs (tests/kube/build.sh istio-crds)");
    let vs_crd = vs_crd(&istio);
    let real = ApiServer::start("conformance")
        .await
        .expect("a real kube-apiserver must start");
    let emulator = Emulator::start("conformance").await.unwrap();
    emulator.set_bookmark_interval(Duration::from_millis(500));
    let setup_started = Instant::now();
    let mut d = Diff {
        sides: [
            Side::new("emulator", &emulator.kubeconfig()).await,
            Side::new("real", &real.kubeconfig(None)).await,
        ],
        readme: std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap(),
        transcript: String::new(),
        failures: Vec::new(),
        steps: 0,
        known_seen: Vec::new(),
    };
    // Setup, not compared: the same CRDs on both, through the API, each Established before use: the
    // test's own, Istio's VirtualService, and ksit's and KubeStellar's as `ksit crds` generates them.
    let ksit_crds = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../manifests/crds.yaml"
    ))
    .expect("manifests/crds.yaml");
    for kc in [emulator.kubeconfig(), real.kubeconfig(None)] {
        let c = ksit_kube::Client::new(&kc).await.unwrap();
        c.apply_yaml(
            &format!("{WIDGET_CRD}\n---\n{vs_crd}\n---\n{ksit_crds}"),
            "conformance-setup",
        )
        .await
        .unwrap();
    }
    eprintln!(
        "conformance: real server started in {:.1} s, CRDs in {:.1} s",
        (setup_started - started).as_secs_f64(),
        setup_started.elapsed().as_secs_f64()
    );

    core_objects_and_selectors(&mut d).await;
    server_side_apply(&mut d).await;
    custom_resources(&mut d).await;
    istio_virtual_service(&mut d).await;
    ksit_kinds(&mut d).await;
    watches(&mut d, &emulator).await;

    d.step(
        "delete the namespace",
        delete(format!("/api/v1/namespaces/{NS}")),
    )
    .await;
    let a = d
        .differs(
            "the namespace after its deletion",
            get(format!("/api/v1/namespaces/{NS}")),
            &NAMESPACE_DELETION,
        )
        .await;
    d.expect_real(
        "Terminating",
        a.raw[1]["status"]["phase"] == "Terminating",
        "the namespace stays Terminating (no namespace controller runs)",
    );

    eprintln!("{}", d.transcript);
    let saved = concat!(env!("CARGO_TARGET_TMPDIR"), "/conformance-transcript.txt");
    if std::fs::write(saved, &d.transcript).is_ok() {
        eprintln!("conformance: transcript in {saved}");
    }
    eprintln!(
        "conformance: {} steps, {} known differences shown, in {:.1} s",
        d.steps,
        d.known_seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        d.failures.is_empty(),
        "{} of {} steps failed:\n  {}",
        d.failures.len(),
        d.steps,
        d.failures.join("\n  ")
    );
}

/// README.md's "Known differences from a real API server" section.
fn known_section(readme: &str) -> &str {
    let start = readme
        .find("## Known differences from a real API server")
        .unwrap_or(readme.len());
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The VirtualService CRD out of Istio's crd-all.gen.yaml.
fn vs_crd(all: &str) -> String {
    all.split("\n---")
        .find(|d| d.contains("name: virtualservices.networking.istio.io"))
        .expect("Istio's CRDs hold VirtualService")
        .to_string()
}

async fn core_objects_and_selectors(d: &mut Diff) {
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    d.step(
        "create a namespace",
        post(
            "/api/v1/namespaces?fieldManager=conformance",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        ),
    )
    .await;
    d.step(
        "create it again: 409 AlreadyExists",
        post(
            "/api/v1/namespaces?fieldManager=conformance",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        ),
    )
    .await;
    let a = d
        .step(
            "create in a missing namespace: 404",
            post(
                "/api/v1/namespaces/nowhere/configmaps?fieldManager=conformance",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            ),
        )
        .await;
    d.expect_real("missing namespace", a.real().status == 404, "404");
    for (name, labels) in [
        ("a", json!({"suite": "sel", "app": "web", "tier": "front"})),
        ("b", json!({"suite": "sel", "app": "web", "tier": "back"})),
        ("c", json!({"suite": "sel", "app": "db"})),
        ("d", json!({"suite": "sel", "tier": "front"})),
    ] {
        let a = d
            .step(
                &format!("create configmap {name}"),
                post(
                    format!("{cms}?fieldManager=conformance"),
                    cm(name, labels, json!({"k": name})),
                ),
            )
            .await;
        d.expect_real("create", a.real().status == 201, "201 Created");
    }
    d.step("get", get(format!("{cms}/a"))).await;
    let a = d
        .step("get a missing object: 404", get(format!("{cms}/zz")))
        .await;
    d.expect_real("get missing", a.real().status == 404, "404");
    for sel in [
        "suite=sel,app=web",
        "suite=sel,app==web",
        "suite=sel,app!=web",
        "suite=sel,app in (web,db)",
        "suite=sel,app notin (web)",
        "suite=sel,app",
        "suite=sel,!app",
        "suite=sel,app=web,tier=front",
        "suite=sel,tier in (front),app notin (db)",
    ] {
        let a = d
            .step(
                &format!("list with labelSelector {sel}"),
                get(format!("{cms}?labelSelector={}", enc(sel))),
            )
            .await;
        d.expect_real("list", a.real().status == 200, "200");
    }
    d.step(
        "list with an invalid label selector: 400",
        get(format!("{cms}?labelSelector={}", enc("app in web"))),
    )
    .await;
    for fs in ["metadata.name=b", "metadata.name!=b", "metadata.name==c"] {
        d.step(
            &format!("list with fieldSelector {fs}"),
            get(format!(
                "{cms}?labelSelector=suite%3Dsel&fieldSelector={}",
                enc(fs)
            )),
        )
        .await;
    }
    d.step(
        "list all namespaces with fieldSelector metadata.namespace",
        get(format!(
            "/api/v1/configmaps?labelSelector=suite%3Dsel&fieldSelector={}",
            enc(&format!("metadata.namespace={NS}"))
        )),
    )
    .await;
    d.step(
        "list with a field selector on an unsupported field: 400",
        get(format!("{cms}?fieldSelector={}", enc("data.k=a"))),
    )
    .await;
    let a = d
        .step(
            "list a page",
            get(format!("{cms}?labelSelector=suite%3Dsel&limit=3")),
        )
        .await;
    d.save("continue", &a, "/metadata/continue");
    d.step(
        "list the next page",
        get(format!(
            "{cms}?labelSelector=suite%3Dsel&limit=3&continue=${{continue}}"
        )),
    )
    .await;

    // Updates: resourceVersion preconditions.
    let a = d.step("get b", get(format!("{cms}/b"))).await;
    d.save("b_rv", &a, "/metadata/resourceVersion");
    d.step(
        "update with the current resourceVersion",
        put(
            format!("{cms}/b?fieldManager=conformance"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": NS, "resourceVersion": "${b_rv}", "labels": {"suite": "sel"}}, "data": {"k": "b2"}}),
        ),
    )
    .await;
    let a = d
        .step(
            "update with a stale resourceVersion: 409 Conflict",
            put(
                format!("{cms}/b?fieldManager=conformance"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": NS, "resourceVersion": "${b_rv}"}, "data": {"k": "b3"}}),
            ),
        )
        .await;
    d.expect_real("stale update", a.real().status == 409, "409");
    d.step(
        "update without a resourceVersion (built-in kind: unconditional)",
        put(
            format!("{cms}/b?fieldManager=conformance"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": NS, "labels": {"suite": "sel"}}, "data": {"k": "b4"}}),
        ),
    )
    .await;
    d.step(
        "update a missing object: 404",
        put(
            format!("{cms}/zz?fieldManager=conformance"),
            cm("zz", json!({}), json!({})),
        ),
    )
    .await;
    d.step(
        "update with a name that is not the URL's: 400",
        put(
            format!("{cms}/b?fieldManager=conformance"),
            cm("other", json!({}), json!({})),
        ),
    )
    .await;
    d.step(
        "create with a namespace that is not the URL's: 400",
        post(
            "/api/v1/namespaces/default/configmaps?fieldManager=conformance",
            cm("y", json!({}), json!({})),
        ),
    )
    .await;
    d.step(
        "create without a name: 422",
        post(
            format!("{cms}?fieldManager=conformance"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
        ),
    )
    .await;
    let a = d.step("delete", delete(format!("{cms}/a"))).await;
    d.expect_real("delete", a.real().status == 200, "200");
    let a = d
        .step("get after delete: 404", get(format!("{cms}/a")))
        .await;
    d.expect_real("get after delete", a.real().status == 404, "404");
    d.step("delete again: 404", delete(format!("{cms}/a")))
        .await;
    d.step(
        "list after delete",
        get(format!("{cms}?labelSelector=suite%3Dsel")),
    )
    .await;
    let secrets = format!("/api/v1/namespaces/{NS}/secrets");
    d.step(
        "create a Secret with stringData",
        post(
            format!("{secrets}?fieldManager=conformance"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "stringData": {"kubeconfig": "apiVersion: v1"}, "data": {"other": "eA=="}}),
        ),
    )
    .await;
    d.step("get the Secret", get(format!("{secrets}/s"))).await;
    d.step(
        "list Secrets by type",
        get(format!("{secrets}?fieldSelector={}", enc("type=Opaque"))),
    )
    .await;
    // Leader election as the controller does it: create a Lease, then replace it naming its version.
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let a = d
        .step(
            "create a Lease",
            post(
                format!("{leases}?fieldManager=conformance"),
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
                       "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                                "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}}),
            ),
        )
        .await;
    d.save("lease_rv", &a, "/metadata/resourceVersion");
    d.step(
        "renew it with its resourceVersion",
        put(
            format!("{leases}/leader?fieldManager=conformance"),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "leader", "resourceVersion": "${lease_rv}"},
                   "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                            "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:05.000000Z"}}),
        ),
    )
    .await;
    d.step(
        "take it over with the old resourceVersion: 409",
        put(
            format!("{leases}/leader?fieldManager=conformance"),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "leader", "resourceVersion": "${lease_rv}"},
                   "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}}),
        ),
    )
    .await;
    d.step(
        "get an unknown resource: 404",
        get(format!("/api/v1/namespaces/{NS}/gizmos/x")),
    )
    .await;
}

async fn server_side_apply(d: &mut Diff) {
    let path = format!("/api/v1/namespaces/{NS}/configmaps/ssa");
    let obj = |labels: Value, data: Value| {
        let mut o = cm("ssa", labels, data);
        if o["metadata"]["labels"] == json!({}) {
            o["metadata"].as_object_mut().unwrap().remove("labels");
        }
        o
    };
    d.step(
        "apply by alpha creates",
        apply(
            &path,
            "alpha",
            false,
            obj(json!({"x": "1"}), json!({"a": "1", "shared": "s"})),
        ),
    )
    .await;
    d.step(
        "apply by beta with the same value of a field alpha owns: shared",
        apply(
            &path,
            "beta",
            false,
            obj(json!({}), json!({"shared": "s", "b": "2"})),
        ),
    )
    .await;
    let a = d
        .step(
            "apply by beta changing alpha's field: 409 conflict",
            apply(
                &path,
                "beta",
                false,
                obj(json!({}), json!({"shared": "s", "b": "2", "a": "9"})),
            ),
        )
        .await;
    d.expect_real("conflict", a.real().status == 409, "409");
    d.step(
        "apply by beta changing two of alpha's fields: 409, two conflicts",
        apply(
            &path,
            "beta",
            false,
            obj(
                json!({"x": "2"}),
                json!({"shared": "s", "b": "2", "a": "9"}),
            ),
        ),
    )
    .await;
    d.step(
        "the same with force: beta takes them",
        apply(
            &path,
            "beta",
            true,
            obj(json!({}), json!({"shared": "s", "b": "2", "a": "9"})),
        ),
    )
    .await;
    d.step(
        "alpha applies without the field it lost and without its label",
        apply(
            &path,
            "alpha",
            false,
            obj(json!({}), json!({"shared": "s"})),
        ),
    )
    .await;
    d.step(
        "beta stops applying a (removed) and shared (alpha still owns it: kept)",
        apply(&path, "beta", false, obj(json!({}), json!({"b": "2"}))),
    )
    .await;
    d.step(
        "alpha applies the same again: no change",
        apply(
            &path,
            "alpha",
            false,
            obj(json!({}), json!({"shared": "s"})),
        ),
    )
    .await;
    d.step(
        "alpha applies an empty labels map: it owns the map",
        apply(
            &path,
            "alpha",
            false,
            cm("ssa", json!({}), json!({"shared": "s"})),
        ),
    )
    .await;
    d.step(
        "beta applies an empty labels map too: 409, it would add the map alpha owns",
        apply(
            &path,
            "beta",
            false,
            cm("ssa", json!({}), json!({"b": "2"})),
        ),
    )
    .await;
    d.step(
        "a merge patch by gamma (operation Update)",
        merge_patch(
            format!("{path}?fieldManager=gamma"),
            json!({"data": {"g": "1"}}),
        ),
    )
    .await;
    d.step(
        "alpha applies gamma's field: 409 conflict with an Update manager",
        apply(
            &path,
            "alpha",
            false,
            obj(json!({}), json!({"shared": "s", "g": "2"})),
        ),
    )
    .await;
    let a = d
        .step(
            "apply without a field manager: 422",
            with_body(
                "PATCH",
                "application/apply-patch+yaml",
                path.clone(),
                obj(json!({}), json!({})),
            ),
        )
        .await;
    d.expect_real("no field manager", a.real().status == 422, "422");
    let a = d
        .step(
            "apply with a name that is not the URL's: 400",
            apply(&path, "alpha", false, cm("other", json!({}), json!({}))),
        )
        .await;
    d.expect_real("name mismatch", a.real().status == 400, "400");
    d.step("get", get(path.clone())).await;
}

async fn custom_resources(d: &mut Diff) {
    let ws = format!("/apis/conformance.ksit.io/v1/namespaces/{NS}/widgets");
    let a = d
        .step(
            "create: defaults filled",
            post(
                format!("{ws}?fieldManager=conformance"),
                widget("w1", json!({"size": 3})),
            ),
        )
        .await;
    d.expect_real(
        "defaults",
        a.raw[1]["spec"]["mode"] == "safe" && a.raw[1]["spec"]["limits"]["cpu"] == "1",
        "spec.mode and spec.limits.cpu defaulted",
    );
    d.step(
        "create with unknown fields: pruned, with warnings",
        post(format!("{ws}?fieldManager=conformance"), {
            let mut w = widget("w2", json!({"size": 2, "bogus": 1, "limits": {"gpu": "2"}, "extra": {"any": {"thing": [1]}}}));
            w["top"] = json!("level");
            w
        }),
    )
    .await;
    d.step(
        "create with unknown fields under fieldValidation=Strict: 400",
        post(
            format!("{ws}?fieldManager=conformance&fieldValidation=Strict"),
            widget("w3", json!({"size": 2, "bogus": 1})),
        ),
    )
    .await;
    d.step(
        "create with fieldValidation=Warn (the default, said)",
        post(
            format!("{ws}?fieldManager=conformance&fieldValidation=Warn"),
            widget("w3", json!({"size": 2, "bogus": 1})),
        ),
    )
    .await;
    d.step(
        "create with fieldValidation=Ignore: pruned silently",
        post(
            format!("{ws}?fieldManager=conformance&fieldValidation=Ignore"),
            widget("w4", json!({"size": 2, "mode": "fast", "bogus": 1})),
        ),
    )
    .await;
    d.step(
        "create it again: 409 AlreadyExists",
        post(
            format!("{ws}?fieldManager=conformance"),
            widget("w1", json!({"size": 3})),
        ),
    )
    .await;
    for (what, spec) in [
        ("above maximum", json!({"size": 20})),
        ("below minimum", json!({"size": 0})),
        ("wrong type", json!({"size": "three"})),
        ("not in enum", json!({"size": 1, "mode": "slow"})),
        ("too long", json!({"size": 1, "label": "abcdefghij"})),
        ("pattern", json!({"size": 1, "label": "ABC"})),
        ("required missing", json!({"mode": "fast"})),
        (
            "list item without its key",
            json!({"size": 1, "ports": [{"port": 80}]}),
        ),
        ("object expected", json!({"size": 1, "limits": "big"})),
        ("array expected", json!({"size": 1, "tags": "a"})),
    ] {
        let a = d
            .step(
                &format!("invalid ({what}): 422"),
                post(
                    format!("{ws}?fieldManager=conformance&dryRun=All"),
                    widget("bad", spec),
                ),
            )
            .await;
        d.expect_real(what, a.real().status == 422, "422");
    }
    d.step(
        "invalid in two ways at once: 422 with both causes",
        post(
            format!("{ws}?fieldManager=conformance&dryRun=All"),
            widget("bad", json!({"size": 20, "mode": "slow"})),
        ),
    )
    .await;
    let a = d
        .differs(
            "a CEL rule (min <= max) rejects: 422",
            post(
                format!("{ws}?fieldManager=conformance&dryRun=All"),
                widget("bad", json!({"size": 1, "min": 5, "max": 1})),
            ),
            &CEL,
        )
        .await;
    d.expect_real("CEL", a.real().status == 422, "422 from the CEL rule");

    // Status subresource and generation.
    let w1 = format!("{ws}/w1");
    d.step(
        "a status write changes status only, never generation",
        merge_patch(
            format!("{w1}/status?fieldManager=status-writer"),
            json!({"spec": {"size": 9}, "status": {"phase": "Ready", "observedGeneration": 1}}),
        ),
    )
    .await;
    let a = d
        .step(
            "a main-resource write keeps status and bumps generation",
            merge_patch(
                format!("{w1}?fieldManager=conformance"),
                json!({"spec": {"size": 4}, "status": {"phase": "Lost"}}),
            ),
        )
        .await;
    d.expect_real(
        "generation",
        a.raw[1]["metadata"]["generation"] == 2 && a.raw[1]["status"]["phase"] == "Ready",
        "generation 2, status kept",
    );
    d.step(
        "a metadata-only write keeps generation",
        merge_patch(
            format!("{w1}?fieldManager=conformance"),
            json!({"metadata": {"labels": {"l": "1"}}}),
        ),
    )
    .await;
    d.step(
        "apply to /status by its own manager",
        apply(&format!("{w1}/status"), "status-applier", true, json!({"apiVersion": "conformance.ksit.io/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": NS}, "status": {"phase": "Applied"}})),
    )
    .await;
    let a = d.step("get", get(w1.clone())).await;
    d.save("w1_rv", &a, "/metadata/resourceVersion");
    d.step(
        "update without resourceVersion (custom resource): 422",
        put(
            format!("{w1}?fieldManager=conformance"),
            widget("w1", json!({"size": 5})),
        ),
    )
    .await;
    d.step(
        "update with resourceVersion: defaults filled again",
        put(format!("{w1}?fieldManager=conformance"), {
            let mut w = widget("w1", json!({"size": 5, "label": "abc"}));
            w["metadata"]["resourceVersion"] = json!("${w1_rv}");
            w
        }),
    )
    .await;
    d.differs(
        "a CEL transition rule (label is immutable) rejects: 422",
        merge_patch(
            format!("{w1}?fieldManager=conformance&dryRun=All"),
            json!({"spec": {"label": "xyz"}}),
        ),
        &CEL,
    )
    .await;

    // Apply on a keyed list: items merge by key, each manager's own items.
    let p = format!("{ws}/ports");
    d.step(
        "apply by alpha: one port",
        apply(
            &p,
            "alpha",
            false,
            widget(
                "ports",
                json!({"size": 1, "ports": [{"name": "http", "port": 80}]}),
            ),
        ),
    )
    .await;
    d.step(
        "apply by beta: another port, merged by key",
        apply(
            &p,
            "beta",
            false,
            widget("ports", json!({"ports": [{"name": "https", "port": 443}]})),
        ),
    )
    .await;
    d.step(
        "apply by beta changing alpha's port: 409",
        apply(
            &p,
            "beta",
            false,
            widget(
                "ports",
                json!({"ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 443}]}),
            ),
        ),
    )
    .await;
    d.step(
        "alpha drops its port: removed, beta's stays",
        apply(&p, "alpha", false, widget("ports", json!({"size": 1}))),
    )
    .await;
    // A real server cannot type an apply configuration with a field its schema lacks: 500, Strict or not.
    let a = d
        .step(
            "apply with an unknown field: 500",
            apply(
                &p,
                "alpha",
                false,
                widget("ports", json!({"size": 1, "bogus": true})),
            ),
        )
        .await;
    d.expect_real("apply unknown", a.real().status == 500, "500");
    d.step(
        "apply with an unknown field under fieldValidation=Strict: 500 too",
        apply(
            &format!("{p}?fieldValidation=Strict"),
            "alpha",
            false,
            widget("ports", json!({"size": 1, "bogus": true})),
        ),
    )
    .await;
    d.step(
        "apply with a wrong type: 500",
        apply(&p, "alpha", false, widget("ports", json!({"size": "one"}))),
    )
    .await;
    d.step("list", get(ws.clone())).await;
    d.step(
        "list with a field selector on a selectable field",
        get(format!("{ws}?fieldSelector={}", enc("spec.mode=fast"))),
    )
    .await;
    d.step(
        "list with a field selector on a field that is not selectable: 400",
        get(format!("{ws}?fieldSelector={}", enc("spec.size=1"))),
    )
    .await;
    d.step(
        "list with a field selector on metadata.name",
        get(format!("{ws}?fieldSelector={}", enc("metadata.name=w1"))),
    )
    .await;
    d.step("delete a custom resource", delete(format!("{ws}/w2")))
        .await;
    d.step("get it: 404", get(format!("{ws}/w2"))).await;
    d.step("get a missing status: 404", get(format!("{ws}/zz/status")))
        .await;
}

async fn istio_virtual_service(d: &mut Diff) {
    let vss = format!("/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices");
    let vs = |name: &str, http: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name, "namespace": NS},
               "spec": {"hosts": ["reviews"], "http": http}})
    };
    let good = json!([{"match": [{"headers": {"x-ksit-destination": {"exact": "reviews|v2"}}}],
                       "route": [{"destination": {"host": "reviews", "subset": "v2"}, "weight": 100}], "timeout": "5s"},
                      {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]);
    d.step(
        "apply a VirtualService",
        apply(
            &format!("{vss}/reviews"),
            "ksit-controller",
            true,
            vs("reviews", good.clone()),
        ),
    )
    .await;
    d.step(
        "apply it again: no change",
        apply(
            &format!("{vss}/reviews"),
            "ksit-controller",
            true,
            vs("reviews", good.clone()),
        ),
    )
    .await;
    d.step(
        "a VirtualService with unknown fields: pruned, with warnings",
        post(
            format!("{vss}?fieldManager=conformance"),
            vs("pruned", json!([{"route": [{"destination": {"host": "reviews", "port": {"number": 80, "bogus": 1}}}], "retriez": 3}])),
        ),
    )
    .await;
    d.step(
        "a VirtualService with a wrong type: 422",
        post(format!("{vss}?fieldManager=conformance&dryRun=All"), {
            let mut v = vs("bad", good.clone());
            v["spec"]["hosts"] = json!("reviews");
            v
        }),
    )
    .await;
    let a = d
        .differs(
            "Istio's CEL rule on a duration rejects 0.5ms: 422",
            post(
                format!("{vss}?fieldManager=conformance&dryRun=All"),
                vs(
                    "bad",
                    json!([{"route": [{"destination": {"host": "reviews"}}], "timeout": "0.5ms"}]),
                ),
            ),
            &CEL,
        )
        .await;
    d.expect_real(
        "Istio CEL",
        a.real().status == 422,
        "422 from Istio's CEL rule",
    );
    d.step("list", get(vss.clone())).await;
}

/// ksit's TrafficPolicy and KubeStellar's BindingPolicy, written as the controller and a user write them.
async fn ksit_kinds(d: &mut Diff) {
    let tps = format!("/apis/ksit.io/v1alpha1/namespaces/{NS}/trafficpolicies");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../manifests/examples/multi-cluster-mesh/trafficpolicy.yaml"
    ))
    .expect("the example TrafficPolicy");
    let mut tp: Value = serde_yaml::from_str(&example).unwrap();
    tp["metadata"]["namespace"] = json!(NS);
    let a = d
        .step(
            "apply the example TrafficPolicy: defaults filled",
            apply(&format!("{tps}/myapp"), "conformance", true, tp),
        )
        .await;
    d.expect_real("TrafficPolicy", a.real().status == 201, "201");
    // The controller's status write: an apply to /status of apiVersion, kind and status only.
    let status = json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy", "status": {
        "observedGeneration": 1, "readyClusters": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Applied", "message": "1 of 1 clusters",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "clusters": [{"name": "cluster1", "appliedGeneration": 1}, {"name": "cluster2", "error": null}]}});
    d.step(
        "the controller applies its status",
        apply(
            &format!("{tps}/myapp/status"),
            "ksit-controller",
            true,
            status.clone(),
        ),
    )
    .await;
    d.step(
        "and again: no change",
        apply(
            &format!("{tps}/myapp/status"),
            "ksit-controller",
            true,
            status,
        ),
    )
    .await;
    d.step(
        "a TrafficPolicy without its required hosts: 422",
        post(
            format!("{tps}?fieldManager=conformance&dryRun=All"),
            json!({"apiVersion": "ksit.io/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "bad"}, "spec": {}}),
        ),
    )
    .await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../manifests/examples/multi-cluster-mesh/bindingpolicy.yaml"
    ))
    .expect("the example BindingPolicy");
    let mut bp: Value = serde_yaml::from_str(&example).unwrap();
    bp["metadata"]["namespace"] = json!("default");
    let bps = "/apis/control.kubestellar.io/v1alpha1/bindingpolicies";
    d.step(
        "create the example BindingPolicy with a namespace: cluster-scoped, it loses it",
        post(format!("{bps}?fieldManager=conformance"), bp),
    )
    .await;
    d.step(
        "list TrafficPolicies",
        get(format!(
            "/apis/ksit.io/v1alpha1/trafficpolicies?fieldSelector={}",
            enc(&format!("metadata.namespace={NS}"))
        )),
    )
    .await;
    d.step(
        "delete the BindingPolicy",
        delete(format!("{bps}/istio-mesh-binding")),
    )
    .await;
}

async fn watches(d: &mut Diff, emulator: &Emulator) {
    let cms = format!("/api/v1/namespaces/{NS}/configmaps");
    let sel = "labelSelector=suite%3Dwatch";
    let a = d
        .step(
            "create w0",
            post(
                format!("{cms}?fieldManager=conformance"),
                cm("w0", json!({"suite": "watch"}), json!({"v": "0"})),
            ),
        )
        .await;
    d.save("rv0", &a, "/metadata/resourceVersion");
    d.step(
        "update w0",
        merge_patch(
            format!("{cms}/w0?fieldManager=conformance"),
            json!({"data": {"v": "1"}}),
        ),
    )
    .await;
    d.step(
        "create w1",
        post(
            format!("{cms}?fieldManager=conformance"),
            cm("w1", json!({"suite": "watch"}), json!({})),
        ),
    )
    .await;
    d.step(
        "create one the selector leaves out",
        post(
            format!("{cms}?fieldManager=conformance"),
            cm("other", json!({"suite": "nope"}), json!({})),
        ),
    )
    .await;
    d.step("delete w1", delete(format!("{cms}/w1"))).await;
    let a = d
        .watch(
            "watch from a resourceVersion replays what came after it",
            &format!("{cms}?watch=true&{sel}&resourceVersion=${{rv0}}&timeoutSeconds=10"),
            Until::Events(3),
            Duration::from_secs(10),
        )
        .await;
    d.expect_real(
        "watch replay",
        a.raw[1].as_array().map(Vec::len) == Some(3),
        "3 events",
    );

    // A live watch: events as they happen.
    let a = d
        .step("list, for its resourceVersion", get(format!("{cms}?{sel}")))
        .await;
    d.save("list_rv", &a, "/metadata/resourceVersion");
    let mut w = d
        .open_watch(&format!(
            "{cms}?watch=true&{sel}&resourceVersion=${{list_rv}}&timeoutSeconds=10"
        ))
        .await;
    d.step(
        "update w0 while watched",
        merge_patch(
            format!("{cms}/w0?fieldManager=conformance"),
            json!({"data": {"v": "2"}}),
        ),
    )
    .await;
    d.step("delete w0 while watched", delete(format!("{cms}/w0")))
        .await;
    let a = d
        .read_watch(
            "live watch",
            &mut w,
            Until::Events(2),
            Duration::from_secs(10),
            None,
        )
        .await;
    d.expect_real(
        "live watch",
        a.raw[1].as_array().map(Vec::len) == Some(2),
        "2 events",
    );

    // Too old. A real server's watch cache of a kind begins when the kind is first served: for
    // configmaps that is etcd's first revision (a watch from resourceVersion 1 replays everything), for
    // the Widgets of this test's CRD it is after resourceVersion 1, which is then too old. The emulator
    // is told to keep a short history instead.
    emulator.set_history_limit(3);
    let a = d
        .watch(
            "watch from a resourceVersion too old: an ERROR event, 410 Expired",
            &format!(
                "/apis/conformance.ksit.io/v1/namespaces/{NS}/widgets?watch=true&resourceVersion=1&timeoutSeconds=10"
            ),
            Until::Events(1),
            Duration::from_secs(10),
        )
        .await;
    d.expect_real(
        "410",
        a.raw[1][0]["object"]["code"] == 410,
        "an ERROR event with code 410",
    );
    let a = d
        .differs(
            "a list at an exact past resourceVersion: the objects as they were",
            get(format!(
                "{cms}?{sel}&resourceVersion=${{rv0}}&resourceVersionMatch=Exact"
            )),
            &PAST_LISTS,
        )
        .await;
    d.expect_real(
        "past list",
        a.raw[1]["items"][0]["data"]["v"] == "0",
        "w0 as first created",
    );

    // Bookmarks: the real server sends one shortly before the watch's timeout.
    let a = d
        .step(
            "create w2",
            post(
                format!("{cms}?fieldManager=conformance"),
                cm("w2", json!({"suite": "watch"}), json!({})),
            ),
        )
        .await;
    d.save("rv2", &a, "/metadata/resourceVersion");
    // A bookmark carries a newer resourceVersion than the watch has seen: a change to a ConfigMap the
    // selector leaves out gives it one. The real server sends it 2 s before the watch's timeout, the
    // emulator every 500 ms (set above).
    let mut w = d
        .open_watch(
            &format!("{cms}?watch=true&{sel}&resourceVersion=${{rv2}}&allowWatchBookmarks=true&timeoutSeconds=4"),
        )
        .await;
    d.step(
        "change one the selector leaves out",
        merge_patch(
            format!("{cms}/other?fieldManager=conformance"),
            json!({"data": {"x": "1"}}),
        ),
    )
    .await;
    let a = d
        .read_watch(
            "a watch that allows bookmarks gets one",
            &mut w,
            Until::Type("BOOKMARK"),
            Duration::from_secs(6),
            None,
        )
        .await;
    d.expect_real("bookmark", a.raw[1][0]["type"] == "BOOKMARK", "a BOOKMARK");
    let a = d
        .watch(
            "sendInitialEvents: the objects, then a bookmark that ends them",
            &format!(
                "{cms}?watch=true&{sel}&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=10"
            ),
            Until::Type("BOOKMARK"),
            Duration::from_secs(10),
        )
        .await;
    d.expect_real(
        "initial events",
        a.raw[1].as_array().is_some_and(|e| e.len() == 2),
        "ADDED w2 and a BOOKMARK",
    );
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
