//! Label selector matching for the compiler (the evaluator has its own).

use crate::model::{Labels, NAMESPACE_NAME_LABEL, Namespace, Operator, Selector};

/// Whether `selector` matches an object whose labels `get` returns.
fn matches_with<'a>(selector: &Selector, get: impl Fn(&str) -> Option<&'a str>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(key, value)| get(key) == Some(value.as_str()))
        && selector.match_expressions.iter().all(|requirement| {
            let value = get(&requirement.key);
            match &requirement.operator {
                Operator::In(values) => value.is_some_and(|value| values.contains(value)),
                Operator::NotIn(values) => !value.is_some_and(|value| values.contains(value)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
}

/// Whether `selector` matches an object with `labels`.
pub(crate) fn matches(selector: &Selector, labels: &Labels) -> bool {
    matches_with(selector, |key| labels.get(key).map(String::as_str))
}

/// Whether `selector` matches namespace `name` (`namespace` is `None` when the namespace object
/// is not known): its labels, with the name label always present and always its name.
pub(crate) fn matches_namespace(
    selector: &Selector,
    name: &str,
    namespace: Option<&Namespace>,
) -> bool {
    matches_with(selector, |key| {
        if key == NAMESPACE_NAME_LABEL {
            Some(name)
        } else {
            namespace
                .and_then(|ns| ns.labels.get(key))
                .map(String::as_str)
        }
    })
}

/// `selector` with its requirements in a canonical order, so equal selectors intern alike.
pub(crate) fn canonical(selector: &Selector) -> Selector {
    let mut canonical = selector.clone();
    canonical.match_expressions.sort();
    canonical.match_expressions.dedup();
    canonical
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::Requirement;

    fn requirement(key: &str, operator: Operator) -> Requirement {
        Requirement {
            key: key.to_owned(),
            operator,
        }
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn selectors_match_labels_and_every_operator() {
        let labels: Labels = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cases = [
            (Selector::everything(), true),
            (Selector::labels([("app", "web")]), true),
            (Selector::labels([("app", "db")]), false),
            (Selector::labels([("app", "web"), ("env", "prod")]), false),
        ];
        for (selector, expected) in cases {
            assert_eq!(matches(&selector, &labels), expected, "{selector:?}");
        }
        let expression_cases = [
            (requirement("app", Operator::In(set(&["web", "db"]))), true),
            (requirement("app", Operator::In(set(&["db"]))), false),
            (requirement("env", Operator::In(set(&["prod"]))), false),
            (requirement("app", Operator::NotIn(set(&["db"]))), true),
            (requirement("app", Operator::NotIn(set(&["web"]))), false),
            (requirement("env", Operator::NotIn(set(&["prod"]))), true),
            (requirement("tier", Operator::Exists), true),
            (requirement("env", Operator::Exists), false),
            (requirement("env", Operator::DoesNotExist), true),
            (requirement("tier", Operator::DoesNotExist), false),
        ];
        for (requirement, expected) in expression_cases {
            let selector = Selector {
                match_labels: Labels::new(),
                match_expressions: vec![requirement.clone()],
            };
            assert_eq!(matches(&selector, &labels), expected, "{requirement:?}");
        }
    }

    #[test]
    fn namespaces_always_match_on_their_name_label() {
        let by_name = Selector::labels([(NAMESPACE_NAME_LABEL, "y")]);
        assert!(matches_namespace(&by_name, "y", None));
        let stale = Namespace {
            name: "y".to_owned(),
            labels: [(NAMESPACE_NAME_LABEL.to_owned(), "other".to_owned())].into(),
        };
        assert!(matches_namespace(&by_name, "y", Some(&stale)));
        assert!(!matches_namespace(&by_name, "z", None));
    }
}
