//! [`Snapshot`]: the cluster as the engine sees it, and [`Change`]: one object event.

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1 as core, networking::v1::NetworkPolicy as K8sNetworkPolicy};

use super::{Namespace, NetworkPolicy, ObjectRef, Pod, Rejection, convert};

/// Every namespace, pod and NetworkPolicy of the cluster, keyed by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectRef, Pod>,
    pub policies: BTreeMap<ObjectRef, NetworkPolicy>,
}

/// One object event, as a watch delivers it (an apply creates or replaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    ApplyNamespace(Namespace),
    DeleteNamespace(String),
    ApplyPod(Pod),
    DeletePod(ObjectRef),
    ApplyPolicy(NetworkPolicy),
    DeletePolicy(ObjectRef),
}

impl Snapshot {
    /// Converts API objects; rejected objects and parts are returned beside the snapshot
    /// (see [`convert`] for what each rejection means).
    pub fn from_k8s<'a>(
        namespaces: impl IntoIterator<Item = &'a core::Namespace>,
        pods: impl IntoIterator<Item = &'a core::Pod>,
        policies: impl IntoIterator<Item = &'a K8sNetworkPolicy>,
    ) -> (Self, Vec<Rejection>) {
        let mut snapshot = Self::default();
        let mut rejections = Vec::new();
        for namespace in namespaces {
            let converted = convert::namespace(namespace);
            rejections.extend(converted.rejections);
            if let Some(namespace) = converted.object {
                snapshot.apply(Change::ApplyNamespace(namespace));
            }
        }
        for pod in pods {
            let converted = convert::pod(&crate::source::SlimPod::from(pod.clone()));
            rejections.extend(converted.rejections);
            if let Some(pod) = converted.object {
                snapshot.apply(Change::ApplyPod(pod));
            }
        }
        for policy in policies {
            let converted = convert::network_policy(policy);
            rejections.extend(converted.rejections);
            if let Some(policy) = converted.object {
                snapshot.apply(Change::ApplyPolicy(policy));
            }
        }
        (snapshot, rejections)
    }

    /// The same snapshot with its maps rebuilt in bulk. Filled one insert at a time in key
    /// order, as a list arrives, a `BTreeMap`'s nodes stay about half empty; rebuilt from a
    /// sorted run they are full (about 150 bytes less per pod of the cluster).
    pub fn packed(self) -> Self {
        Self {
            namespaces: super::packed(self.namespaces),
            pods: super::packed(self.pods),
            policies: super::packed(self.policies),
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::ApplyNamespace(namespace) => {
                self.namespaces.insert(namespace.name.clone(), namespace);
            }
            Change::DeleteNamespace(name) => {
                self.namespaces.remove(&name);
            }
            Change::ApplyPod(pod) => {
                self.pods.insert(pod.key(), pod);
            }
            Change::DeletePod(key) => {
                self.pods.remove(&key);
            }
            Change::ApplyPolicy(policy) => {
                self.policies.insert(policy.key(), policy);
            }
            Change::DeletePolicy(key) => {
                self.policies.remove(&key);
            }
        }
    }

    /// The events that build this snapshot from nothing: namespaces, pods, then policies.
    pub fn changes(&self) -> impl Iterator<Item = Change> + '_ {
        let namespaces = self
            .namespaces
            .values()
            .cloned()
            .map(Change::ApplyNamespace);
        let pods = self.pods.values().cloned().map(Change::ApplyPod);
        let policies = self.policies.values().cloned().map(Change::ApplyPolicy);
        namespaces.chain(pods).chain(policies)
    }
}
