//! The API server as a source: one kube-runtime watcher per kind (all namespaces: remote pods
//! are peers too), with kube's default backoff (800 ms to 30 s, jittered). After a watch gap
//! the watcher relists, which reaches the runtime as `Init` .. `InitDone`, a full resync; while
//! the server is away nothing is sent and the node keeps enforcing the last known state.

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{ClusterObject, ENI_CONFIG_NAME, ENI_CONFIG_NAMESPACE, ObjectKind, SourceEvent};

/// Watches the four kinds until the receiver is dropped.
pub async fn run(client: Client, events: mpsc::Sender<SourceEvent>) {
    let eni_config = watcher::Config::default().fields(&format!("metadata.name={ENI_CONFIG_NAME}"));
    tokio::join!(
        watch(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            ObjectKind::Namespace,
            ClusterObject::Namespace,
            events.clone(),
        ),
        watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            ObjectKind::Pod,
            ClusterObject::Pod,
            events.clone(),
        ),
        watch(
            Api::<NetworkPolicy>::all(client.clone()),
            watcher::Config::default(),
            ObjectKind::NetworkPolicy,
            ClusterObject::NetworkPolicy,
            events.clone(),
        ),
        watch(
            Api::<ConfigMap>::namespaced(client, ENI_CONFIG_NAMESPACE),
            eni_config,
            ObjectKind::ConfigMap,
            ClusterObject::ConfigMap,
            events,
        ),
    );
}

async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(Box<K>) -> ClusterObject,
    events: mpsc::Sender<SourceEvent>,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Init) => SourceEvent::Init(kind),
            Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                SourceEvent::Apply(wrap(Box::new(slim(object))))
            }
            Ok(watcher::Event::InitDone) => SourceEvent::InitDone(kind),
            Ok(watcher::Event::Delete(object)) => SourceEvent::Delete(wrap(Box::new(object)).id()),
            Err(error) => {
                // Every watcher error is retried by the backoff; a 403 needs a human (RBAC).
                if is_forbidden(&error) {
                    tracing::warn!(
                        kind = kind.name(),
                        error = &error as &dyn std::error::Error,
                        "watch forbidden: check the agent's RBAC"
                    );
                } else {
                    tracing::debug!(
                        kind = kind.name(),
                        error = &error as &dyn std::error::Error,
                        "watch failed; retrying"
                    );
                }
                SourceEvent::Problem {
                    reason: "watch_error",
                    detail: format!("{}: {error}", kind.name()),
                }
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Drops what the agent never reads (managed fields are often the bulk of an object).
fn slim<K: Resource>(mut object: K) -> K {
    object.managed_fields_mut().clear();
    object
}

fn is_forbidden(error: &watcher::Error) -> bool {
    let client_error = match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => error,
        watcher::Error::WatchError(status) => return status.code == 403,
        watcher::Error::NoResourceVersion => return false,
    };
    matches!(client_error, kube::Error::Api(status) if status.code == 403)
}
