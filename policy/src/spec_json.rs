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

/// `read_json_struct!` for a type only the rendered VirtualService uses (headers, retries, redirect, CORS...).
/// The Wasm build checks that its value is an object and skips it (the type's default stands in; the
/// filter never reads these fields and leaves their checks out), so the module carries no reader for them;
/// everything else (the controller, `ksit`, the native tests) reads them in full.
macro_rules! carried_json_struct {
    ($t:ident $name:literal $fields:tt) => {
        #[cfg(not(target_arch = "wasm32"))]
        read_json_struct!($t $name $fields);

        #[cfg(target_arch = "wasm32")]
        impl ReadJson for $t {
            fn read(r: &mut Reader<'_>) -> Result<Self, JsonError> {
                r.skip_object(concat!("struct ", $name))?;
                Ok($t::default())
            }
        }
    };
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
    redirect: "redirect",
    direct_response: "directResponse",
    delegate: "delegate",
    mirror: "mirror",
    mirrors: "mirrors",
    mirror_percentage: "mirrorPercentage",
    mirror_percent: "mirrorPercent",
    mirror_percent_snake: "mirror_percent",
    cors_policy: "corsPolicy",
    headers: "headers",
});

carried_json_struct!(HttpRetry "HttpRetry" {
    attempts: "attempts",
    per_try_timeout: "perTryTimeout",
    retry_on: "retryOn",
    retry_remote_localities: "retryRemoteLocalities",
    retry_ignore_previous_hosts: "retryIgnorePreviousHosts",
    backoff: "backoff",
});

carried_json_struct!(HttpRewrite "HttpRewrite" {
    uri: "uri",
    authority: "authority",
    uri_regex_rewrite: "uriRegexRewrite",
});

carried_json_struct!(RegexRewrite "RegexRewrite" {
    match_: "match",
    rewrite: "rewrite",
});

carried_json_struct!(HttpRedirect "HttpRedirect" {
    uri: "uri",
    authority: "authority",
    port: "port",
    derive_port: "derivePort",
    scheme: "scheme",
    redirect_code: "redirectCode",
    prefix_rewrite: "prefixRewrite",
});

carried_json_struct!(HttpDirectResponse "HttpDirectResponse" {
    status: "status" required,
    body: "body",
});

carried_json_struct!(HttpBody "HttpBody" {
    string: "string",
    bytes: "bytes",
});

carried_json_struct!(Delegate "Delegate" {
    name: "name",
    namespace: "namespace",
});

read_json_struct!(HttpMirrorPolicy "HttpMirrorPolicy" {
    destination: "destination" required,
    percentage: "percentage",
});

carried_json_struct!(CorsPolicy "CorsPolicy" {
    allow_origins: "allowOrigins",
    allow_origin: "allowOrigin",
    allow_methods: "allowMethods",
    allow_headers: "allowHeaders",
    expose_headers: "exposeHeaders",
    max_age: "maxAge",
    allow_credentials: "allowCredentials",
    unmatched_preflights: "unmatchedPreflights",
});

carried_json_struct!(Headers "Headers" {
    request: "request",
    response: "response",
});

carried_json_struct!(HeaderOperations "HeaderOperations" {
    set: "set",
    add: "add",
    remove: "remove",
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
    port: "port",
    source_labels: "sourceLabels",
    gateways: "gateways",
    source_namespace: "sourceNamespace",
    stat_prefix: "statPrefix",
});

read_json_struct!(StringMatch "StringMatch" {
    exact: "exact",
    prefix: "prefix",
    regex: "regex",
});

read_json_struct!(HttpRouteDestination "HttpRouteDestination" {
    destination: "destination" required,
    weight: "weight",
    headers: "headers",
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
        const EXPECTED: &str = "FAIL_CLOSE, FAIL_OPEN or FAIL_RELOAD";
        if matches!(r.ws(), Some(c) if c != b'"') {
            return Err(r.invalid_type(EXPECTED));
        }
        let at = r.pos();
        let name = String::read(r)?;
        FailStrategy::from_name(&name).ok_or_else(|| JsonError {
            at,
            message: format!(
                "unknown variant `{name}`, expected one of `FAIL_CLOSE`, `FAIL_OPEN`, `FAIL_RELOAD`"
            ),
        })
    }
}
