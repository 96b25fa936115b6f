//! The API server as a source: one kube-runtime watcher per kind (all namespaces: remote pods
//! are peers too). After a watch gap the watcher relists, which reaches the runtime as `Init`
//! .. `InitDone`, a full resync; while the server is away nothing is sent and the node keeps
//! enforcing the last known state.
//!
//! Recovery is this module's own, not kube's default backoff (up to 30 s, jittered to 45 s,
//! reset only after two quiet minutes, and applied to `410 Gone` too): after an error the
//! next attempt waits [`RETRY_FIRST`] doubling to [`RETRY_MAX`], `410 Gone` relists at once,
//! and any success starts the delays over. So a change is enforced within seconds of the
//! server's return.
//!
//! Objects are read as `DynamicObject`s and decoded one by one: an object the agent's types
//! cannot decode (version skew, a field the API accepts and k8s-openapi does not) is rejected
//! alone, as the objects dir rejects one document, instead of failing its whole list.
//!
//! Health: a kind is failing from its first error until its watch delivers again, or, as a
//! re-established watch is silent until something changes, until a one-object list of the kind
//! succeeds while the watch stays quiet. The runtime turns a kind failing for too long into
//! "not ready" (stale).

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams},
    runtime::{watcher, watcher::Event},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{
    ClusterObject, ENI_CONFIG_NAME, ENI_CONFIG_NAMESPACE, ObjectId, ObjectKind, SourceEvent,
};

/// The delay after a first error, doubled per consecutive error up to [`RETRY_MAX`]; each
/// delay is jittered down by up to a half, so that the nodes of a cluster do not return to
/// the API server in step. The cap bounds how long after the server's return the agent
/// notices: 4 watches per node at most one attempt per 2.5-5 s while it is away.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a watch that failed must stay quiet (a new attempt neither delivered nor failed)
/// before a probe checks whether the kind can be read again.
const QUIET: Duration = Duration::from_secs(2);
/// A probe that takes longer than this counts as failed (a black-holed server).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches the five kinds until the receiver is dropped.
pub async fn run(client: Client, events: mpsc::Sender<SourceEvent>) {
    let eni_config = watcher::Config::default().fields(&format!("metadata.name={ENI_CONFIG_NAME}"));
    tokio::join!(
        watch(
            Api::all_with(client.clone(), &ApiResource::erase::<Namespace>(&())),
            watcher::Config::default(),
            ObjectKind::Namespace,
            ClusterObject::Namespace,
            events.clone(),
        ),
        watch(
            Api::all_with(client.clone(), &ApiResource::erase::<Pod>(&())),
            watcher::Config::default(),
            ObjectKind::Pod,
            ClusterObject::Pod,
            events.clone(),
        ),
        watch(
            Api::all_with(client.clone(), &ApiResource::erase::<NetworkPolicy>(&())),
            watcher::Config::default(),
            ObjectKind::NetworkPolicy,
            ClusterObject::NetworkPolicy,
            events.clone(),
        ),
        watch(
            Api::all_with(client.clone(), &ApiResource::erase::<Service>(&())),
            watcher::Config::default(),
            ObjectKind::Service,
            ClusterObject::Service,
            events.clone(),
        ),
        watch(
            Api::namespaced_with(
                client,
                ENI_CONFIG_NAMESPACE,
                &ApiResource::erase::<ConfigMap>(&()),
            ),
            eni_config,
            ObjectKind::ConfigMap,
            ClusterObject::ConfigMap,
            events,
        ),
    );
}

async fn watch<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(Box<K>) -> ClusterObject,
    events: mpsc::Sender<SourceEvent>,
) where
    K: DeserializeOwned,
{
    let probe = ListParams {
        field_selector: config.field_selector.clone(),
        limit: Some(1),
        ..ListParams::default()
    };
    let mut stream = std::pin::pin!(watcher(api.clone(), config));
    let mut retry = Retry::default();
    let mut failing = false;
    // The HTTP status of the last failure, so that a change of cause is logged too.
    let mut last_status = None;
    loop {
        let item = if failing {
            tokio::select! {
                item = stream.next() => item,
                () = tokio::time::sleep(QUIET) => {
                    let listed = tokio::time::timeout(PROBE_TIMEOUT, api.list_metadata(&probe)).await;
                    if matches!(listed, Ok(Ok(_))) {
                        tracing::info!(kind = kind.name(), "watch back");
                        failing = false;
                        retry = Retry::default();
                        if events.send(SourceEvent::Recovered(kind)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        let Some(item) = item else { return };
        let event = match item {
            Ok(event) => {
                retry = Retry::default();
                if failing {
                    tracing::info!(kind = kind.name(), "watch back");
                    failing = false;
                    if events.send(SourceEvent::Recovered(kind)).await.is_err() {
                        return;
                    }
                }
                match event {
                    Event::Init => SourceEvent::Init(kind),
                    Event::InitApply(object) | Event::Apply(object) => {
                        match decode(kind, wrap, object) {
                            Ok(object) => SourceEvent::Apply(object),
                            Err((id, detail)) => SourceEvent::Undecodable { id, detail },
                        }
                    }
                    Event::InitDone => SourceEvent::InitDone(kind),
                    Event::Delete(object) => {
                        SourceEvent::Delete(ObjectId::new(kind, &object.metadata))
                    }
                }
            }
            Err(error) => {
                let gone = status_code(&error) == Some(410);
                let status = status_code(&error);
                let repeated = failing && status == last_status;
                log_failure(kind, &error, status, repeated);
                failing = true;
                last_status = status;
                let failed = SourceEvent::Failing {
                    kind,
                    detail: error.to_string(),
                };
                if events.send(failed).await.is_err() {
                    return;
                }
                // The watcher relists on its next poll after `410 Gone`: no reason to wait.
                if !gone {
                    tokio::time::sleep(retry.next_delay()).await;
                }
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Logs a watch failure: a warning when it starts or its cause changes, then quieter.
fn log_failure(kind: ObjectKind, error: &watcher::Error, status: Option<u16>, repeated: bool) {
    let error = error as &dyn std::error::Error;
    if status == Some(410) {
        tracing::info!(kind = kind.name(), "watch too old (410 Gone): relisting");
    } else if repeated {
        tracing::debug!(kind = kind.name(), error, "watch still failing; retrying");
    } else if status == Some(403) {
        tracing::warn!(
            kind = kind.name(),
            error,
            "watch forbidden: check the agent's RBAC; retrying"
        );
    } else {
        tracing::warn!(kind = kind.name(), error, "watch failed; retrying");
    }
}

/// Consecutive-error delays: [`RETRY_FIRST`] doubling to [`RETRY_MAX`], jittered.
#[derive(Debug)]
struct Retry {
    delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { delay: RETRY_FIRST }
    }
}

impl Retry {
    fn next_delay(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(RETRY_MAX);
        delay.mul_f64(1.0 - fastrand::f64() / 2.0)
    }
}

/// One object as the agent's type, or the object and why it is not one.
fn decode<K: DeserializeOwned>(
    kind: ObjectKind,
    wrap: fn(Box<K>) -> ClusterObject,
    mut object: DynamicObject,
) -> Result<ClusterObject, (ObjectId, String)> {
    // Never read, and often the bulk of an object: not even converted.
    object.metadata.managed_fields = None;
    object.metadata.annotations = None;
    let id = ObjectId::new(kind, &object.metadata);
    serde_json::to_value(object)
        .and_then(serde_json::from_value::<K>)
        .map(|object| wrap(Box::new(object)).slim())
        .map_err(|error| (id, error.to_string()))
}

/// The HTTP status the API server answered with, if it answered.
fn status_code(error: &watcher::Error) -> Option<u16> {
    let client_error = match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => error,
        watcher::Error::WatchError(status) => return Some(status.code),
        watcher::Error::NoResourceVersion => return None,
    };
    match client_error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).expect("a dynamic object")
    }

    #[test]
    fn an_object_that_does_not_decode_is_rejected_alone_with_its_name() {
        let good = dynamic(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "good", "namespace": "default",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}},
        }));
        let ClusterObject::NetworkPolicy(policy) = decode(
            ObjectKind::NetworkPolicy,
            ClusterObject::NetworkPolicy,
            good,
        )
        .expect("decodes") else {
            panic!("a policy");
        };
        assert_eq!(policy.metadata.managed_fields, None, "slimmed");

        let skewed = dynamic(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "skewed", "namespace": "default"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 99999999999u64}]}]},
        }));
        let (id, detail) = decode(
            ObjectKind::NetworkPolicy,
            ClusterObject::NetworkPolicy,
            skewed,
        )
        .expect_err("the port does not fit");
        assert_eq!(id.to_string(), "networkpolicy default/skewed");
        assert!(!detail.is_empty());
    }
}
