//! [`ReadJson`] for the schema's types: what their serde-derived `Deserialize` impls do (field names after
//! `rename_all = "camelCase"` and `rename`, `deny_unknown_fields`, `default`), written out per struct so
//! the filter links no serde_json deserializer. `tests/json_reader.rs` checks both agree on every field.

use crate::config::NamedPolicy;
use crate::json::{read_struct, JsonError, ReadJson, Reader, StructInfo};
use crate::spec::*;

/// `impl ReadJson` for a struct: `Type "serde name" { field: "jsonName" (required)?, ... }`, fields in
/// declaration order (the order serde reads the array form in and lists them in messages).
macro_rules! read_json_struct {
    ($t:ident $name:literal { $($field:ident : $json:literal $($required:ident)?),* $(,)? }) => {
        impl ReadJson for $t {
            fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
                const FIELDS: &[&str] = &[$($json),*];
                const REQUIRED: &[bool] = &[$(read_json_struct!(@req $($required)?)),*];
                const INFO: StructInfo = StructInfo {
                    name: $name,
                    fields: FIELDS,
                    required: {
                        let mut bits = 0u32;
                        let mut i = 0;
                        while i < REQUIRED.len() {
                            if REQUIRED[i] {
                                bits |= 1 << i;
                            }
                            i += 1;
                        }
                        bits
                    },
                };
                let mut out = $t::default();
                read_struct(r, &INFO, &mut |r, i| {
                    let mut k = 0usize;
                    $(
                        if i == k {
                            out.$field = ReadJson::read(r)?;
                            return Ok(());
                        }
                        k += 1;
                    )*
                    let _ = k;
                    Ok(())
                })?;
                Ok(out)
            }
        }
    };
    (@req required) => { true };
    (@req) => { false };
}

read_json_struct!(TrafficPolicySpec "TrafficPolicySpec" {
    selector: "selector",
    target_refs: "targetRefs",
    hosts: "hosts" required,
    gateways: "gateways",
    fail_strategy: "failStrategy",
    http: "http",
    max_active_faults: "maxActiveFaults",
    overrides: "overrides",
});

read_json_struct!(WorkloadSelector "WorkloadSelector" {
    match_labels: "matchLabels",
});

read_json_struct!(PolicyTargetReference "PolicyTargetReference" {
    group: "group",
    kind: "kind" required,
    name: "name" required,
    namespace: "namespace",
});

read_json_struct!(HttpRule "HttpRule" {
    name: "name",
    matches: "match",
    route: "route",
    canary: "canary",
    fault: "fault",
    timeout: "timeout",
    retries: "retries",
    rewrite: "rewrite",
});

read_json_struct!(HttpRetry "HttpRetry" {
    attempts: "attempts",
    per_try_timeout: "perTryTimeout",
    retry_on: "retryOn",
});

read_json_struct!(HttpRewrite "HttpRewrite" {
    uri: "uri",
    authority: "authority",
});

read_json_struct!(HttpMatchRequest "HttpMatchRequest" {
    name: "name",
    uri: "uri",
    scheme: "scheme",
    method: "method",
    authority: "authority",
    headers: "headers",
    without_headers: "withoutHeaders",
    query_params: "queryParams",
    ignore_uri_case: "ignoreUriCase",
});

read_json_struct!(StringMatch "StringMatch" {
    exact: "exact",
    prefix: "prefix",
    regex: "regex",
});

read_json_struct!(HttpRouteDestination "HttpRouteDestination" {
    destination: "destination" required,
    weight: "weight",
});

read_json_struct!(Destination "Destination" {
    host: "host" required,
    subset: "subset",
    port: "port",
});

read_json_struct!(PortSelector "PortSelector" {
    number: "number" required,
});

read_json_struct!(Canary "Canary" {
    sticky_by: "stickyBy",
    override_header: "overrideHeader",
    allowed_overrides: "allowedOverrides",
});

read_json_struct!(StickyBy "StickyBy" {
    header: "header",
    cookie: "cookie",
    query_param: "queryParam",
});

read_json_struct!(Fault "Fault" {
    delay: "delay",
    abort: "abort",
    when: "when",
    sticky_by: "stickyBy",
});

read_json_struct!(FaultScope "FaultScope" {
    headers: "headers",
    destinations: "destinations",
    clusters: "clusters",
});

read_json_struct!(Delay "Delay" {
    fixed_delay: "fixedDelay",
    exponential_delay: "exponentialDelay",
    percentage: "percentage",
    percent: "percent",
});

read_json_struct!(Abort "Abort" {
    http_status: "httpStatus",
    grpc_status: "grpcStatus",
    http2_error: "http2Error",
    percentage: "percentage",
    percent: "percent",
});

read_json_struct!(Percent "Percent" {
    value: "value" required,
});

read_json_struct!(ClusterOverride "ClusterOverride" {
    clusters: "clusters" required,
    http: "http",
    max_active_faults: "maxActiveFaults",
});

read_json_struct!(HttpRulePatch "HttpRulePatch" {
    name: "name" required,
    matches: "match",
    route: "route",
    canary: "canary",
    fault: "fault",
});

read_json_struct!(NamedPolicy "NamedPolicy" {
    name: "name" required,
    spec: "spec" required,
});

/// As spec.rs reads it: a string naming a variant.
impl ReadJson for FailStrategy {
    fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
        const EXPECTED: &str = "FAIL_CLOSE or FAIL_OPEN";
        if matches!(r.ws(), Some(c) if c != b'"') {
            return Err(r.invalid_type(EXPECTED));
        }
        let at = r.pos();
        match String::read(r)?.as_str() {
            "FAIL_CLOSE" => Ok(FailStrategy::FailClose),
            "FAIL_OPEN" => Ok(FailStrategy::FailOpen),
            other => Err(JsonError {
                at,
                message: format!("unknown variant `{other}`, expected `FAIL_CLOSE` or `FAIL_OPEN`"),
            }),
        }
    }
}
