//! The filter's hand-written pluginConfig reader (`PluginConfig::from_json`) against serde: the same
//! verdict, the same values, the same field paths and the same messages as serde_json with the
//! serde-derived readers (`PluginConfig::from_json_serde`), on the examples, on generated specs covering
//! every field, and on broken variants of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ksit_policy::config::PluginConfig;
use ksit_policy::spec::*;
use ksit_policy::FieldMap;
use proptest::prelude::*;
use serde_json::{json, Value};

/// What a reader made of the text: the config (Debug, so -0.0 and 0.0 differ) or the first error.
fn outcome(r: Result<PluginConfig, ksit_policy::ConfigError>) -> Result<String, (String, String)> {
    match r {
        Ok(c) => Ok(format!("{c:?}")),
        Err(e) => {
            assert_eq!(e.errors.len(), 1, "{e:?}");
            let f = &e.errors[0];
            Err((
                f.path.clone(),
                ksit_policy::config::comparable_message(&f.message),
            ))
        }
    }
}

/// The hand reader agrees with serde on `text`; returns whether it was accepted.
fn agree(text: &[u8]) -> bool {
    let ours = outcome(PluginConfig::from_json(text));
    let theirs = outcome(PluginConfig::from_json_serde(text));
    assert_eq!(
        ours,
        theirs,
        "on {:?}",
        String::from_utf8_lossy(text)
            .chars()
            .take(3000)
            .collect::<String>()
    );
    ours.is_ok()
}

/// Also the path serde_path_to_error reports for a spec (the controller's and the old tests' reference).
fn path_to_error(text: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, TrafficPolicySpec>(&mut de) {
        Ok(_) => None,
        Err(e) => Some(e.path().to_string()),
    }
}

fn spec_error_path(text: &[u8]) -> Option<String> {
    let mut t = b"{\"policies\":[{\"name\":\"p\",\"spec\":".to_vec();
    t.extend_from_slice(text);
    t.extend_from_slice(b"}]}");
    match PluginConfig::from_json(&t) {
        Ok(_) => None,
        Err(e) => Some(e.errors[0].path.clone()),
    }
}

fn example_specs() -> Vec<Value> {
    fn walk(dir: &std::path::Path, out: &mut Vec<Value>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let text = std::fs::read_to_string(&p).unwrap();
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
                        continue;
                    };
                    if v["kind"] == "TrafficPolicy" {
                        out.push(v["spec"].clone());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    walk(&root, &mut out);
    assert!(!out.is_empty());
    out
}

/// A spec with every field set, from the example.
fn full_spec() -> Value {
    let mut spec = example_specs().remove(0);
    spec["targetRefs"] = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": "ns"}]);
    spec["failStrategy"] = json!("FAIL_OPEN");
    spec["maxActiveFaults"] = json!(10);
    spec["overrides"] = json!([{"clusters": ["c1"], "maxActiveFaults": 3, "http": [{"name": "api",
        "match": [{"uri": {"exact": "/x"}}], "route": [{"destination": {"host": "a", "subset": "v2"}}],
        "canary": {"allowedOverrides": ["a|v2"]}, "fault": {}}]}]);
    let rule = &mut spec["http"][0];
    rule["timeout"] = json!("1s");
    rule["retries"] = json!({"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx",
        "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false, "backoff": "25ms"});
    rule["rewrite"] = json!({"uri": "/v2", "authority": "b",
        "uriRegexRewrite": {"match": "^/a(.*)", "rewrite": "/b\\1"}});
    rule["redirect"] = json!({"uri": "/r", "authority": "a", "port": 8443, "derivePort": "FROM_REQUEST_PORT",
        "scheme": "https", "redirectCode": 302, "prefixRewrite": "/p"});
    rule["directResponse"] = json!({"status": 503, "body": {"string": "s", "bytes": "YQ=="}});
    rule["delegate"] = json!({"name": "d", "namespace": "n"});
    rule["mirror"] = json!({"host": "m", "subset": "v1", "port": {"number": 80}});
    rule["mirrors"] = json!([{"destination": {"host": "m2"}, "percentage": {"value": 5}}]);
    rule["mirrorPercentage"] = json!({"value": 10.5});
    rule["mirrorPercent"] = json!(10);
    rule["mirror_percent"] = json!(10);
    rule["corsPolicy"] = json!({"allowOrigins": [{"exact": "https://a"}], "allowOrigin": ["https://b"],
        "allowMethods": ["GET"], "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"], "maxAge": "24h",
        "allowCredentials": true, "unmatchedPreflights": "IGNORE"});
    let ops = json!({"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]});
    rule["headers"] = json!({"request": ops, "response": ops});
    rule["route"][0]["headers"] = json!({"request": ops});
    rule["canary"]["allowedOverrides"] = json!(["api-service-v2"]);
    rule["fault"]["delay"]["exponentialDelay"] = json!("1s");
    rule["fault"]["delay"]["percent"] = json!(5);
    rule["fault"]["abort"]["grpcStatus"] = json!("UNAVAILABLE");
    rule["fault"]["abort"]["http2Error"] = json!("x");
    rule["fault"]["abort"]["percent"] = json!(5);
    rule["fault"]["when"] =
        json!({"headers": {"x-a": {"prefix": "b"}}, "destinations": ["d"], "clusters": ["c"]});
    rule["fault"]["stickyBy"] = json!({"cookie": "u"});
    rule["canary"]["stickyBy"]["queryParam"] = json!("q");
    rule["match"][0] = json!({"name": "m", "uri": {"prefix": "/api"}, "scheme": {"exact": "http"},
        "method": {"exact": "GET"}, "authority": {"regex": "a.*"}, "headers": {"x-a": {"exact": "1"}, "x-b": {}},
        "withoutHeaders": {"x-c": {"prefix": "z"}}, "queryParams": {"q": {"regex": "[0-9]+"}}, "ignoreUriCase": true,
        "port": 80, "sourceLabels": {"app": "a"}, "gateways": ["g"], "sourceNamespace": "ns", "statPrefix": "sp"});
    spec
}

#[test]
fn examples_read_the_same() {
    for spec in example_specs() {
        for text in [
            serde_json::to_string(&spec).unwrap(),
            serde_json::to_string_pretty(&spec).unwrap(),
        ] {
            assert!(agree(text.as_bytes()));
            let mut with_cluster = spec.clone();
            with_cluster["cluster"] = json!("c1");
            assert!(agree(with_cluster.to_string().as_bytes()));
            let list = json!({"cluster": "c1", "policies": [{"name": "a", "spec": spec}, {"name": "b", "spec": spec}]});
            assert!(agree(list.to_string().as_bytes()));
            // As the controller renders them.
            let mut rendered = with_cluster.clone();
            rendered["headerForStable"] = json!(false);
            assert!(agree(rendered.to_string().as_bytes()));
            let mut list = list.clone();
            list["headerForStable"] = json!(false);
            assert!(agree(list.to_string().as_bytes()));
            // And against the typed value serde makes of the spec.
            let ours = PluginConfig::from_json(text.as_bytes()).unwrap();
            let theirs: TrafficPolicySpec = serde_json::from_str(&text).unwrap();
            assert_eq!(ours.policies[0].spec, theirs);
        }
    }
    assert!(agree(full_spec().to_string().as_bytes()));
}

/// Every JSON pointer of `v`, with whether it is an object.
fn pointers(v: &Value, at: String, out: &mut Vec<(String, bool)>) {
    match v {
        Value::Object(m) => {
            out.push((at.clone(), true));
            for (k, x) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(l) => {
            out.push((at.clone(), false));
            for (i, x) in l.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push((at, false)),
    }
}

/// Every value of a full spec replaced by values of every JSON type (and out-of-range numbers), and an
/// unknown key added to every object: the same verdict, path and message.
#[test]
fn every_field_with_every_kind_of_value() {
    let spec = full_spec();
    let mut ptrs = Vec::new();
    pointers(&spec, String::new(), &mut ptrs);
    assert!(ptrs.len() > 100, "{}", ptrs.len());
    let raw_variants = [
        "\"s\"",
        "\"\"",
        "-1",
        "0",
        "1.5",
        "-0",
        "1e2",
        "2147483648",
        "-2147483649",
        "4294967296",
        "18446744073709551616",
        "1e400",
        "-1e400",
        "1e-400",
        "true",
        "false",
        "[]",
        "{}",
        "null",
        "[1]",
        "[\"a\"]",
        "{\"a\":1}",
        "[null]",
        "[[]]",
        "[{}]",
        "[\"h\", null, {\"number\": 1}]",
        "[\"FAIL_OPEN\"]",
        "\"FAIL_OPEN\"",
        "\"fail_open\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\ud83d\\ude00\"",
        "\"a\\u0000b\"",
        "[\"x\", \"y\", \"z\", \"w\", 1, 2, 3, 4, 5, 6]",
    ];
    let mut compared = 0;
    for (ptr, is_object) in &ptrs {
        for raw in raw_variants {
            let mut c = spec.clone();
            if ptr.is_empty() {
                continue;
            }
            *c.pointer_mut(ptr).unwrap() = json!("\u{1}MARK\u{1}");
            let text = c.to_string().replace("\"\\u0001MARK\\u0001\"", raw);
            agree(text.as_bytes());
            compared += 1;
        }
        if *is_object {
            for key in ["zzUnknown", "Hosts", "match_labels", ""] {
                let mut c = spec.clone();
                c.pointer_mut(ptr)
                    .and_then(Value::as_object_mut)
                    .unwrap()
                    .insert(key.into(), json!(1));
                let text = c.to_string();
                agree(text.as_bytes());
                if !ptr.is_empty() || key != "zzUnknown" {
                    continue;
                }
            }
            // Each member of the object removed in turn (missing required fields).
            let keys: Vec<String> = spec
                .pointer(ptr)
                .and_then(Value::as_object)
                .unwrap()
                .keys()
                .cloned()
                .collect();
            for k in keys {
                let mut c = spec.clone();
                c.pointer_mut(ptr)
                    .and_then(Value::as_object_mut)
                    .unwrap()
                    .remove(&k);
                agree(c.to_string().as_bytes());
                compared += 1;
            }
        }
    }
    assert!(compared > 3000, "{compared}");
}

/// The spec's paths are also those serde_path_to_error reports (type errors, unknown and missing fields).
#[test]
fn paths_are_those_of_serde_path_to_error() {
    let spec = full_spec();
    let mut ptrs = Vec::new();
    pointers(&spec, String::new(), &mut ptrs);
    let mut compared = 0;
    for (ptr, is_object) in &ptrs {
        if ptr.is_empty() || ptr.ends_with("failStrategy") {
            continue;
        }
        for x in [
            json!("s"),
            json!(-1),
            json!(true),
            json!([]),
            json!({}),
            json!(null),
        ] {
            let mut c = spec.clone();
            *c.pointer_mut(ptr).unwrap() = x;
            let text = c.to_string();
            let theirs = path_to_error(text.as_bytes());
            let ours = spec_error_path(text.as_bytes());
            if let Some(p) = theirs {
                let expected = if p == "." {
                    "policies[0].spec".to_string()
                } else {
                    format!("policies[0].spec.{p}")
                };
                assert_eq!(ours.as_deref(), Some(expected.as_str()), "{text}");
                compared += 1;
            }
        }
        if *is_object {
            let mut c = spec.clone();
            c.pointer_mut(ptr)
                .and_then(Value::as_object_mut)
                .unwrap()
                .insert("zz".into(), json!(1));
            let text = c.to_string();
            let p = path_to_error(text.as_bytes()).unwrap();
            assert_eq!(
                spec_error_path(text.as_bytes()).unwrap(),
                format!("policies[0].spec.{p}"),
                "{text}"
            );
            compared += 1;
        }
    }
    assert!(compared > 300, "{compared}");
}

/// Writes `v` as JSON text, repeating the members of object number `dup` (in document order): a duplicate
/// key, which serde's struct readers reject and its map readers take the last of.
fn with_duplicate(v: &Value, dup: usize, seen: &mut usize, out: &mut String) {
    match v {
        Value::Object(m) => {
            let this = *seen;
            *seen += 1;
            out.push('{');
            let mut first = true;
            let rounds = if this == dup { 2 } else { 1 };
            for round in 0..rounds {
                for (k, x) in m {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    if round == 1 {
                        // The second copy with another value, so "last wins" is visible.
                        out.push_str(&match x {
                            Value::String(_) => json!("other").to_string(),
                            _ => x.to_string(),
                        });
                    } else {
                        with_duplicate(x, dup, seen, out);
                    }
                }
            }
            out.push('}');
        }
        Value::Array(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                with_duplicate(x, dup, seen, out);
            }
            out.push(']');
        }
        _ => out.push_str(&v.to_string()),
    }
}

#[test]
fn duplicate_keys_at_every_level() {
    let spec = full_spec();
    let mut compared = 0;
    let mut rejected = 0;
    for form in [json!(null), json!("list")] {
        for dup in 0.. {
            let v = if form.is_null() {
                spec.clone()
            } else {
                json!({"cluster": "c", "policies": [{"name": "a", "spec": spec}]})
            };
            let mut seen = 0;
            let mut text = String::new();
            with_duplicate(&v, dup, &mut seen, &mut text);
            if dup >= seen {
                break;
            }
            if !agree(text.as_bytes()) {
                rejected += 1;
                let e = PluginConfig::from_json(text.as_bytes()).unwrap_err();
                assert!(e.errors[0].message.starts_with("duplicate field `"), "{e}");
            }
            compared += 1;
        }
    }
    // Map-valued fields (headers, labels) take the last value; every struct rejects the repeat.
    assert!(compared > 50 && rejected > 40, "{compared} {rejected}");
    assert!(agree(
        br#"{"hosts":["h"],"selector":{"matchLabels":{"a":"1","a":"2"}}}"#
    ));
    let e = PluginConfig::from_json(br#"{"hosts":["h"],"http":[{"name":"a","name":"b"}]}"#)
        .unwrap_err();
    assert_eq!(e.to_string(), "spec.http[0].name: duplicate field `name`");
    // Top-level `cluster` and `policies`: the first one counts, as before.
    assert!(agree(br#"{"cluster":"a","cluster":[[[[1]]]],"hosts":[]}"#));
    assert!(agree(br#"{"policies":[],"policies":{"x":[[[[[[[]]]]]]]}}"#));
}

#[test]
fn broken_text() {
    let spec = full_spec();
    let base = spec.to_string();
    let pretty = serde_json::to_string_pretty(&spec).unwrap();
    let list = json!({"cluster": "c", "policies": [{"name": "a", "spec": spec}]}).to_string();
    let inserts: &[&[u8]] = &[
        b"\"",
        b"\\",
        b",",
        b":",
        b"[",
        b"]",
        b"{",
        b"}",
        b"0",
        b"-",
        b".",
        b"e",
        b" ",
        b"\n",
        b"\xff",
        b"\x00",
        b"\x01",
        b"n",
        b"\\u",
        b"\\ud800",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"1e999",
        b"/",
    ];
    let mut n = 0;
    // Every other position of the compact text, every seventh of the others (each reader runs on ~50,000
    // variants; a debug build takes a few seconds).
    for (text, step) in [(&base, 2), (&pretty, 7), (&list, 7)] {
        let t = text.as_bytes();
        for i in (0..=t.len()).step_by(step) {
            // Truncated, a byte removed, something inserted.
            agree(&t[..i]);
            if i < t.len() {
                agree(&[&t[..i], &t[i + 1..]].concat());
            }
            for ins in inserts {
                agree(&[&t[..i], ins, &t[i..]].concat());
                n += 1;
            }
        }
        // Trailing garbage.
        for tail in [
            &b" x"[..],
            b"}",
            b"]",
            b",",
            b" {}",
            b"\x00",
            b"\xff",
            b"  \n\t",
        ] {
            agree(&[t, tail].concat());
        }
    }
    assert!(n > 10_000, "{n}");
}

#[test]
fn odd_inputs() {
    let deep_array = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        b"1".to_vec(),
        b"{}".to_vec(),
        b"{\"hosts\":[]}".to_vec(),
        b"\xef\xbb\xbf{\"hosts\":[]}".to_vec(),
        b"{\"hosts\":[]}\xff".to_vec(),
        b"{\"hosts\":[\"\xff\"]}".to_vec(),
        b"{\"hosts\":[\"a\xc3\"]}".to_vec(),
        b"{\"hosts\":[\"\xed\xa0\x80\"]}".to_vec(),
        b"{\"ho\xffsts\":[]}".to_vec(),
        b"{\"hosts\":[],\"selector\":{\"matchLabels\":{\"\xff\":\"a\"}}}".to_vec(),
        b"{\"hosts\":[],\"selector\":{\"matchLabels\":{\"\\ud800\":\"a\"}}}".to_vec(),
        b"{\"h\\u006fsts\":[]}".to_vec(),
        b"{\"clu\\u0073ter\":\"c\",\"hosts\":[]}".to_vec(),
        b"{\"hosts\":[\"\\x\"]}".to_vec(),
        b"{\"hosts\":[\"\\ud800\"]}".to_vec(),
        b"{\"hosts\":[\"\\ud800\\ud800\"]}".to_vec(),
        b"{\"hosts\":[\"\\ud800x\"]}".to_vec(),
        b"{\"hosts\":[\"\\udfff\"]}".to_vec(),
        b"{\"hosts\":[\"\\uD83D\\uDE00\\n\\t\\\"\\\\\\/\\b\\f\\r\"]}".to_vec(),
        b"{\"hosts\":[\"a\tb\"]}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":4294967295}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":4294967296}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":-0}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":1.0}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":1e0}".to_vec(),
        b"{\"hosts\":[],\"maxActiveFaults\":-9223372036854775809}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":{\"value\":1e309}}}}]}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":{\"value\":-0}}}}]}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":{\"value\":12345678901234567890123}}}}]}"
            .to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":[33.3]}}}]}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":[]}}}]}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":[1,2]}}}]}".to_vec(),
        b"{\"hosts\":[],\"http\":[{\"fault\":{\"delay\":{\"percentage\":[1,[2]]}}}]}".to_vec(),
        b"[[], [], [\"h\"], [], \"FAIL_OPEN\", [], 7, []]".to_vec(),
        b"{\"policies\":[[\"a\",[null,[],[\"h\"]]]]}".to_vec(),
        b"{\"policies\":[[\"a\"]]}".to_vec(),
        b"{\"policies\":[{\"name\":\"a\",\"spec\":{\"hosts\":[]}},{\"name\":\"a\",\"spec\":{\"hosts\":[]}}]}".to_vec(),
        b"{\"policies\":null}".to_vec(),
        b"{\"policies\":[],\"cluster\":\"\"}".to_vec(),
        b"{\"policies\":[],\"cluster\":null}".to_vec(),
        b"{\"policies\":[],\"cluster\":\"\\ud800\"}".to_vec(),
        b"{\"cluster\":\"c\"}".to_vec(),
        b"{\"headerForStable\":false,\"hosts\":[]}".to_vec(),
        b"{\"headerForStable\":null,\"hosts\":[]}".to_vec(),
        b"{\"headerForStable\":\"no\",\"hosts\":[]}".to_vec(),
        b"{\"headerForStable\":0,\"policies\":[]}".to_vec(),
        b"{\"headerForStable\":true,\"headerForStable\":[[[1]]],\"policies\":[]}".to_vec(),
        format!("{{\"hosts\":{}}}", deep_array(100_000)).into_bytes(),
        format!("{{\"hosts\":[],\"zz\":{}}}", deep_object(10_000)).into_bytes(),
        format!("{{\"cluster\":\"c\",\"cluster\":{},\"hosts\":[]}}", deep_array(100_000)).into_bytes(),
        format!("{{\"hosts\":[],\"http\":[{}]}}", deep_array(129)).into_bytes(),
        deep_array(100_000).into_bytes(),
        deep_array(100_000).as_bytes()[..150_000].to_vec(),
    ];
    for c in &cases {
        agree(c);
    }
}

// ---- generated specs ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9./|*-]{0,12}",
        1 => any::<String>(),
        1 => Just("\"\\\n\t\u{0}\u{1f}\u{7f}é😀\u{2028}".to_string()),
    ]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.6, s)
}

fn list<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(s, 0..3)
}

fn field_map<V: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = V> + 'static,
) -> impl Strategy<Value = FieldMap<V>> {
    prop::collection::vec((text(), s), 0..3).prop_map(|kv| kv.into_iter().collect())
}

fn number_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..=10_000).prop_map(|n| f64::from(n) / 100.0),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(0.1 + 0.2),
        Just(-0.0),
        Just(1e300),
        Just(5e-324),
    ]
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    (opt(text()), opt(text()), opt(text())).prop_map(|(exact, prefix, regex)| StringMatch {
        exact,
        prefix,
        regex,
    })
}

fn sticky_by() -> impl Strategy<Value = StickyBy> {
    (opt(text()), opt(text()), opt(text())).prop_map(|(header, cookie, query_param)| StickyBy {
        header,
        cookie,
        query_param,
    })
}

fn match_request() -> BoxedStrategy<HttpMatchRequest> {
    let proxy = (
        opt(any::<u32>()),
        field_map(text()),
        list(text()),
        opt(text()),
        opt(text()),
    );
    (
        (
            opt(text()),
            opt(string_match()),
            opt(string_match()),
            opt(string_match()),
            opt(string_match()),
        ),
        field_map(string_match()),
        field_map(string_match()),
        field_map(string_match()),
        any::<bool>(),
        proxy,
    )
        .prop_map(
            |(
                (name, uri, scheme, method, authority),
                headers,
                without_headers,
                query_params,
                ignore_uri_case,
                (port, source_labels, gateways, source_namespace, stat_prefix),
            )| {
                HttpMatchRequest {
                    name,
                    uri,
                    scheme,
                    method,
                    authority,
                    headers,
                    without_headers,
                    query_params,
                    ignore_uri_case,
                    port,
                    source_labels,
                    gateways,
                    source_namespace,
                    stat_prefix,
                }
            },
        )
        .boxed()
}

fn header_operations() -> impl Strategy<Value = HeaderOperations> {
    (field_map(text()), field_map(text()), list(text()))
        .prop_map(|(set, add, remove)| HeaderOperations { set, add, remove })
}

fn headers() -> BoxedStrategy<Headers> {
    (opt(header_operations()), opt(header_operations()))
        .prop_map(|(request, response)| Headers { request, response })
        .boxed()
}

fn destination() -> impl Strategy<Value = Destination> {
    (text(), opt(text()), opt(any::<u32>())).prop_map(|(host, subset, port)| Destination {
        host,
        subset,
        port: port.map(|number| PortSelector { number }),
    })
}

fn route_destination() -> BoxedStrategy<HttpRouteDestination> {
    (destination(), opt(any::<i32>()), opt(headers()))
        .prop_map(|(destination, weight, headers)| HttpRouteDestination {
            destination,
            weight,
            headers,
        })
        .boxed()
}

fn canary() -> BoxedStrategy<Canary> {
    (opt(sticky_by()), opt(text()), list(text()))
        .prop_map(|(sticky_by, override_header, allowed_overrides)| Canary {
            sticky_by,
            override_header,
            allowed_overrides,
        })
        .boxed()
}

fn percent() -> impl Strategy<Value = Percent> {
    number_f64().prop_map(|value| Percent { value })
}

fn fault() -> BoxedStrategy<Fault> {
    let delay = (opt(text()), opt(text()), opt(percent()), opt(any::<i32>())).prop_map(
        |(fixed_delay, exponential_delay, percentage, percent)| Delay {
            fixed_delay,
            exponential_delay,
            percentage,
            percent,
        },
    );
    let abort = (
        opt(any::<i32>()),
        opt(text()),
        opt(text()),
        opt(percent()),
        opt(any::<i32>()),
    )
        .prop_map(
            |(http_status, grpc_status, http2_error, percentage, percent)| Abort {
                http_status,
                grpc_status,
                http2_error,
                percentage,
                percent,
            },
        );
    let when = (field_map(string_match()), list(text()), list(text())).prop_map(
        |(headers, destinations, clusters)| FaultScope {
            headers,
            destinations,
            clusters,
        },
    );
    (opt(delay), opt(abort), opt(when), opt(sticky_by()))
        .prop_map(|(delay, abort, when, sticky_by)| Fault {
            delay,
            abort,
            when,
            sticky_by,
        })
        .boxed()
}

fn carried() -> BoxedStrategy<HttpRule> {
    let redirect = (
        (opt(text()), opt(text()), opt(any::<u32>()), opt(text())),
        (opt(text()), opt(any::<u32>()), opt(text())),
    )
        .prop_map(
            |((uri, authority, port, derive_port), (scheme, redirect_code, prefix_rewrite))| {
                HttpRedirect {
                    uri,
                    authority,
                    port,
                    derive_port,
                    scheme,
                    redirect_code,
                    prefix_rewrite,
                }
            },
        );
    let body = (opt(text()), opt(text())).prop_map(|(string, bytes)| HttpBody { string, bytes });
    let direct =
        (any::<u32>(), opt(body)).prop_map(|(status, body)| HttpDirectResponse { status, body });
    let delegate =
        (opt(text()), opt(text())).prop_map(|(name, namespace)| Delegate { name, namespace });
    let mirror_policy =
        (destination(), opt(percent())).prop_map(|(destination, percentage)| HttpMirrorPolicy {
            destination,
            percentage,
        });
    let cors = (
        (
            list(string_match()),
            list(text()),
            list(text()),
            list(text()),
        ),
        (list(text()), opt(text()), opt(any::<bool>()), opt(text())),
    )
        .prop_map(
            |(
                (allow_origins, allow_origin, allow_methods, allow_headers),
                (expose_headers, max_age, allow_credentials, unmatched_preflights),
            )| CorsPolicy {
                allow_origins,
                allow_origin,
                allow_methods,
                allow_headers,
                expose_headers,
                max_age,
                allow_credentials,
                unmatched_preflights,
            },
        );
    (
        (opt(redirect), opt(direct), opt(delegate)),
        (
            opt(destination()),
            list(mirror_policy),
            opt(percent()),
            opt(any::<u32>()),
            opt(any::<u32>()),
        ),
        opt(cors),
        opt(headers()),
    )
        .prop_map(
            |(
                (redirect, direct_response, delegate),
                (mirror, mirrors, mirror_percentage, mirror_percent, mirror_percent_snake),
                cors_policy,
                headers,
            )| HttpRule {
                redirect,
                direct_response,
                delegate,
                mirror,
                mirrors,
                mirror_percentage,
                mirror_percent,
                mirror_percent_snake,
                cors_policy,
                headers,
                ..HttpRule::default()
            },
        )
        .boxed()
}

fn rule() -> BoxedStrategy<HttpRule> {
    let retries = (
        (opt(any::<i32>()), opt(text()), opt(text())),
        (opt(any::<bool>()), opt(any::<bool>()), opt(text())),
    )
        .prop_map(
            |(
                (attempts, per_try_timeout, retry_on),
                (retry_remote_localities, retry_ignore_previous_hosts, backoff),
            )| HttpRetry {
                attempts,
                per_try_timeout,
                retry_on,
                retry_remote_localities,
                retry_ignore_previous_hosts,
                backoff,
            },
        );
    let regex_rewrite =
        (opt(text()), opt(text())).prop_map(|(match_, rewrite)| RegexRewrite { match_, rewrite });
    let rewrite = (opt(text()), opt(text()), opt(regex_rewrite)).prop_map(
        |(uri, authority, uri_regex_rewrite)| HttpRewrite {
            uri,
            authority,
            uri_regex_rewrite,
        },
    );
    (
        opt(text()),
        list(match_request()),
        list(route_destination()),
        opt(canary()),
        opt(fault()),
        opt(text()),
        opt(retries),
        opt(rewrite),
        carried(),
    )
        .prop_map(
            |(name, matches, route, canary, fault, timeout, retries, rewrite, carried)| HttpRule {
                name,
                matches,
                route,
                canary,
                fault,
                timeout,
                retries,
                rewrite,
                ..carried
            },
        )
        .boxed()
}

fn spec() -> impl Strategy<Value = TrafficPolicySpec> {
    let target =
        (opt(text()), text(), text(), opt(text())).prop_map(|(group, kind, name, namespace)| {
            PolicyTargetReference {
                group,
                kind,
                name,
                namespace,
            }
        });
    let patch = (
        text(),
        opt(list(match_request())),
        opt(list(route_destination())),
        opt(canary()),
        opt(fault()),
    )
        .prop_map(|(name, matches, route, canary, fault)| HttpRulePatch {
            name,
            matches,
            route,
            canary,
            fault,
        });
    let over = (list(text()), list(patch), opt(any::<u32>())).prop_map(
        |(clusters, http, max_active_faults)| ClusterOverride {
            clusters,
            http,
            max_active_faults,
        },
    );
    (
        opt(field_map(text()).prop_map(|match_labels| WorkloadSelector { match_labels })),
        list(target),
        list(text()),
        list(text()),
        prop_oneof![
            Just(FailStrategy::FailClose),
            Just(FailStrategy::FailOpen),
            Just(FailStrategy::FailReload)
        ],
        list(rule()),
        opt(any::<u32>()),
        list(over),
    )
        .prop_map(
            |(
                selector,
                target_refs,
                hosts,
                gateways,
                fail_strategy,
                http,
                max_active_faults,
                overrides,
            )| {
                TrafficPolicySpec {
                    selector,
                    target_refs,
                    hosts,
                    gateways,
                    fail_strategy,
                    http,
                    max_active_faults,
                    overrides,
                }
            },
        )
}

/// A JSON value for a mutation.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-zA-Z_]{0,8}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, "a"])),
        Just(json!({"zz": 1})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Generated specs (every field, any strings and numbers) read the same, in both forms.
    #[test]
    fn generated_specs_read_the_same(s in spec(), cluster in opt(text())) {
        let text = serde_json::to_string(&s).unwrap();
        prop_assert!(agree(text.as_bytes()));
        let ours = PluginConfig::from_json(text.as_bytes()).unwrap();
        let theirs: TrafficPolicySpec = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(format!("{:?}", ours.policies[0].spec), format!("{theirs:?}"));
        let pretty = serde_json::to_string_pretty(&s).unwrap();
        prop_assert!(agree(pretty.as_bytes()));
        let list = json!({"cluster": cluster, "policies": [{"name": "a", "spec": s}, {"name": "b", "spec": s}]});
        agree(list.to_string().as_bytes());
    }

    /// One value of a generated spec replaced, or an unknown key added to one object.
    #[test]
    fn mutated_specs_agree(s in spec(), pick in any::<prop::sample::Index>(), x in junk(), add_key in any::<bool>()) {
        let mut v = serde_json::to_value(&s).unwrap();
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let (ptr, is_object) = pick.get(&ptrs).clone();
        if add_key && is_object {
            v.pointer_mut(&ptr).and_then(Value::as_object_mut).unwrap().insert("zz".into(), x);
        } else if !ptr.is_empty() {
            *v.pointer_mut(&ptr).unwrap() = x;
        }
        agree(v.to_string().as_bytes());
    }

    /// Arbitrary bytes spliced into a generated spec's text.
    #[test]
    fn spliced_bytes_agree(s in spec(), at in any::<prop::sample::Index>(), cut in 0usize..4, ins in prop::collection::vec(any::<u8>(), 0..4)) {
        let text = serde_json::to_string(&s).unwrap().into_bytes();
        let i = at.index(text.len() + 1);
        let j = (i + cut).min(text.len());
        agree(&[&text[..i], &ins[..], &text[j..]].concat());
    }

    /// Any text at all.
    #[test]
    fn any_bytes_agree(t in prop::collection::vec(prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,0123456789.-eE ntrufalsh\\".to_vec())], 0..64)) {
        agree(&t);
    }
}
