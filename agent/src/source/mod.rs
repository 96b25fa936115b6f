//! Sources of cluster objects: a kube-rs watch of the API server ([`kube`]) or a directory of
//! YAML files ([`objects_dir`]). Both speak the same events, shaped like kube-runtime's
//! watcher: a (re)list is `Init`, `Apply`s, `InitDone`; then `Apply` and `Delete` as objects
//! change. The runtime programs nothing before every source has sent its first `InitDone`, and
//! swaps a relist in whole at its `InitDone`, never a partial view.

pub mod kube;
pub mod objects_dir;

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{
            ConfigMap, Container, LoadBalancerIngress, LoadBalancerStatus, Namespace, Pod, Service,
            ServiceSpec, ServiceStatus,
        },
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::model::Labels;

/// The kinds the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Pod,
    NetworkPolicy,
    /// Only `kube-system/eni-config` matters (the switch).
    ConfigMap,
    /// Only their addresses matter: egress to them is judged after kube-proxy's DNAT.
    Service,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::NetworkPolicy => "networkpolicy",
            Self::ConfigMap => "configmap",
            Self::Service => "service",
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
    pub fn new(kind: ObjectKind, metadata: &ObjectMeta) -> Self {
        Self::named(kind, metadata.namespace.as_ref(), metadata.name.as_ref())
    }

    fn named(kind: ObjectKind, namespace: Option<&String>, name: Option<&String>) -> Self {
        let namespace = match kind {
            ObjectKind::Namespace => None,
            _ => namespace,
        };
        Self {
            kind,
            namespace: namespace.cloned().unwrap_or_default(),
            name: name.cloned().unwrap_or_default(),
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
    Pod(Box<SlimPod>),
    NetworkPolicy(Box<NetworkPolicy>),
    ConfigMap(Box<ConfigMap>),
    /// Its addresses ([`slim_service`]).
    Service(Box<Service>),
}

impl ClusterObject {
    pub fn id(&self) -> ObjectId {
        let (kind, metadata) = match self {
            Self::Namespace(object) => (ObjectKind::Namespace, &object.metadata),
            Self::Pod(object) => {
                let metadata = &object.metadata;
                return ObjectId::named(
                    ObjectKind::Pod,
                    metadata.namespace.as_ref(),
                    metadata.name.as_ref(),
                );
            }
            Self::NetworkPolicy(object) => (ObjectKind::NetworkPolicy, &object.metadata),
            Self::ConfigMap(object) => (ObjectKind::ConfigMap, &object.metadata),
            Self::Service(object) => (ObjectKind::Service, &object.metadata),
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

impl ClusterObject {
    /// The copy the agent keeps: only what the model reads. Every node holds every Pod,
    /// Namespace, Service and NetworkPolicy of the cluster; statuses, annotations (kubectl's
    /// last-applied copy among them), managed fields and most of a Pod's spec would be most of
    /// that memory, and their churn (kubelet's status updates) would wake the runtime for
    /// nothing.
    pub fn slim(self) -> Self {
        match self {
            Self::Pod(pod) => Self::Pod(Box::new(slim_pod(*pod))),
            Self::Namespace(namespace) => Self::Namespace(Box::new(Namespace {
                metadata: slim_metadata(namespace.metadata),
                ..Namespace::default()
            })),
            Self::NetworkPolicy(mut policy) => {
                policy.metadata = slim_metadata(policy.metadata);
                Self::NetworkPolicy(policy)
            }
            Self::Service(service) => Self::Service(Box::new(slim_service(*service))),
            Self::ConfigMap(mut config) => {
                config.metadata = slim_metadata(config.metadata);
                Self::ConfigMap(config)
            }
        }
    }
}

/// Name, namespace and labels.
fn slim_metadata(metadata: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        labels: metadata.labels,
        // Tells a pod from an earlier one of the same name (CNI claims).
        uid: metadata.uid,
        ..ObjectMeta::default()
    }
}

/// A Pod as the agent keeps it: only what `model::convert::pod` reads (labels, node, host
/// network, the container ports of containers and sidecars, the phase and the addresses),
/// decoded straight from the API's JSON or the objects file, every other field skipped. Every
/// node holds every Pod of the cluster; as k8s-openapi's `Pod`, even a slimmed copy took
/// 2,176 bytes and 2,120 more per container for fields that are always empty (a third of the
/// agent's heap at 10,000 pods, docs/SCALE-BENCH.md). Same field names as the API's.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct SlimPod {
    #[serde(default)]
    pub metadata: SlimMeta,
    #[serde(default)]
    pub spec: Option<SlimPodSpec>,
    #[serde(default)]
    pub status: Option<SlimPodStatus>,
}

/// Name, namespace, labels (shared with the engine's model of the pod) and uid, which tells a
/// pod from an earlier one of the same name (CNI claims).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct SlimMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<SlimContainer>,
    #[serde(default)]
    pub init_containers: Option<Vec<SlimContainer>>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub restart_policy: Option<String>,
    #[serde(default)]
    pub ports: Option<Vec<SlimContainerPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<SlimPodIp>>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct SlimPodIp {
    #[serde(default)]
    pub ip: String,
}

/// A full Pod's slim copy (tests build pods as the API's type).
impl From<Pod> for SlimPod {
    fn from(pod: Pod) -> Self {
        let container = |container: Container| SlimContainer {
            name: container.name,
            restart_policy: container.restart_policy,
            ports: container.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|port| SlimContainerPort {
                        name: port.name,
                        container_port: port.container_port,
                        protocol: port.protocol,
                    })
                    .collect()
            }),
        };
        Self {
            metadata: SlimMeta {
                name: pod.metadata.name,
                namespace: pod.metadata.namespace,
                labels: pod.metadata.labels.map(Labels::from).unwrap_or_default(),
                uid: pod.metadata.uid,
            },
            spec: pod.spec.map(|spec| SlimPodSpec {
                node_name: spec.node_name,
                host_network: spec.host_network,
                containers: spec.containers.into_iter().map(container).collect(),
                init_containers: spec
                    .init_containers
                    .map(|containers| containers.into_iter().map(container).collect()),
            }),
            status: pod.status.map(|status| SlimPodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status
                    .pod_ips
                    .map(|ips| ips.into_iter().map(|ip| SlimPodIp { ip: ip.ip }).collect()),
            }),
        }
    }
}

/// Only the init containers that keep running (sidecars: they serve ports).
fn slim_pod(mut pod: SlimPod) -> SlimPod {
    if let Some(spec) = &mut pod.spec {
        spec.init_containers = spec.init_containers.take().map(|containers| {
            containers
                .into_iter()
                .filter(|container| container.restart_policy.as_deref() == Some("Always"))
                .collect()
        });
    }
    pod
}

/// What the agent keeps of a Service: its name and the addresses kube-proxy DNATs on a node
/// (cluster IPs of both families, external IPs, load-balancer ingress IPs). Every node holds
/// every Service of the cluster: ports, selectors, labels and annotations would be most of it.
pub fn slim_service(service: Service) -> Service {
    let spec = service.spec.map(|spec| ServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        external_ips: spec.external_ips,
        ..ServiceSpec::default()
    });
    let ingress = service
        .status
        .and_then(|status| status.load_balancer)
        .and_then(|load_balancer| load_balancer.ingress)
        .map(|ingress| {
            ingress
                .into_iter()
                .filter(|ingress| ingress.ip.is_some())
                .map(|ingress| LoadBalancerIngress {
                    ip: ingress.ip,
                    ..LoadBalancerIngress::default()
                })
                .collect()
        });
    Service {
        metadata: ObjectMeta {
            name: service.metadata.name,
            namespace: service.metadata.namespace,
            ..ObjectMeta::default()
        },
        spec,
        status: ingress.map(|ingress| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        }),
    }
}

/// The addresses of a Service that kube-proxy DNATs: cluster IPs ("None" for headless
/// Services is none), external IPs and load-balancer ingress IPs. Unparsable ones are skipped.
pub fn service_addresses(service: &Service) -> Vec<IpAddr> {
    let mut texts: Vec<&str> = Vec::new();
    if let Some(spec) = &service.spec {
        texts.extend(spec.cluster_ip.as_deref());
        texts.extend(spec.cluster_ips.iter().flatten().map(String::as_str));
        texts.extend(spec.external_ips.iter().flatten().map(String::as_str));
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|load_balancer| load_balancer.ingress.as_ref());
    texts.extend(
        ingress
            .into_iter()
            .flatten()
            .filter_map(|ingress| ingress.ip.as_deref()),
    );
    let mut addresses: Vec<IpAddr> = texts
        .into_iter()
        .filter_map(|text| text.trim().parse().ok())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
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

    #[test]
    fn a_service_is_kept_slim_with_every_address_kube_proxy_dnats() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": {"big": "x"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "192.168.5.10",
                     "clusterIPs": ["192.168.5.10", "fd00:96::10"],
                     "externalIPs": ["198.51.100.9"], "selector": {"app": "web"},
                     "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example"}]}},
        }))
        .expect("a service");
        let slim = slim_service(service);
        assert!(slim.metadata.labels.is_none() && slim.metadata.annotations.is_none());
        assert!(
            slim.spec
                .as_ref()
                .is_some_and(|spec| spec.ports.is_none() && spec.selector.is_none())
        );
        let addresses: Vec<String> = service_addresses(&slim)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addresses,
            ["192.168.5.10", "198.51.100.9", "203.0.113.7", "fd00:96::10"]
        );
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"}, "spec": {"clusterIP": "None"},
        }))
        .expect("a service");
        assert!(service_addresses(&headless).is_empty());
    }

    #[test]
    fn slim_copies_convert_exactly_as_the_full_objects_and_are_much_smaller() {
        let json = serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "1"}]},
            "spec": {"nodeName": "node-1", "hostNetwork": false,
                     "containers": [{"name": "main", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80}],
                                     "resources": {"limits": {"cpu": "1"}}}],
                     "initContainers": [
                         {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                          "ports": [{"name": "admin", "containerPort": 9901}]},
                         {"name": "setup", "image": "busybox", "ports": [{"name": "gone", "containerPort": 1}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.244.1.10",
                       "podIPs": [{"ip": "10.244.1.10"}, {"ip": "fd00::a"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "main", "image": "nginx", "imageID": "x", "ready": true, "restartCount": 0}]},
        });
        // Decoded straight into the slim type, as both sources do, and slimmed.
        let decoded: SlimPod = serde_json::from_value(json.clone()).expect("a slim pod");
        let slim = ClusterObject::Pod(Box::new(decoded)).slim();
        let ClusterObject::Pod(slim_pod) = &slim else {
            panic!("a pod")
        };
        let model = crate::model::convert::pod(slim_pod)
            .object
            .expect("a model pod");
        let full: Pod = serde_json::from_value(json).expect("a pod");
        assert_eq!(
            Some(&model),
            crate::model::convert::pod(&SlimPod::from(full))
                .object
                .as_ref()
        );
        // The container's and the sidecar's named ports; not the one of the init container
        // that ends.
        let names: Vec<&str> = model
            .ports
            .iter()
            .filter_map(|port| port.name.as_deref())
            .collect();
        assert_eq!(names, ["http", "admin"]);
        assert_eq!(model.ips.len(), 2);
        // One copy of the labels for the source and the engine.
        assert!(model.labels.shares_with(&slim_pod.metadata.labels));
        // A pod of one container, before its strings.
        let kept = std::mem::size_of::<SlimPod>() + std::mem::size_of::<SlimContainer>();
        let full = std::mem::size_of::<Pod>() + std::mem::size_of::<Container>();
        assert!(kept * 6 < full, "{kept} bytes against {full}");
        assert_eq!(slim.id().name, "web-1");

        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "annotations": {"a": "b"}},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]},
        }))
        .expect("a policy");
        let ClusterObject::NetworkPolicy(slim_policy) =
            ClusterObject::NetworkPolicy(Box::new(policy.clone())).slim()
        else {
            panic!("a policy")
        };
        assert_eq!(
            crate::model::convert::network_policy(&slim_policy).object,
            crate::model::convert::network_policy(&policy).object
        );
        assert!(slim_policy.metadata.annotations.is_none());
    }
}
