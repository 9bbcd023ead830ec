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
    /// When the server received it, RFC 3339 in UTC with microseconds (compare as text with [`rfc3339`]).
    pub received: String,
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
            received: s("/requestReceivedTimestamp").unwrap_or_default(),
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

/// `t` as the audit log writes times: `2026-12-05T16:00:08.084795Z`. Text of this form sorts as the times do.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        use std::time::{Duration, UNIX_EPOCH};
        for (secs, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (1_796_486_408, 84_795, "2026-12-05T16:00:08.084795Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            assert_eq!(super::rfc3339(t), text);
        }
    }
}
