//! [`Labels`]: an object's labels, shared by every copy of the object the agent keeps.

use std::{collections::BTreeMap, fmt, sync::Arc};

/// Label keys to values, sorted by key, never changed in place: the source's copy of a pod and
/// the engine's model of it share one allocation (a clone is a reference count). Every node
/// holds every pod's labels; as a `BTreeMap` each set took a 540-byte node before its strings,
/// twice. Ordered and compared as a `BTreeMap` of the same pairs would be.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Option<Arc<[(String, String)]>>);

impl Labels {
    /// No labels.
    pub const fn new() -> Self {
        Self(None)
    }

    fn pairs(&self) -> &[(String, String)] {
        self.0.as_deref().unwrap_or_default()
    }

    fn from_sorted(pairs: Vec<(String, String)>) -> Self {
        Self((!pairs.is_empty()).then(|| pairs.into()))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        let pairs = self.pairs();
        pairs
            .binary_search_by(|(probe, _)| probe.as_str().cmp(key))
            .ok()
            .map(|at| &pairs[at].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value` (a new allocation: other holders keep the old labels).
    pub fn insert(&mut self, key: String, value: String) {
        let mut pairs = self.pairs().to_vec();
        match pairs.binary_search_by(|(probe, _)| probe.cmp(&key)) {
            Ok(at) => pairs[at].1 = value,
            Err(at) => pairs.insert(at, (key, value)),
        }
        *self = Self::from_sorted(pairs);
    }

    /// Removes `key` (a new allocation, as [`Labels::insert`]).
    pub fn remove(&mut self, key: &str) {
        if self.contains_key(key) {
            let pairs = self
                .pairs()
                .iter()
                .filter(|(probe, _)| probe != key)
                .cloned()
                .collect();
            *self = Self::from_sorted(pairs);
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> + Clone {
        self.pairs().iter().map(|(key, value)| (key, value))
    }

    /// Whether `other` is this very allocation, not only equal (tests of the sharing).
    #[cfg(test)]
    pub(crate) fn shares_with(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(mine), Some(theirs)) => Arc::ptr_eq(mine, theirs),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.pairs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// A later pair wins over an earlier one with the same key, as in `BTreeMap`.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        Self::from(map)
    }
}

/// Sets every pair (a new allocation, as [`Labels::insert`]).
impl Extend<(String, String)> for Labels {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        let mut map: BTreeMap<String, String> = self
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        map.extend(pairs);
        *self = Self::from(map);
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self::from_sorted(map.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs().iter().map(|(key, value)| (key, value))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As the API writes them: a map, or null for none.
impl<'de> serde::Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map: Option<BTreeMap<String, String>> = serde::Deserialize::deserialize(deserializer)?;
        Ok(map.map(Self::from).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn labels_read_order_and_compare_as_the_map_of_their_pairs() {
        let pairs = [
            ("tier", "front"),
            ("app", "web"),
            ("", "empty key"),
            ("app", "api"),
        ];
        let labels: Labels = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let expected = map(&pairs);
        assert!(labels.iter().eq(expected.iter()));
        assert_eq!(labels.len(), 3);
        assert_eq!(labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(labels.get("").map(String::as_str), Some("empty key"));
        assert!(labels.get("ap").is_none() && !labels.contains_key("zone"));

        let samples = [
            map(&[]),
            map(&[("a", "1")]),
            map(&[("a", "2")]),
            map(&[("a", "1"), ("b", "1")]),
            map(&[("b", "0")]),
        ];
        for left in &samples {
            for right in &samples {
                assert_eq!(
                    Labels::from(left.clone()).cmp(&Labels::from(right.clone())),
                    left.cmp(right),
                    "{left:?} against {right:?}"
                );
            }
        }
        assert!(Labels::from(map(&[])).is_empty());
        assert_eq!(Labels::from(map(&[])), Labels::new());
    }

    #[test]
    fn an_insert_leaves_other_holders_their_labels() {
        let shared = Labels::from(map(&[("app", "web")]));
        let mut changed = shared.clone();
        changed.insert("app".to_owned(), "db".to_owned());
        changed.insert("tier".to_owned(), "back".to_owned());
        assert_eq!(
            changed,
            Labels::from(map(&[("app", "db"), ("tier", "back")]))
        );
        assert_eq!(shared, Labels::from(map(&[("app", "web")])));
    }

    #[test]
    fn labels_decode_from_a_map_or_null() {
        let decoded: Labels =
            serde_json::from_value(serde_json::json!({"b": "2", "a": "1"})).expect("labels");
        assert_eq!(decoded, Labels::from(map(&[("a", "1"), ("b", "2")])));
        let none: Labels = serde_json::from_value(serde_json::Value::Null).expect("labels");
        assert!(none.is_empty());
    }
}
