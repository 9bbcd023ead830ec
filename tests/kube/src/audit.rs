//! The API server's audit log, read back: who called what, and what the server answered. Tests count a
//! controller's writes and check its calls with it, as the emulator's request log does.

use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
    pub uri: String,
}

impl AuditEvent {
    /// create, update, patch, delete and deletecollection: the requests that may change something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Every request in the log, once each (a watch is logged when its response starts and again when it ends:
/// the last stage seen is kept), in the order the server first logged them.
pub fn read(path: &Path) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    let mut by_id: std::collections::HashMap<String, AuditEvent> = Default::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // a line being written
        };
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
        let Some(id) = s("/auditID") else { continue };
        let event = AuditEvent {
            user: s("/user/username").unwrap_or_default(),
            verb: s("/verb").unwrap_or_default(),
            group: s("/objectRef/apiGroup").unwrap_or_default(),
            resource: s("/objectRef/resource").unwrap_or_default(),
            subresource: s("/objectRef/subresource"),
            namespace: s("/objectRef/namespace"),
            name: s("/objectRef/name"),
            code: v
                .pointer("/responseStatus/code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            uri: s("/requestURI").unwrap_or_default(),
        };
        if by_id.insert(id.clone(), event).is_none() {
            order.push(id);
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}
