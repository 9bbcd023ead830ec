//! A small dynamic client for tests: objects as JSON, addressed by group and plural (or by apiVersion and
//! kind when applying), resolved through the server's discovery; raw requests keep status code and body.

use anyhow::{bail, Context};
use kube::client::Body;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl Resource {
    fn base(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The path of the collection (in `namespace` when namespaced and given) or of one object.
    pub fn path(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let mut p = self.base();
        if let (true, Some(ns)) = (self.namespaced, namespace) {
            p.push_str(&format!("/namespaces/{ns}"));
        }
        p.push('/');
        p.push_str(&self.plural);
        if let Some(n) = name {
            p.push('/');
            p.push_str(n);
        }
        p
    }
}

/// A response as the server sent it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub struct Client {
    kube: kube::Client,
    resources: Mutex<Vec<Resource>>,
}

impl Client {
    pub async fn new(kubeconfig: &str) -> anyhow::Result<Client> {
        let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(Client {
            kube: kube::Client::try_from(config)?,
            resources: Mutex::new(Vec::new()),
        })
    }

    pub fn kube(&self) -> kube::Client {
        self.kube.clone()
    }

    /// One request; any status is returned, only a transport failure is an error.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let mut req = http::Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req = req.header("accept", "application/json");
        let req = req.body(Body::from(body.unwrap_or_default()))?;
        let res = self.kube.send(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect_bytes().await?.to_vec();
        Ok(Response { status, body })
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.raw("GET", path, None, None).await?;
        if !r.ok() {
            bail!(
                "GET {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(r.json())
    }

    /// The server's gitVersion.
    pub async fn version(&self) -> anyhow::Result<String> {
        let v = self.get_json("/version").await?;
        Ok(v["gitVersion"].as_str().unwrap_or_default().to_string())
    }

    pub async fn ready(&self) -> bool {
        self.raw("GET", "/readyz", None, None)
            .await
            .is_ok_and(|r| r.status == 200)
    }

    /// Whether the RBAC authorizer has its roles: any authenticated user may read discovery (the bootstrap
    /// role system:discovery). Right after a start, /readyz can pass (the admin bypasses RBAC) while the
    /// authorizer still refuses everyone else.
    pub async fn rbac_ready(&self) -> bool {
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "ksit-test-probe", "groups": ["system:authenticated"],
                "nonResourceAttributes": {"path": "/apis", "verb": "get"}}});
        let Ok(body) = serde_json::to_vec(&review) else {
            return false;
        };
        self.raw(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some("application/json"),
            Some(body),
        )
        .await
        .is_ok_and(|r| r.ok() && r.json()["status"]["allowed"] == true)
    }

    async fn discover(&self, group: &str, version: Option<&str>) -> anyhow::Result<Vec<Resource>> {
        let version = match (group, version) {
            (_, Some(v)) => v.to_string(),
            ("", None) => "v1".to_string(),
            (g, None) => {
                let r = self.raw("GET", &format!("/apis/{g}"), None, None).await?;
                if r.status == 404 {
                    return Ok(vec![]);
                }
                r.json()["preferredVersion"]["version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let path = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let r = self.raw("GET", &path, None, None).await?;
        if r.status == 404 {
            return Ok(vec![]);
        }
        let list = r.json();
        Ok(list["resources"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let name = r["name"].as_str()?;
                (!name.contains('/')).then(|| Resource {
                    group: group.to_string(),
                    version: version.clone(),
                    kind: r["kind"].as_str().unwrap_or_default().to_string(),
                    plural: name.to_string(),
                    namespaced: r["namespaced"].as_bool().unwrap_or(false),
                })
            })
            .collect())
    }

    /// Finds a resource, asking the server again (for up to 10 s: a CRD just created takes a moment to be
    /// served) when it is not known yet.
    async fn resolve(
        &self,
        group: &str,
        version: Option<&str>,
        matches: impl Fn(&Resource) -> bool,
        what: &str,
    ) -> anyhow::Result<Resource> {
        let known = |rs: &[Resource]| {
            rs.iter()
                .find(|r| r.group == group && version.is_none_or(|v| r.version == v) && matches(r))
                .cloned()
        };
        if let Some(r) = self.resources.lock().ok().and_then(|rs| known(&rs)) {
            return Ok(r);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.discover(group, version).await?;
            if let Some(r) = known(&found) {
                if let Ok(mut rs) = self.resources.lock() {
                    rs.retain(|x| !(x.group == group && x.version == r.version));
                    rs.extend(found);
                }
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("the server does not serve {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn resource(&self, group: &str, plural: &str) -> anyhow::Result<Resource> {
        self.resolve(
            group,
            None,
            |r| r.plural == plural,
            &format!("{plural}.{group}"),
        )
        .await
    }

    pub async fn resource_of(&self, api_version: &str, kind: &str) -> anyhow::Result<Resource> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resolve(
            group,
            Some(version),
            |r| r.kind == kind,
            &format!("{api_version} {kind}"),
        )
        .await
    }

    pub async fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> anyhow::Result<Option<Value>> {
        let r = self.resource(group, plural).await?;
        let res = self
            .raw("GET", &r.path(namespace, Some(name)), None, None)
            .await?;
        match res.status {
            200 => Ok(Some(res.json())),
            404 => Ok(None),
            s => bail!(
                "GET {plural}.{group} {name}: {s} {}",
                String::from_utf8_lossy(&res.body)
            ),
        }
    }

    /// Every object of the kind, in all namespaces, in the server's order.
    pub async fn list(&self, group: &str, plural: &str) -> anyhow::Result<Vec<Value>> {
        let r = self.resource(group, plural).await?;
        let list = self.get_json(&r.path(None, None)).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Server-side apply with force, as `manager`. The kind is found from apiVersion and kind; a cluster-scoped
    /// object loses a `metadata.namespace` (as kubectl does).
    pub async fn apply(&self, object: &Value, manager: &str) -> anyhow::Result<Value> {
        self.apply_to(object, manager, "").await
    }

    /// Server-side apply with force of the object's status (its status subresource), as `manager`.
    pub async fn apply_status(&self, object: &Value, manager: &str) -> anyhow::Result<Value> {
        self.apply_to(object, manager, "/status").await
    }

    async fn apply_to(&self, object: &Value, manager: &str, sub: &str) -> anyhow::Result<Value> {
        let av = object["apiVersion"]
            .as_str()
            .context("apiVersion missing")?;
        let kind = object["kind"].as_str().context("kind missing")?;
        let name = object["metadata"]["name"]
            .as_str()
            .context("metadata.name missing")?;
        let r = self.resource_of(av, kind).await?;
        let mut object = object.clone();
        let ns = if r.namespaced {
            Some(
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
            )
        } else {
            if let Some(m) = object["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            None
        };
        let path = format!(
            "{}{sub}?fieldManager={manager}&force=true",
            r.path(ns.as_deref(), Some(name))
        );
        let res = self
            .raw(
                "PATCH",
                &path,
                Some("application/apply-patch+yaml"),
                Some(serde_json::to_vec(&object)?),
            )
            .await?;
        if !res.ok() {
            bail!(
                "apply {kind} {name}: {} {}",
                res.status,
                String::from_utf8_lossy(&res.body)
            );
        }
        Ok(res.json())
    }

    /// Deletes an object; whether it was there.
    pub async fn delete(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> anyhow::Result<bool> {
        let r = self.resource(group, plural).await?;
        let res = self
            .raw("DELETE", &r.path(namespace, Some(name)), None, None)
            .await?;
        match res.status {
            200 | 202 => Ok(true),
            404 => Ok(false),
            s => bail!(
                "DELETE {plural}.{group} {name}: {s} {}",
                String::from_utf8_lossy(&res.body)
            ),
        }
    }

    /// Applies every document of `yaml`: CustomResourceDefinitions first (waiting until each is Established),
    /// then the rest in their order. Returns what the server answered for each.
    pub async fn apply_yaml(&self, yaml: &str, manager: &str) -> anyhow::Result<Vec<Value>> {
        let mut docs: Vec<Value> = Vec::new();
        for d in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(d)?;
            if v.is_object() {
                docs.push(v);
            }
        }
        let (crds, rest): (Vec<Value>, Vec<Value>) = docs
            .into_iter()
            .partition(|d| d["kind"] == "CustomResourceDefinition");
        let mut out = Vec::new();
        for crd in &crds {
            out.push(self.apply(crd, manager).await?);
        }
        for crd in &crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            self.wait_established(name).await?;
        }
        for d in &rest {
            out.push(self.apply(d, manager).await?);
        }
        Ok(out)
    }

    async fn wait_established(&self, crd: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = self
                .get(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    None,
                    crd,
                )
                .await?
                .and_then(|c| c["status"]["conditions"].as_array().cloned())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRD {crd} not Established after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A token of the ServiceAccount `namespace/name`, from the TokenRequest API (valid for a day).
    pub async fn create_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400}});
        let res = self
            .raw(
                "POST",
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
                Some("application/json"),
                Some(serde_json::to_vec(&req)?),
            )
            .await?;
        if !res.ok() {
            bail!(
                "TokenRequest: {} {}",
                res.status,
                String::from_utf8_lossy(&res.body)
            );
        }
        res.json()["status"]["token"]
            .as_str()
            .map(String::from)
            .context("TokenRequest answered without a token")
    }
}
