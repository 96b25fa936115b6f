//! Sources of cluster objects: a kube-rs watch of the API server ([`kube`]) or a directory of
//! YAML files ([`objects_dir`]). Both speak the same events, shaped like kube-runtime's
//! watcher: a (re)list is `Init`, `Apply`s, `InitDone`; then `Apply` and `Delete` as objects
//! change. The runtime programs nothing before every source has sent its first `InitDone`, and
//! swaps a relist in whole at its `InitDone`, never a partial view.

pub mod kube;
pub mod objects_dir;

use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Pod},
    networking::v1::NetworkPolicy,
};

/// The kinds the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Pod,
    NetworkPolicy,
    /// Only `kube-system/eni-config` matters (the switch).
    ConfigMap,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::NetworkPolicy => "networkpolicy",
            Self::ConfigMap => "configmap",
        }
    }
}

/// Which object: kind, namespace ("" for namespaces) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// The id of a `kind` object with `metadata` (namespaces have no namespace).
    pub fn new(
        kind: ObjectKind,
        metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Self {
        let namespace = match kind {
            ObjectKind::Namespace => String::new(),
            _ => metadata.namespace.clone().unwrap_or_default(),
        };
        Self {
            kind,
            namespace,
            name: metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// An object as the API serves it (boxed: API objects are large and sizes differ widely).
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    NetworkPolicy(Box<NetworkPolicy>),
    ConfigMap(Box<ConfigMap>),
}

impl ClusterObject {
    pub fn id(&self) -> ObjectId {
        let (kind, metadata) = match self {
            Self::Namespace(object) => (ObjectKind::Namespace, &object.metadata),
            Self::Pod(object) => (ObjectKind::Pod, &object.metadata),
            Self::NetworkPolicy(object) => (ObjectKind::NetworkPolicy, &object.metadata),
            Self::ConfigMap(object) => (ObjectKind::ConfigMap, &object.metadata),
        };
        ObjectId::new(kind, metadata)
    }
}

/// What a source tells the runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// A full list of `kind` starts; it replaces the previous one at `InitDone`.
    Init(ObjectKind),
    Apply(ClusterObject),
    Delete(ObjectId),
    /// The list of `kind` is complete.
    InitDone(ObjectKind),
    /// The watch of `kind` failed (already logged); it is retried. The kind is failing until
    /// [`SourceEvent::Recovered`]: what the runtime knows of it may be stale.
    Failing {
        kind: ObjectKind,
        detail: String,
    },
    /// The watch of `kind` delivers again.
    Recovered(ObjectKind),
    /// The source has object `id` but cannot decode it; the runtime logs and counts it, and
    /// keeps its last good version, if any.
    Undecodable {
        id: ObjectId,
        detail: String,
    },
    /// Something the source could not read, already logged; counted by the runtime.
    Problem {
        reason: &'static str,
        detail: String,
    },
}

/// The ConfigMap holding Terway's switch, and its key.
pub const ENI_CONFIG_NAMESPACE: &str = "kube-system";
pub const ENI_CONFIG_NAME: &str = "eni-config";
pub const DISABLE_NETWORK_POLICY_KEY: &str = "disable_network_policy";

/// Terway's meaning of `disable_network_policy`: enforcement stays on when the ConfigMap or
/// the key is absent, or the value is empty, "false" or "0"; any other value turns it off.
pub fn enforcement_enabled(eni_config: Option<&ConfigMap>) -> bool {
    match disable_network_policy_value(eni_config).map(str::trim) {
        None | Some("" | "false" | "0") => true,
        Some(_) => false,
    }
}

/// The raw `disable_network_policy` value, as the operator typed it (`None` when absent).
pub fn disable_network_policy_value(eni_config: Option<&ConfigMap>) -> Option<&str> {
    eni_config
        .and_then(|config| config.data.as_ref())
        .and_then(|data| data.get(DISABLE_NETWORK_POLICY_KEY))
        .map(String::as_str)
}

/// Whether a value that turns enforcement off is one that plainly says so ("true", "1"):
/// anything else ("False", "no", "off") is read as Terway reads it, but deserves a warning.
pub fn plainly_disables(value: &str) -> bool {
    matches!(value.trim(), "true" | "1")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn eni_config(value: Option<&str>) -> ConfigMap {
        ConfigMap {
            data: value.map(|value| {
                BTreeMap::from([(DISABLE_NETWORK_POLICY_KEY.to_owned(), value.to_owned())])
            }),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn the_switch_keeps_enforcement_on_unless_set_to_something_else() {
        assert!(enforcement_enabled(None), "no ConfigMap");
        assert!(enforcement_enabled(Some(&eni_config(None))), "no key");
        for value in ["", "false", "0", " false "] {
            assert!(
                enforcement_enabled(Some(&eni_config(Some(value)))),
                "{value:?}"
            );
        }
        for value in ["true", "1", "yes", "False", "disable"] {
            assert!(
                !enforcement_enabled(Some(&eni_config(Some(value)))),
                "{value:?}"
            );
        }
    }
}
