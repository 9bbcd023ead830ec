//! Validation: every problem is reported, each with the field path a user can go to.
mod common;
use common::*;
use serde_json::json;

fn with(f: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let mut s = seed_spec();
    f(&mut s);
    errors(s)
}

#[test]
fn seed_policy_is_valid() {
    assert_eq!(errors(seed_spec()), Vec::<String>::new());
}

#[test]
fn negative_weight_names_the_field() {
    let e = with(|s| s["http"][0]["route"][1]["weight"] = json!(-5));
    assert_eq!(e, vec!["spec.http[0].route[1].weight: must be >= 0"]);
}

#[test]
fn all_zero_weights_rejected() {
    let e = with(|s| {
        s["http"][0]["route"][0]["weight"] = json!(0);
        s["http"][0]["route"][1]["weight"] = json!(0);
    });
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("spec.http[0].route: weights must not all be 0"),
        "{e:?}"
    );
}

#[test]
fn type_errors_and_unknown_fields_carry_paths() {
    let e = with(|s| s["http"][0]["route"][1]["weight"] = json!("ten"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("spec.http[0].route[1].weight: invalid type: string \"ten\""),
        "{e:?}"
    );
    let e = with(|s| s["http"][1]["timeuot"] = json!("5s"));
    assert!(
        e[0].starts_with("spec.http[1]") && e[0].contains("unknown field `timeuot`"),
        "{e:?}"
    );
    let e = errors(json!({"hosts": ["a"], "upsync": []}));
    assert!(e[0].contains("unknown field `upsync`"), "{e:?}");
}

#[test]
fn many_problems_reported_at_once() {
    let e = with(|s| {
        s["http"][0]["fault"]["delay"]["fixedDelay"] = json!("5 seconds");
        s["http"][0]["fault"]["abort"]["percentage"]["value"] = json!(150);
        s["http"][1]["match"][0]["uri"] = json!({"regex": "(unclosed"});
        s["http"][1]["match"][0]["headers"] = json!({"X-User": {"exact": "a"}});
    });
    let joined = e.join("\n");
    assert!(
        joined.contains("spec.http[0].fault.delay.fixedDelay: invalid duration \"5 seconds\""),
        "{joined}"
    );
    assert!(
        joined.contains("spec.http[0].fault.abort.percentage.value: must be between 0 and 100"),
        "{joined}"
    );
    assert!(
        joined.contains("spec.http[1].match[0].uri.regex: invalid regex \"(unclosed\""),
        "{joined}"
    );
    assert!(
        joined.contains("spec.http[1].match[0].headers.X-User: header names must be lower case"),
        "{joined}"
    );
    assert_eq!(e.len(), 4, "{joined}");
}

#[test]
fn string_match_needs_exactly_one() {
    let e = with(|s| s["http"][1]["match"][0]["uri"] = json!({"prefix": "/a", "exact": "/a"}));
    assert_eq!(
        e,
        vec!["spec.http[1].match[0].uri: set exactly one of exact, prefix, regex"]
    );
    let e = with(|s| s["http"][1]["match"][0]["uri"] = json!({}));
    assert_eq!(
        e,
        vec!["spec.http[1].match[0].uri: set exactly one of exact, prefix, regex"]
    );
}

#[test]
fn hosts_and_names() {
    assert_eq!(
        with(|s| s["hosts"] = json!([])),
        vec!["spec.hosts: must list at least one host (use \"*\" for all)"]
    );
    let e = with(|s| s["hosts"] = json!(["a.example.com:80", "foo.*.com", "a.example.com:80"]));
    assert!(
        e[0].starts_with("spec.hosts[0]: \"a.example.com:80\": hosts carry no port"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("spec.hosts[1]: \"foo.*.com\": a wildcard"),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|x| x.starts_with("spec.hosts[2]: duplicate host")),
        "{e:?}"
    );
    let e = with(|s| s["http"][1]["name"] = json!("api"));
    assert_eq!(
        e,
        vec!["spec.http[1].name: duplicate rule name \"api\" (also spec.http[0])"]
    );
}

#[test]
fn faults_checked() {
    let e = with(|s| s["http"][0]["fault"]["abort"] = json!({"httpStatus": 99}));
    assert_eq!(
        e,
        vec!["spec.http[0].fault.abort.httpStatus: must be an HTTP status between 200 and 599"]
    );
    let e = with(|s| s["http"][0]["fault"]["abort"] = json!({"grpcStatus": "NOPE"}));
    assert!(
        e[0].starts_with("spec.http[0].fault.abort.grpcStatus: unknown gRPC status"),
        "{e:?}"
    );
    let e = with(|s| s["http"][0]["fault"]["delay"] = json!({"fixedDelay": "1s", "percent": 200}));
    assert_eq!(
        e,
        vec!["spec.http[0].fault.delay.percent: must be between 0 and 100"]
    );
    let e = with(|s| s["http"][0]["fault"]["when"] = json!({"destinations": ["nope"]}));
    assert!(
        e[0].starts_with("spec.http[0].fault.when.destinations[0]: \"nope\" is not a destination"),
        "{e:?}"
    );
    let e = with(|s| s["http"][0]["fault"]["delay"] = json!({"exponentialDelay": "1s"}));
    assert!(
        e[0].starts_with("spec.http[0].fault.delay.exponentialDelay: not supported"),
        "{e:?}"
    );
}

#[test]
fn canary_checked() {
    let e = with(|s| s["http"][0]["canary"]["stickyBy"] = json!({"header": "x-a", "cookie": "b"}));
    assert_eq!(
        e,
        vec!["spec.http[0].canary.stickyBy: set exactly one of header, cookie, queryParam"]
    );
    let e = with(|s| s["http"][0]["canary"]["overrideHeader"] = json!("x-ksit-destination"));
    assert!(e[0].starts_with(
        "spec.http[0].canary.overrideHeader: x-ksit-destination is written by the filter"
    ));
    let e = with(|s| s["http"][0]["canary"]["allowedOverrides"] = json!(["api-service-v3"]));
    assert!(e[0].starts_with(
        "spec.http[0].canary.allowedOverrides[0]: \"api-service-v3\" is not a destination"
    ));
}

#[test]
fn overrides_checked_at_their_own_path() {
    let e = with(|s| {
        s["overrides"] = json!([{"clusters": ["c1"], "http": [{"name": "apii", "fault": {}}]}])
    });
    assert_eq!(e, vec!["spec.overrides[0].http[0].name: no rule named \"apii\" in spec.http (named rules: api, web)"]);
    let e = with(|s| {
        s["overrides"] = json!([{"clusters": ["c1"], "http": [{"name": "api", "route": [
            {"destination": {"host": "api-service-v1"}, "weight": -1}]}]}])
    });
    assert!(
        e.contains(&"spec.overrides[0].http[0].route[0].weight: must be >= 0".to_string()),
        "{e:?}"
    );
    let e = with(|s| s["overrides"] = json!([{"clusters": [], "http": []}]));
    assert_eq!(
        e,
        vec!["spec.overrides[0].clusters: must list at least one cluster"]
    );
}

#[test]
fn plugin_config_forms() {
    let e = errors(json!("just a string"));
    assert_eq!(
        e,
        vec!["pluginConfig: must be a JSON object (a TrafficPolicy spec)"]
    );
    let e = errors(json!({"cluster": 3, "hosts": ["a"]}));
    assert_eq!(e, vec!["cluster: must be a non-empty string"]);
    let list = json!({"cluster": "c1", "policies": [
        {"name": "default/a", "spec": seed_spec()},
        {"name": "default/b", "spec": {"hosts": ["MyApp.example.com"], "http": []}},
    ]});
    let e = errors(list);
    assert_eq!(e, vec!["policies[1].spec.hosts[0]: host \"MyApp.example.com\" is already claimed by policy \"default/a\""]);
    let e = errors(
        json!({"policies": [{"name": "x", "spec": {"hosts": ["a"], "http": [{"route": []}]}}]}),
    );
    assert_eq!(
        e,
        vec!["policies[0].spec.http[0].route: must have at least one destination (or the rule needs a redirect or directResponse)"]
    );
}

#[test]
fn schema_is_generated_and_checked_in() {
    // docs/trafficpolicy.schema.json is generated from the Rust types; regenerate with KSIT_REGENERATE=1.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/trafficpolicy.schema.json"
    );
    let generated = serde_json::to_string_pretty(&ksit_policy::spec_json_schema()).unwrap() + "\n";
    if std::env::var_os("KSIT_REGENERATE").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/trafficpolicy.schema.json is stale: run `make generate`"
    );
    assert!(generated.contains("\"maxActiveFaults\"") && generated.contains("\"stickyBy\""));
}
