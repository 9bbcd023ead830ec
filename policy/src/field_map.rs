//! The schema's map-valued fields (labels, header and query-parameter matches): a Vec kept sorted by key.
//! It reads and writes JSON exactly as a `BTreeMap` does (keys in order, a later duplicate key wins) and
//! has the same JSON schema, but costs the Wasm module far less code than the B-tree.

use schemars::JsonSchema;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// A string-keyed map, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMap<V>(Vec<(String, V)>);

impl<V> Default for FieldMap<V> {
    fn default() -> Self {
        FieldMap(Vec::new())
    }
}

impl<V> FieldMap<V> {
    pub fn new() -> Self {
        Self::default()
    }
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }
    /// Inserts or replaces; returns the replaced value.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, V> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Iterator over a [`FieldMap`]'s entries in key order.
pub type Iter<'a, V> =
    std::iter::Map<std::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

impl<'a, V> IntoIterator for &'a FieldMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V> FromIterator<(String, V)> for FieldMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut m = FieldMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<V: Serialize> Serialize for FieldMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for FieldMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = FieldMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut m = FieldMap::new();
                while let Some((k, v)) = access.next_entry::<String, V>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for FieldMap<V> {
    fn inline_schema() -> bool {
        <BTreeMap<String, V>>::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, V>>::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, V>>::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, V>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::FieldMap;
    use std::collections::BTreeMap;

    #[test]
    fn reads_and_writes_json_like_a_btreemap() {
        let text = r#"{"b": 2, "a": 1, "c": 3, "a": 4}"#;
        let ours: FieldMap<i32> = serde_json::from_str(text).unwrap_or_default();
        let theirs: BTreeMap<String, i32> = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(
            serde_json::to_string(&ours).unwrap_or_default(),
            serde_json::to_string(&theirs).unwrap_or_default()
        );
        assert_eq!(ours.get("a"), Some(&4));
        assert!(ours.contains_key("c") && !ours.contains_key("d"));
        assert_eq!(ours.len(), 3);
        let keys: Vec<&String> = ours.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(serde_json::from_str::<FieldMap<i32>>("[1]").is_err());
    }

    #[test]
    fn has_the_schema_of_a_btreemap() {
        let ours = schemars::schema_for!(FieldMap<String>);
        let theirs = schemars::schema_for!(BTreeMap<String, String>);
        assert_eq!(
            serde_json::to_value(ours).unwrap_or_default(),
            serde_json::to_value(theirs).unwrap_or_default()
        );
    }
}
