//! Stage 2 of `compute`: a cluster's TrafficPolicies rendered as WasmPlugins (their pluginConfig is what
//! the filter enforces) and VirtualServices (the routes that carry out the filter's decisions).

use super::*;

/// Namespace a TrafficPolicy's WasmPlugin must live in for Istio to apply its selector to the workloads:
/// gateways run in the gateway namespace; `targetRefs` name theirs; otherwise the policy's own namespace.
pub fn wasm_plugin_namespace(
    tp_namespace: &str,
    spec: &TrafficPolicySpec,
    gateway_namespace: &str,
) -> String {
    if let Some(ns) = spec.target_refs.iter().find_map(|t| t.namespace.clone()) {
        return ns;
    }
    if let Some(sel) = &spec.selector {
        let gateway = sel
            .match_labels
            .get("istio")
            .is_some_and(|v| v.ends_with("gateway"))
            || sel
                .match_labels
                .contains_key("gateway.networking.k8s.io/gateway-name")
            || sel
                .match_labels
                .get("app")
                .is_some_and(|v| v.starts_with("istio-") && v.ends_with("gateway"));
        if gateway {
            return gateway_namespace.to_string();
        }
    }
    tp_namespace.to_string()
}

pub fn wasm_plugin_name(tp_namespace: &str, tp_name: &str, plugin_namespace: &str) -> String {
    if tp_namespace == plugin_namespace {
        format!("ksit-{tp_name}")
    } else {
        format!("ksit-{tp_namespace}-{tp_name}")
    }
}

/// Which clusters an object is rendered for.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One cluster (the per-cluster form): its overrides resolved, its name in the pluginConfig.
    Cluster(&'a str),
    /// Every cluster at once (the default): the pluginConfig holds the base policy and every override, and
    /// each proxy's filter resolves its own cluster's from its Istio cluster ID (`ids` maps the Istio IDs
    /// that differ from the ksit cluster names); the VirtualService routes every destination any cluster's
    /// override can choose.
    Every { ids: &'a BTreeMap<String, String> },
}

/// Whether an override replaces a rule's destinations or matches: then a cluster's stable destination may
/// differ from the one the shared VirtualService's default route leads to.
fn overrides_routes(spec: &TrafficPolicySpec) -> bool {
    spec.overrides.iter().any(|o| {
        o.http
            .iter()
            .any(|p| p.route.is_some() || p.matches.is_some())
    })
}

/// The pluginConfig for every cluster: `specs` as they are (overrides unresolved), `clusterIds` when some
/// Istio cluster ID differs from its ksit name, and `headerForStable: false` only when no override moves a
/// rule's stable destination away from the one the shared default route leads to.
fn plugin_config_for_every(
    specs: &[(String, &TrafficPolicySpec)],
    ids: &BTreeMap<String, String>,
    stable_by_default_route: bool,
) -> Value {
    let value = |spec: &TrafficPolicySpec| serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    let mut config = match specs {
        [(_, only)] => value(only),
        several => json!({"policies": several
            .iter()
            .map(|(name, spec)| json!({"name": name, "spec": value(spec)}))
            .collect::<Vec<_>>()}),
    };
    if let Some(m) = config.as_object_mut() {
        if !ids.is_empty() {
            m.insert("clusterIds".into(), json!(ids));
        }
        if stable_by_default_route && !specs.iter().any(|(_, s)| overrides_routes(s)) {
            m.insert("headerForStable".into(), json!(false));
        }
    }
    config
}

/// The filter's pluginConfig for one cluster: the spec with that cluster's overrides resolved, plus its
/// name, and `headerForStable: false` when `stable_by_default_route` (the VirtualService's default routes
/// lead to the stable destinations).
pub fn plugin_config(
    spec: &TrafficPolicySpec,
    cluster: &str,
    stable_by_default_route: bool,
) -> Value {
    let resolved = spec.resolve(Some(cluster));
    with_filter_members(
        serde_json::to_value(&resolved).unwrap_or_else(|_| json!({})),
        cluster,
        stable_by_default_route,
    )
}

/// Adds the filter's own members to a pluginConfig (one spec, or a `policies` list): `cluster`, and
/// `headerForStable: false` when `stable_by_default_route`.
fn with_filter_members(mut config: Value, cluster: &str, stable_by_default_route: bool) -> Value {
    if let Some(m) = config.as_object_mut() {
        m.insert("cluster".into(), json!(cluster));
        if stable_by_default_route {
            m.insert("headerForStable".into(), json!(false));
        }
    }
    config
}

/// The VirtualService a TrafficPolicy renders: `ksit-NAME` in its namespace.
fn virtual_service_key(tp: &TrafficPolicy) -> ObjectKey {
    let (ns, name) = policy_id(tp);
    ObjectKey {
        kind: ResourceKind::virtual_service(),
        namespace: Some(ns),
        name: format!("ksit-{name}"),
    }
}

/// A TrafficPolicy's namespace (default `default`) and name.
pub(super) fn policy_id(tp: &TrafficPolicy) -> (String, String) {
    let ns = tp
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    (ns, tp.metadata.name.clone().unwrap_or_default())
}

/// An HTTPMatchRequest as the VirtualService carries it (with its `name`, which Istio appends to the Envoy
/// route's name, and its `statPrefix`).
fn match_json(m: &ksit_policy::spec::HttpMatchRequest) -> Value {
    serde_json::to_value(m).unwrap_or_else(|_| json!({}))
}

/// One WasmPlugin for the TrafficPolicies that select the same workloads (`members`, oldest first), so a
/// request costs one filter invocation however many policies the gateway carries. A lone policy's
/// pluginConfig is its spec (plus `cluster`); several are a `policies` list the filter indexes by host.
fn render_wasm_plugin(
    members: &[&Selected<'_>],
    target: Target<'_>,
    settings: &RenderSettings,
    plugin_ns: &str,
    plugin_name: &str,
) -> Option<DesiredObject> {
    let first = members.first()?;
    let spec = &first.tp.spec.0;
    let mut s = Map::new();
    if let Some(sel) = &spec.selector {
        s.insert("selector".into(), json!({"matchLabels": sel.match_labels}));
    }
    if !spec.target_refs.is_empty() {
        s.insert(
            "targetRefs".into(),
            serde_json::to_value(&spec.target_refs).unwrap_or_default(),
        );
    }
    match &settings.module {
        ModuleSource::Http { url, sha256 } => {
            s.insert("url".into(), json!(url));
            s.insert("sha256".into(), json!(sha256));
        }
        ModuleSource::Oci { image } => {
            s.insert("url".into(), json!(image));
            s.insert("imagePullPolicy".into(), json!("IfNotPresent"));
        }
    }
    s.insert("pluginName".into(), json!("ksit"));
    s.insert("failStrategy".into(), json!(fail_strategy_name(spec)));
    let config = match target {
        Target::Cluster(cluster) => match members {
            [only] => plugin_config(&only.tp.spec.0, cluster, settings.stable_by_default_route),
            _ => {
                let policies: Vec<Value> = members
                    .iter()
                    .map(|m| {
                        let resolved = m.tp.spec.0.resolve(Some(cluster));
                        json!({"name": m.id(), "spec": serde_json::to_value(&resolved).unwrap_or_else(|_| json!({}))})
                    })
                    .collect();
                with_filter_members(
                    json!({"policies": policies}),
                    cluster,
                    settings.stable_by_default_route,
                )
            }
        },
        Target::Every { ids } => {
            let specs: Vec<(String, &TrafficPolicySpec)> =
                members.iter().map(|m| (m.id(), &m.tp.spec.0)).collect();
            plugin_config_for_every(&specs, ids, settings.stable_by_default_route)
        }
    };
    s.insert("pluginConfig".into(), config);
    if let Target::Cluster(cluster) = target {
        s.insert(
            "vmConfig".into(),
            json!({"env": [{"name": "KSIT_CLUSTER", "value": cluster}]}),
        );
    }
    let mut manifest = json!({
        "apiVersion": ResourceKind::wasm_plugin().api_version(),
        "kind": "WasmPlugin",
        "metadata": {"name": plugin_name, "namespace": plugin_ns},
        "spec": Value::Object(s),
    });
    let bindings: Vec<String> = members
        .iter()
        .flat_map(|m| m.bindings.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let source = members
        .iter()
        .map(|m| format!("TrafficPolicy {}", m.id()))
        .collect::<Vec<_>>()
        .join(", ");
    mark(&mut manifest, &bindings, &source);
    Some(DesiredObject {
        kind: ResourceKind::wasm_plugin(),
        namespace: Some(plugin_ns.to_string()),
        name: plugin_name.to_string(),
        bindings,
        create_only: false,
        traffic_policies: members.iter().map(|m| (m.id(), m.generation())).collect(),
        manifest,
    })
}

fn fail_strategy_name(spec: &TrafficPolicySpec) -> &'static str {
    spec.fail_strategy.name()
}

/// A TrafficPolicy bound to one cluster, with the BindingPolicies that send it there.
pub(super) struct Selected<'h> {
    pub(super) tp: &'h TrafficPolicy,
    pub(super) bindings: BTreeSet<String>,
}

impl Selected<'_> {
    fn id(&self) -> String {
        let (ns, name) = policy_id(self.tp);
        format!("{ns}/{name}")
    }
    fn generation(&self) -> i64 {
        self.tp.metadata.generation.unwrap_or(0)
    }
    fn bindings(&self) -> Vec<String> {
        self.bindings.iter().cloned().collect()
    }
    /// Older first: creationTimestamp, then namespace/name (a tie within the same second).
    fn age(
        &self,
    ) -> (
        Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        String,
        String,
    ) {
        let (ns, name) = policy_id(self.tp);
        (self.tp.metadata.creation_timestamp.clone(), ns, name)
    }
}

/// What one cluster's TrafficPolicies render to.
#[derive(Default)]
pub(super) struct RenderedPolicies {
    pub(super) objects: Vec<DesiredObject>,
    pub(super) notes: Vec<Note>,
    pub(super) retain: Vec<ObjectKey>,
}

/// Renders the TrafficPolicies bound to `cluster`: one VirtualService each, and one WasmPlugin per set of
/// policies that select the same workloads (same plugin namespace, selector, targetRefs and failStrategy).
///
/// Within a set, the oldest policy (creationTimestamp, then namespace/name) keeps a host two policies claim;
/// the younger is left out in this cluster with a `HostConflict` note. A set holding an invalid policy keeps
/// its live WasmPlugin as it is (the invalid policy's last good config stays in it) and notes the others.
pub(super) fn render_policies(
    target: Target<'_>,
    cluster: &str,
    selected: &BTreeMap<(String, String), Selected<'_>>,
    invalid_ids: &BTreeSet<String>,
    settings: &RenderSettings,
) -> RenderedPolicies {
    let mut out = RenderedPolicies::default();
    let mut members: Vec<&Selected<'_>> = selected.values().collect();
    members.sort_by_key(|m| m.age());
    type GroupKey = (String, String, String, &'static str);
    let mut groups: BTreeMap<GroupKey, Vec<&Selected<'_>>> = BTreeMap::new();
    for m in members {
        let (ns, _) = policy_id(m.tp);
        let spec = &m.tp.spec.0;
        let key = (
            wasm_plugin_namespace(&ns, spec, &settings.gateway_namespace),
            serde_json::to_string(&spec.selector).unwrap_or_default(),
            serde_json::to_string(&spec.target_refs).unwrap_or_default(),
            fail_strategy_name(spec),
        );
        groups.entry(key).or_default().push(m);
    }
    for ((plugin_ns, ..), group) in groups {
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        let mut applied: Vec<&Selected<'_>> = Vec::new();
        let mut invalid: Vec<&Selected<'_>> = Vec::new();
        // The set is in age order, so the first member kept (valid or not) is the oldest.
        let mut oldest: Option<&Selected<'_>> = None;
        for m in group {
            if invalid_ids.contains(&m.id()) {
                oldest.get_or_insert(m);
                out.retain.push(virtual_service_key(m.tp));
                invalid.push(m);
                continue;
            }
            let hosts: Vec<String> =
                m.tp.spec
                    .0
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
            if let Some((host, older)) = hosts.iter().find_map(|h| claimed.get(h).map(|o| (h, o))) {
                out.notes.push(Note::on_policy(
                    cluster,
                    &m.id(),
                    "HostConflict",
                    format!(
                        "host {host} on the workloads its WasmPlugin in {plugin_ns} selects is already routed by the older TrafficPolicy {older}; only {older} applies there"
                    ),
                ));
                continue;
            }
            for h in hosts {
                claimed.insert(h, m.id());
            }
            oldest.get_or_insert(m);
            applied.push(m);
        }
        // Named after the oldest member, so a policy joining or leaving the set does not rename it.
        let Some(oldest) = oldest else { continue };
        let (ns, name) = policy_id(oldest.tp);
        let plugin_name = wasm_plugin_name(&ns, &name, &plugin_ns);
        for m in &applied {
            if invalid.is_empty() {
                out.objects
                    .push(render_virtual_service(m.tp, target, &m.bindings()));
            } else {
                // The WasmPlugin keeps its previous configuration, so its VirtualServices keep theirs: the
                // filter's decisions and the routes that carry them out stay a pair (a default route that
                // followed a new weight while the filter kept the old one would move the stable traffic).
                out.retain.push(virtual_service_key(m.tp));
            }
        }
        if !invalid.is_empty() {
            out.retain.push(ObjectKey {
                kind: ResourceKind::wasm_plugin(),
                namespace: Some(plugin_ns.clone()),
                name: plugin_name.clone(),
            });
            let culprits = invalid
                .iter()
                .map(|m| m.id())
                .collect::<Vec<_>>()
                .join(", ");
            for m in &applied {
                out.notes.push(Note::on_policy(
                    cluster,
                    &m.id(),
                    "HeldByInvalidPolicy",
                    format!(
                        "WasmPlugin {plugin_ns}/{plugin_name}, which it shares with TrafficPolicy {culprits}, and this policy's VirtualService keep their previous configuration until that spec is valid again"
                    ),
                ));
            }
            continue;
        }
        out.objects.extend(render_wasm_plugin(
            &applied,
            target,
            settings,
            &plugin_ns,
            &plugin_name,
        ));
    }
    out
}

fn destination_json(d: &ksit_policy::spec::Destination) -> Value {
    serde_json::to_value(d).unwrap_or_default()
}

/// A rule's matches with extra header conditions (the filter's marks); a rule without matches gets one
/// match of those headers alone.
fn marked_matches(rule: &ksit_policy::spec::HttpRule, marks: &[(&str, String)]) -> Vec<Value> {
    let with_marks = |mut mv: Value| {
        if let Some(o) = mv.as_object_mut() {
            let h = o.entry("headers").or_insert_with(|| json!({}));
            if let Some(h) = h.as_object_mut() {
                for (name, value) in marks {
                    h.insert((*name).into(), json!({"exact": value}));
                }
            }
        }
        mv
    };
    if rule.matches.is_empty() {
        vec![with_marks(json!({}))]
    } else {
        rule.matches
            .iter()
            .map(|m| with_marks(match_json(m)))
            .collect()
    }
}

/// The fields of a rule the VirtualService carries as they are (Envoy applies them after routing): timeout,
/// retries, rewrite, CORS, header changes, and the mirrors unless the filter decides them (`sticky_mirror`).
fn carried_fields(rule: &ksit_policy::spec::HttpRule, route: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        route.insert(k.into(), v);
    };
    fn to<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or_default()
    }
    if let Some(t) = &rule.timeout {
        put("timeout", json!(t));
    }
    if let Some(x) = &rule.retries {
        put("retries", to(x));
    }
    if let Some(x) = &rule.rewrite {
        put("rewrite", to(x));
    }
    if let Some(x) = &rule.redirect {
        put("redirect", to(x));
    }
    if let Some(x) = &rule.direct_response {
        put("directResponse", to(x));
    }
    if !rule.sticky_mirror() && rule.answers().is_none() {
        if let Some(x) = &rule.mirror {
            put("mirror", to(x));
        }
        if let Some(x) = &rule.mirror_percentage {
            put("mirrorPercentage", to(x));
        }
        if !rule.mirrors.is_empty() {
            put("mirrors", to(&rule.mirrors));
        }
    }
    if let Some(x) = &rule.cors_policy {
        put("corsPolicy", to(x));
    }
    if let Some(x) = &rule.headers {
        put("headers", to(x));
    }
}

/// One route of a destination as the VirtualService names it.
fn route_destination_json(d: &ksit_policy::spec::HttpRouteDestination) -> Value {
    let mut v = json!({"destination": destination_json(&d.destination)});
    if let Some(h) = &d.headers {
        v["headers"] = serde_json::to_value(h).unwrap_or_default();
    }
    v
}

/// The mirror sets of a rule with sticky mirroring: set `L` (1-based, as the filter writes `x-ksit-mirror`)
/// holds the mirrors whose share is at least the `L`th largest share (see `ksit_policy::engine::CompiledMirror`).
fn sticky_mirror_sets(rule: &ksit_policy::spec::HttpRule) -> Vec<Vec<Value>> {
    let policies = rule.mirror_policies();
    let mut thresholds: Vec<u32> = policies.iter().map(|(_, p)| *p).collect();
    thresholds.sort_unstable_by(|a, b| b.cmp(a));
    thresholds.dedup();
    thresholds
        .iter()
        .map(|t| {
            policies
                .iter()
                .filter(|(_, p)| p >= t)
                .map(|(d, _)| json!({"destination": destination_json(d)}))
                .collect()
        })
        .collect()
}

/// The VirtualService that routes on the filter's decision, then each rule's matches to its stable
/// destination ([`ksit_policy::spec::HttpRule::stable_index`]): for the requests the filter did not decide
/// (e.g. when it is absent or failed open) and, with `--stable-by-default-route`, those it sends there
/// unmarked (`headerForStable: false` in the pluginConfig). A rule that answers itself (`redirect`,
/// `directResponse`) has only the second kind of route, which answers; with sticky mirroring, a destination's
/// routes come once per mirror level (`x-ksit-mirror`) with that level's mirrors, then without.
pub fn render_virtual_service(
    tp: &TrafficPolicy,
    target: Target<'_>,
    bindings: &[String],
) -> DesiredObject {
    let (ns, name) = policy_id(tp);
    // The spec as each cluster sees it: one cluster's, or the base and every override's variant. The header
    // routes of every variant are kept (each once), so whatever destination a cluster's filter chooses has a
    // route; the default routes are the base's (or the cluster's).
    let variants: Vec<TrafficPolicySpec> = match target {
        Target::Cluster(cluster) => vec![tp.spec.0.resolve(Some(cluster))],
        Target::Every { .. } => {
            let named: BTreeSet<&String> = tp
                .spec
                .0
                .overrides
                .iter()
                .flat_map(|o| o.clusters.iter())
                .collect();
            std::iter::once(tp.spec.0.resolve(None))
                .chain(named.into_iter().map(|c| tp.spec.0.resolve(Some(c))))
                .collect()
        }
    };
    let spec = &variants[0];
    let mut routes = Vec::new();
    let rule_name = |ri: usize, rule: &ksit_policy::spec::HttpRule| {
        rule.name.clone().unwrap_or_else(|| format!("http-{ri}"))
    };
    for variant in &variants {
        for (ri, rule) in variant.http.iter().enumerate() {
            let rule_name = rule_name(ri, rule);
            let mirror_sets = if rule.sticky_mirror() {
                sticky_mirror_sets(rule)
            } else {
                Vec::new()
            };
            for d in &rule.route {
                let key = d.destination.key();
                let base = format!("{rule_name}-{}", key.replace('|', "-"));
                let mark = (DESTINATION_HEADER, key.clone());
                for (level, mirrors) in mirror_sets.iter().enumerate() {
                    let mut route = Map::new();
                    route.insert("name".into(), json!(format!("{base}-mirror{}", level + 1)));
                    let marks = [mark.clone(), (MIRROR_HEADER, (level + 1).to_string())];
                    route.insert("match".into(), Value::Array(marked_matches(rule, &marks)));
                    route.insert("route".into(), json!([route_destination_json(d)]));
                    carried_fields(rule, &mut route);
                    route.insert("mirrors".into(), Value::Array(mirrors.clone()));
                    routes.push(Value::Object(route));
                }
                let mut route = Map::new();
                route.insert("name".into(), json!(base));
                route.insert(
                    "match".into(),
                    Value::Array(marked_matches(rule, std::slice::from_ref(&mark))),
                );
                route.insert("route".into(), json!([route_destination_json(d)]));
                carried_fields(rule, &mut route);
                routes.push(Value::Object(route));
            }
        }
    }
    // A route that several variants share is kept once, where it first comes.
    let mut seen = BTreeSet::new();
    routes.retain(|r| seen.insert(r.to_string()));
    for (ri, rule) in spec.http.iter().enumerate() {
        let rule_name = rule_name(ri, rule);
        let stable = rule.stable_index().and_then(|i| rule.route.get(i));
        if stable.is_none() && rule.answers().is_none() {
            continue;
        }
        let mut route = Map::new();
        let suffix = if stable.is_some() { "-default" } else { "" };
        route.insert("name".into(), json!(format!("{rule_name}{suffix}")));
        if !rule.matches.is_empty() {
            let matches: Vec<Value> = rule.matches.iter().map(match_json).collect();
            route.insert("match".into(), Value::Array(matches));
        }
        if let Some(stable) = stable {
            route.insert("route".into(), json!([route_destination_json(stable)]));
        }
        carried_fields(rule, &mut route);
        routes.push(Value::Object(route));
    }
    let vs_name = virtual_service_key(tp).name;
    let mut vspec = Map::new();
    vspec.insert("hosts".into(), json!(spec.hosts));
    if !spec.gateways.is_empty() {
        vspec.insert("gateways".into(), json!(spec.gateways));
    }
    vspec.insert("http".into(), Value::Array(routes));
    let mut manifest = json!({
        "apiVersion": ResourceKind::virtual_service().api_version(),
        "kind": "VirtualService",
        "metadata": {"name": vs_name, "namespace": ns},
        "spec": Value::Object(vspec),
    });
    mark(
        &mut manifest,
        bindings,
        &format!("TrafficPolicy {ns}/{name}"),
    );
    DesiredObject {
        kind: ResourceKind::virtual_service(),
        namespace: Some(ns.clone()),
        name: vs_name,
        bindings: bindings.to_vec(),
        create_only: false,
        traffic_policies: vec![(format!("{ns}/{name}"), tp.metadata.generation.unwrap_or(0))],
        manifest,
    }
}
