//! `--objects-dir DIR`: cluster objects from YAML files, for a machine with no cluster.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory holds one or more
//! documents (`---`-separated) of kind Namespace, Pod, NetworkPolicy or ConfigMap (a `List` of
//! them works too). The directory is read again every [`POLL_INTERVAL`]: a new or changed
//! object is applied, one that disappeared is deleted. A file that does not parse is reported
//! and its last good objects are kept, so a half-written file never deletes what it held.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ClusterObject, ObjectId, ObjectKind, SourceEvent};

/// How often the directory is read: changes take effect within this (plus programming).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Errors reading one file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document} is not valid YAML")]
    Yaml {
        path: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: document {document} ({kind}) does not parse")]
    Object {
        path: PathBuf,
        document: usize,
        kind: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The objects of one directory read: per file, the objects it holds (or why it could not be
/// read).
#[derive(Debug, Default)]
struct DirectoryRead {
    files: BTreeMap<PathBuf, Result<Vec<ClusterObject>, FileError>>,
}

/// Watches `dir` and sends events until the receiver is dropped.
pub async fn run(dir: PathBuf, events: mpsc::Sender<SourceEvent>) {
    let mut kept: BTreeMap<PathBuf, Vec<ClusterObject>> = BTreeMap::new();
    let mut reported: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut current: BTreeMap<ObjectId, ClusterObject> = BTreeMap::new();
    let mut first = true;
    loop {
        let read = match read_directory(&dir) {
            Ok(read) => read,
            Err(error) => {
                // The directory itself is unreadable: keep everything, say so once per change.
                let detail = format!("cannot list {}: {error}", dir.display());
                if reported.get(&dir) != Some(&detail) {
                    tracing::warn!(dir = %dir.display(), error = &error as &dyn std::error::Error, "objects directory unreadable");
                    let _ = events
                        .send(SourceEvent::Problem {
                            reason: "unreadable_dir",
                            detail: detail.clone(),
                        })
                        .await;
                    reported.insert(dir.clone(), detail);
                }
                if first {
                    // Nothing can be known: do not pretend an empty cluster.
                    tokio::time::sleep(POLL_INTERVAL).await;
                    continue;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        reported.remove(&dir);
        kept.retain(|path, _| read.files.contains_key(path));
        for (path, result) in read.files {
            match result {
                Ok(objects) => {
                    reported.remove(&path);
                    kept.insert(path, objects);
                }
                Err(error) => {
                    let detail = error.to_string();
                    if reported.get(&path) != Some(&detail) {
                        tracing::warn!(error = %detail, "skipping objects file");
                        let _ = events
                            .send(SourceEvent::Problem {
                                reason: "unparsable_file",
                                detail: detail.clone(),
                            })
                            .await;
                        reported.insert(path, detail);
                    }
                }
            }
        }
        let wanted: BTreeMap<ObjectId, ClusterObject> = kept
            .values()
            .flatten()
            .map(|object| (object.id(), object.clone()))
            .collect();
        let sent = if first {
            send_initial(&events, &wanted).await
        } else {
            send_changes(&events, &current, &wanted).await
        };
        if !sent {
            return;
        }
        current = wanted;
        first = false;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

const KINDS: [ObjectKind; 4] = [
    ObjectKind::Namespace,
    ObjectKind::Pod,
    ObjectKind::NetworkPolicy,
    ObjectKind::ConfigMap,
];

async fn send_initial(
    events: &mpsc::Sender<SourceEvent>,
    wanted: &BTreeMap<ObjectId, ClusterObject>,
) -> bool {
    for kind in KINDS {
        if events.send(SourceEvent::Init(kind)).await.is_err() {
            return false;
        }
    }
    for object in wanted.values() {
        if events
            .send(SourceEvent::Apply(object.clone()))
            .await
            .is_err()
        {
            return false;
        }
    }
    for kind in KINDS {
        if events.send(SourceEvent::InitDone(kind)).await.is_err() {
            return false;
        }
    }
    true
}

async fn send_changes(
    events: &mpsc::Sender<SourceEvent>,
    current: &BTreeMap<ObjectId, ClusterObject>,
    wanted: &BTreeMap<ObjectId, ClusterObject>,
) -> bool {
    for (id, object) in wanted {
        if current.get(id) != Some(object)
            && events
                .send(SourceEvent::Apply(object.clone()))
                .await
                .is_err()
        {
            return false;
        }
    }
    for id in current.keys() {
        if !wanted.contains_key(id) && events.send(SourceEvent::Delete(id.clone())).await.is_err() {
            return false;
        }
    }
    true
}

fn read_directory(dir: &Path) -> std::io::Result<DirectoryRead> {
    let mut read = DirectoryRead::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let wanted = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"));
        if wanted && path.is_file() {
            let result = read_file(&path);
            read.files.insert(path, result);
        }
    }
    Ok(read)
}

/// Parses every document of one file.
pub fn read_file(path: &Path) -> Result<Vec<ClusterObject>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_documents(path, &text)
}

/// Parses a multi-document YAML text (`path` only names it in errors). Documents of other
/// kinds are ignored; a document that is not valid YAML, or not a valid object of its kind,
/// fails the whole file.
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<ClusterObject>, FileError> {
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = serde_yaml::Value::deserialize(document).map_err(|source| FileError::Yaml {
            path: path.to_owned(),
            document: number,
            source,
        })?;
        collect(path, number, value, &mut objects)?;
    }
    Ok(objects)
}

fn collect(
    path: &Path,
    document: usize,
    value: serde_yaml::Value,
    objects: &mut Vec<ClusterObject>,
) -> Result<(), FileError> {
    if value.is_null() {
        return Ok(());
    }
    let kind = value
        .get("kind")
        .and_then(|kind| kind.as_str())
        .unwrap_or_default()
        .to_owned();
    let object_error = |source| FileError::Object {
        path: path.to_owned(),
        document,
        kind: kind.clone(),
        source,
    };
    let object = match kind.as_str() {
        "Namespace" => ClusterObject::Namespace(Box::new(
            serde_yaml::from_value(value).map_err(object_error)?,
        )),
        "Pod" => ClusterObject::Pod(Box::new(
            serde_yaml::from_value(value).map_err(object_error)?,
        )),
        "NetworkPolicy" => ClusterObject::NetworkPolicy(Box::new(
            serde_yaml::from_value(value).map_err(object_error)?,
        )),
        "ConfigMap" => ClusterObject::ConfigMap(Box::new(
            serde_yaml::from_value(value).map_err(object_error)?,
        )),
        "List" => {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    collect(path, document, item, objects)?;
                }
            }
            return Ok(());
        }
        // Services, Deployments and the like are not ours to read.
        _ => return Ok(()),
    };
    objects.push(object);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_yield_every_known_kind_and_skip_others() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: test-np
---
apiVersion: v1
kind: Service
metadata:
  name: nginx
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: test-np
spec:
  podSelector: {}
---
"#;
        let objects = parse_documents(Path::new("a.yaml"), text).expect("parses");
        let ids: Vec<String> = objects
            .iter()
            .map(|object| object.id().to_string())
            .collect();
        assert_eq!(ids, ["namespace test-np", "networkpolicy test-np/deny"]);
    }

    #[test]
    fn a_broken_document_fails_its_file_with_a_reason_naming_it() {
        let text = "kind: Pod\nmetadata: {name: a, namespace: b}\nspec: {containers: 7}\n";
        let error = parse_documents(Path::new("bad.yaml"), text).expect_err("spec is wrong");
        assert!(
            error.to_string().contains("bad.yaml: document 1 (Pod)"),
            "{error}"
        );
        let error = parse_documents(Path::new("bad.yaml"), "a: [").expect_err("not YAML");
        assert!(error.to_string().contains("not valid YAML"), "{error}");
    }
}
