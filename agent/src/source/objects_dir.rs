//! `--objects-dir DIR`: cluster objects from YAML files, for a machine with no cluster.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory holds one or more
//! documents (`---`-separated) of kind Namespace, Pod, NetworkPolicy, ConfigMap or Service (a
//! `List` of them works too). The directory is read again when inotify says it changed, and
//! in full every [`RESCAN_INTERVAL`] as a safety net (every [`POLL_INTERVAL`] where inotify
//! is not available): a new or changed object is applied, one that disappeared is deleted.
//! A read parses only the files whose stamp changed, and an unchanged directory costs no
//! merge and no comparison, so an idle agent does next to nothing.
//!
//! Bad input is rejected one document at a time, as the API server rejects one object: the
//! other documents of the file still apply. A rejected document keeps its object's last good
//! version (a half-written edit never deletes a policy); where it cannot even be told which
//! object it was, the file keeps every object it last held that its new read lacks. A file or
//! entry that cannot be read at all (permissions, a symlink loop) keeps its last objects. Each
//! problem is logged once when it appears and counted. Two documents naming the same object
//! are a warning; the later file (in path order) wins.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ClusterObject, ObjectId, ObjectKind, SourceEvent};

/// How often the directory is read where inotify cannot watch it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the directory is read in full although inotify reported nothing (a change it
/// cannot see: a network file system, an overflowed event queue).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// After a notification, the further ones of the same burst are awaited this long, so that a
/// tool writing many files is read once.
const SETTLE: Duration = Duration::from_millis(10);

/// Why a file, or one document of it, was not taken.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document} (line {line}) is not UTF-8 text")]
    NotText {
        path: PathBuf,
        document: usize,
        line: usize,
    },
    #[error("{path}: document {document} (line {line}) is not valid YAML")]
    Yaml {
        path: PathBuf,
        document: usize,
        line: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: document {document} (line {line}, {kind}) does not parse")]
    Object {
        path: PathBuf,
        document: usize,
        line: usize,
        kind: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// What one file holds: the objects of the documents that parse, and the documents rejected
/// (with the object each named, where that could be read).
#[derive(Debug, Default)]
pub struct FileRead {
    pub objects: Vec<ClusterObject>,
    pub rejected: Vec<(FileError, Option<ObjectId>)>,
}

/// A problem found reading the directory: its reason label and what to log.
type Problem = (&'static str, String);

/// Watches `dir` and sends events until the receiver is dropped.
pub async fn run(dir: PathBuf, events: mpsc::Sender<SourceEvent>) {
    let mut kept: BTreeMap<PathBuf, Vec<ClusterObject>> = BTreeMap::new();
    // The version of each file `kept` holds, and the problems reading it found.
    let mut read_as: BTreeMap<PathBuf, (FileStamp, Vec<Problem>)> = BTreeMap::new();
    let mut problems = Problems::default();
    let mut current: BTreeMap<ObjectId, ClusterObject> = BTreeMap::new();
    let mut first = true;
    let mut watch = match DirWatch::new(&dir) {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(
                dir = %dir.display(),
                error = &error as &dyn std::error::Error,
                "cannot watch the objects directory with inotify: reading it every 250 ms instead"
            );
            None
        }
    };
    loop {
        let mut found = Vec::new();
        let mut changed = first;
        let known: BTreeMap<PathBuf, FileStamp> = read_as
            .iter()
            .map(|(path, (stamp, _))| (path.clone(), *stamp))
            .collect();
        match read_directory(&dir, &known) {
            Ok(read) => {
                changed |= known.keys().any(|path| !read.contains_key(path));
                kept.retain(|path, _| read.contains_key(path));
                read_as.retain(|path, _| read.contains_key(path));
                for (path, entry) in read {
                    changed |= !matches!(entry, Entry::Unchanged);
                    match entry {
                        Entry::Unchanged => {
                            if let Some((_, file_problems)) = read_as.get(&path) {
                                found.extend(file_problems.iter().cloned());
                            }
                        }
                        Entry::Read(stamp, Ok(file)) => {
                            let mut file_problems = Vec::new();
                            let objects = keep_last_good(kept.get(&path), file, &mut file_problems);
                            found.extend(file_problems.iter().cloned());
                            kept.insert(path.clone(), objects);
                            read_as.insert(path, (stamp, file_problems));
                        }
                        // Unreadable as a whole: what it held stays; read again next time.
                        Entry::Read(_, Err(error)) | Entry::Unreadable(error) => {
                            found.push(("unreadable_file", error.to_string()));
                            read_as.remove(&path);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!(error = &error as &dyn std::error::Error, "listing failed");
                found.push((
                    "unreadable_dir",
                    format!("cannot list {}: {error}", dir.display()),
                ));
            }
        }
        if first && found.iter().any(|(reason, _)| *reason == "unreadable_dir") {
            // Nothing can be known: do not pretend an empty cluster.
            if !problems.report(found, &events).await {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        }
        if !changed {
            // Every file as last read: the same objects, the same problems.
            if !problems.report(found, &events).await {
                return;
            }
            wait_for_change(&mut watch, &dir).await;
            continue;
        }
        let wanted = merge(&kept, &mut found);
        if !problems.report(found, &events).await {
            return;
        }
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
        wait_for_change(&mut watch, &dir).await;
    }
}

/// Until the directory may have changed: an inotify event or the rescan interval, else the
/// poll interval (trying to watch again after it: the directory may exist by then).
async fn wait_for_change(watch: &mut Option<DirWatch>, dir: &Path) {
    let Some(dir_watch) = watch else {
        tokio::time::sleep(POLL_INTERVAL).await;
        *watch = DirWatch::new(dir).ok();
        return;
    };
    match tokio::time::timeout(RESCAN_INTERVAL, dir_watch.changed()).await {
        Err(_) => {}
        Ok(Ok(Watch::Held)) => tokio::time::sleep(SETTLE).await,
        // The directory was removed or replaced: watch what is at the path now.
        Ok(Ok(Watch::Lost)) => *watch = DirWatch::new(dir).ok(),
        Ok(Err(error)) => {
            tracing::warn!(
                dir = %dir.display(),
                error = &error as &dyn std::error::Error,
                "watching the objects directory failed: reading it every 250 ms instead"
            );
            *watch = None;
        }
    }
}

/// Whether a watch still follows the directory after its events.
enum Watch {
    Held,
    Lost,
}

/// An inotify watch on the directory's entries: created, removed, renamed in or out, written,
/// closed after writing, attributes changed (a symlink's target swapped, as a mounted
/// ConfigMap's `..data` is, shows as a rename in the directory).
struct DirWatch(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl DirWatch {
    fn new(dir: &Path) -> std::io::Result<Self> {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        // SAFETY: plain inotify_init1(2); the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the directory's path holds a NUL byte"))?;
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd stays open and names the same inotify instance for as long
        // as the AsyncFd that owns it.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        };
        Ok(Self(registered?))
    }

    /// Waits for events and drains them. Which files they name does not matter (the read
    /// compares every file's stamp); only whether the directory itself went away.
    async fn changed(&mut self) -> std::io::Result<Watch> {
        use std::os::fd::AsRawFd as _;
        let mut ready = self.0.readable().await?;
        let mut buffer = [0u8; 4096];
        let mut watch = Watch::Held;
        loop {
            // SAFETY: `buffer` is valid for writes of its length.
            let length = unsafe {
                libc::read(
                    self.0.get_ref().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if let Ok(length) = usize::try_from(length)
                && length > 0
            {
                if directory_gone(&buffer[..length]) {
                    watch = Watch::Lost;
                }
                continue;
            }
            let error = std::io::Error::last_os_error();
            if length < 0 && error.kind() == std::io::ErrorKind::WouldBlock {
                ready.clear_ready();
                return Ok(watch);
            }
            return Err(if length == 0 {
                std::io::Error::other("the inotify descriptor closed")
            } else {
                error
            });
        }
    }
}

/// Whether a read of `struct inotify_event`s (wd, mask, cookie, len, name) says the watched
/// directory itself was deleted, moved or unwatched.
fn directory_gone(mut events: &[u8]) -> bool {
    let gone = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED;
    while events.len() >= 16 {
        let field = |at: usize| {
            u32::from_ne_bytes([events[at], events[at + 1], events[at + 2], events[at + 3]])
        };
        if field(4) & gone != 0 {
            return true;
        }
        events = events.get(16 + field(12) as usize..).unwrap_or_default();
    }
    false
}

/// The objects a file is taken to hold: those of its documents that parse, plus the last good
/// version of what its rejected documents named (all of its last objects the new read lacks
/// when a rejected document could not be identified). Rejections go to `found`.
fn keep_last_good(
    previous: Option<&Vec<ClusterObject>>,
    file: FileRead,
    found: &mut Vec<Problem>,
) -> Vec<ClusterObject> {
    let FileRead {
        mut objects,
        rejected,
    } = file;
    let previous = previous.map(Vec::as_slice).unwrap_or_default();
    let read: BTreeSet<ObjectId> = objects.iter().map(ClusterObject::id).collect();
    let mut keep: BTreeSet<ObjectId> = BTreeSet::new();
    for (error, id) in rejected {
        found.push(("rejected_document", error.to_string()));
        match id {
            Some(id) => {
                keep.insert(id);
            }
            None => keep.extend(previous.iter().map(ClusterObject::id)),
        }
    }
    objects.extend(
        previous
            .iter()
            .filter(|object| {
                let id = object.id();
                keep.contains(&id) && !read.contains(&id)
            })
            .cloned(),
    );
    objects
}

/// Every object of every file; a second document naming an object already seen replaces it
/// (files in path order) and is reported in `found`.
fn merge(
    kept: &BTreeMap<PathBuf, Vec<ClusterObject>>,
    found: &mut Vec<Problem>,
) -> BTreeMap<ObjectId, ClusterObject> {
    let mut wanted: BTreeMap<ObjectId, (&Path, ClusterObject)> = BTreeMap::new();
    for (path, objects) in kept {
        for object in objects {
            let id = object.id();
            if let Some((earlier, _)) = wanted.get(&id) {
                found.push((
                    "duplicate_object",
                    format!(
                        "{id} is in {} and in {}: using the latter",
                        earlier.display(),
                        path.display()
                    ),
                ));
            }
            wanted.insert(id, (path, object.clone()));
        }
    }
    wanted
        .into_iter()
        .map(|(id, (_, object))| (id, object))
        .collect()
}

/// Problems reported so far: each is logged and counted once, when it appears, and again
/// if it goes away and comes back.
#[derive(Default)]
struct Problems {
    reported: BTreeSet<Problem>,
}

impl Problems {
    /// Reports what is new in `found`; returns false when the receiver is gone.
    async fn report(&mut self, found: Vec<Problem>, events: &mpsc::Sender<SourceEvent>) -> bool {
        let found: BTreeSet<Problem> = found.into_iter().collect();
        for (reason, detail) in found.difference(&self.reported) {
            tracing::warn!(reason, detail, "objects directory: not taken as written");
            let problem = SourceEvent::Problem {
                reason,
                detail: detail.clone(),
            };
            if events.send(problem).await.is_err() {
                return false;
            }
        }
        self.reported = found;
        true
    }
}

const KINDS: [ObjectKind; 5] = [
    ObjectKind::Namespace,
    ObjectKind::Pod,
    ObjectKind::NetworkPolicy,
    ObjectKind::ConfigMap,
    ObjectKind::Service,
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

/// What identifies a version of a file: a write changes its size, times or inode (an atomic
/// replace), so an unchanged stamp needs no new read (the directory is polled every 250 ms;
/// parsing every file each time cost an idle agent half a core at 10,000 policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// An objects file as one poll finds it.
#[derive(Debug)]
enum Entry {
    /// As it was when last read.
    Unchanged,
    /// New or changed: read now.
    Read(FileStamp, Result<FileRead, FileError>),
    /// Its metadata cannot be read (a dangling symlink or a loop, permissions).
    Unreadable(FileError),
}

/// Every entry with an objects file's extension, read again only if its stamp is not the
/// one in `known`. Entries that are no regular file (a directory named `x.yaml`) are not
/// objects files.
fn read_directory(
    dir: &Path,
    known: &BTreeMap<PathBuf, FileStamp>,
) -> std::io::Result<BTreeMap<PathBuf, Entry>> {
    let mut read = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(error) => {
                read.insert(
                    dir.to_owned(),
                    Entry::Unreadable(FileError::Read {
                        path: dir.to_owned(),
                        source: error,
                    }),
                );
                continue;
            }
        };
        let wanted = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"));
        if !wanted {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(metadata) if !metadata.is_file() => {}
            Ok(metadata) => {
                let stamp = FileStamp::of(&metadata);
                let entry = if known.get(&path) == Some(&stamp) {
                    Entry::Unchanged
                } else {
                    Entry::Read(stamp, read_file(&path))
                };
                read.insert(path, entry);
            }
            Err(source) => {
                read.insert(
                    path.clone(),
                    Entry::Unreadable(FileError::Read { path, source }),
                );
            }
        }
    }
    Ok(read)
}

/// Parses every document of one file.
pub fn read_file(path: &Path) -> Result<FileRead, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_documents(path, &bytes))
}

/// Parses a multi-document YAML text (`path` only names it in errors), one document at a
/// time: each is split off at its `---` line before it is decoded, so that one that is not
/// text or not YAML costs only itself. Documents of other kinds are ignored.
pub fn parse_documents(path: &Path, bytes: &[u8]) -> FileRead {
    let mut read = FileRead::default();
    let documents = split_documents(bytes)
        .into_iter()
        .filter(|(_, chunk)| !chunk.iter().all(u8::is_ascii_whitespace));
    for (index, (line, chunk)) in documents.enumerate() {
        let document = index + 1;
        let Ok(text) = std::str::from_utf8(chunk) else {
            let error = FileError::NotText {
                path: path.to_owned(),
                document,
                line,
            };
            read.rejected.push((error, None));
            continue;
        };
        for value in serde_yaml::Deserializer::from_str(text) {
            match serde_yaml::Value::deserialize(value) {
                Ok(value) => collect(path, document, line, value, &mut read),
                Err(source) => {
                    let error = FileError::Yaml {
                        path: path.to_owned(),
                        document,
                        line,
                        source,
                    };
                    read.rejected.push((error, None));
                    break;
                }
            }
        }
    }
    read
}

/// The documents of a YAML stream, each with the line it starts on: split at every line that
/// starts with the document marker `---` (the rest of that line belongs to the new document).
fn split_documents(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in bytes.split_inclusive(|byte| *byte == b'\n').enumerate() {
        let marker =
            line.starts_with(b"---") && line.get(3).is_none_or(|next| next.is_ascii_whitespace());
        if marker {
            documents.push((start_line, &bytes[start..offset]));
            start = offset + 3;
            start_line = index + 1;
        }
        offset += line.len();
    }
    documents.push((start_line, &bytes[start..]));
    documents
}

fn collect(
    path: &Path,
    document: usize,
    line: usize,
    value: serde_yaml::Value,
    read: &mut FileRead,
) {
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(|kind| kind.as_str())
        .unwrap_or_default()
        .to_owned();
    let id = identify(&kind, &value);
    let object = match kind.as_str() {
        "Namespace" => serde_yaml::from_value(value).map(|o| ClusterObject::Namespace(Box::new(o))),
        "Pod" => {
            serde_yaml::from_value::<super::SlimPod>(value).map(|o| ClusterObject::Pod(Box::new(o)))
        }
        "NetworkPolicy" => {
            serde_yaml::from_value(value).map(|o| ClusterObject::NetworkPolicy(Box::new(o)))
        }
        "ConfigMap" => serde_yaml::from_value(value).map(|o| ClusterObject::ConfigMap(Box::new(o))),
        "Service" => serde_yaml::from_value(value).map(|o| ClusterObject::Service(Box::new(o))),
        "List" => {
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    collect(path, document, line, item, read);
                }
            }
            return;
        }
        // Services, Deployments and the like are not ours to read.
        _ => return,
    };
    match object {
        Ok(object) => read.objects.push(object.slim()),
        Err(source) => {
            let error = FileError::Object {
                path: path.to_owned(),
                document,
                line,
                kind,
                source,
            };
            read.rejected.push((error, id));
        }
    }
}

/// The object a document names, read from its raw fields (for one that does not parse).
fn identify(kind: &str, value: &serde_yaml::Value) -> Option<ObjectId> {
    let kind = match kind {
        "Namespace" => ObjectKind::Namespace,
        "Pod" => ObjectKind::Pod,
        "NetworkPolicy" => ObjectKind::NetworkPolicy,
        "ConfigMap" => ObjectKind::ConfigMap,
        "Service" => ObjectKind::Service,
        _ => return None,
    };
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_owned();
    let namespace = match kind {
        ObjectKind::Namespace => String::new(),
        _ => metadata
            .get("namespace")
            .and_then(|namespace| namespace.as_str())
            .unwrap_or_default()
            .to_owned(),
    };
    Some(ObjectId {
        kind,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(objects: &[ClusterObject]) -> Vec<String> {
        objects
            .iter()
            .map(|object| object.id().to_string())
            .collect()
    }

    fn policy(name: &str, port: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: {port}\n"
        )
    }

    #[test]
    fn multi_document_files_yield_every_known_kind_and_skip_others() {
        // A Deployment is not ours to read.
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
apiVersion: apps/v1
kind: Deployment
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
        let read = parse_documents(Path::new("a.yaml"), text.as_bytes());
        assert!(read.rejected.is_empty(), "{:?}", read.rejected);
        assert_eq!(
            ids(&read.objects),
            [
                "namespace test-np",
                "service nginx",
                "networkpolicy test-np/deny"
            ]
        );
    }

    #[test]
    fn a_bad_document_is_rejected_alone_and_named() {
        let mut bytes = policy("first", "80").into_bytes();
        // A port that overflows, binary garbage, and text that is not YAML, between good ones.
        bytes.extend_from_slice(format!("---\n{}", policy("overflow", "99999999999")).as_bytes());
        bytes.extend_from_slice(b"---\n\xff\xfe\x00garbage\x81\n");
        bytes.extend_from_slice(b"--- # a comment on the marker line\nkind: [\n");
        bytes.extend_from_slice(format!("---\n{}", policy("last", "443")).as_bytes());
        let read = parse_documents(Path::new("mixed.yaml"), &bytes);
        assert_eq!(
            ids(&read.objects),
            ["networkpolicy default/first", "networkpolicy default/last"]
        );
        let rejected: Vec<(String, Option<String>)> = read
            .rejected
            .iter()
            .map(|(error, id)| (error.to_string(), id.as_ref().map(ToString::to_string)))
            .collect();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(
            rejected[0]
                .0
                .contains("mixed.yaml: document 2 (line 11, NetworkPolicy)"),
            "{rejected:?}"
        );
        assert_eq!(
            rejected[0].1.as_deref(),
            Some("networkpolicy default/overflow")
        );
        assert!(
            rejected[1].0.contains("document 3 (line 22) is not UTF-8"),
            "{rejected:?}"
        );
        assert!(
            rejected[2]
                .0
                .contains("document 4 (line 24) is not valid YAML"),
            "{rejected:?}"
        );
    }

    #[test]
    fn a_rejected_document_keeps_the_last_good_version_of_its_object() {
        let path = Path::new("p.yaml");
        let before = parse_documents(
            path,
            format!("{}---\n{}", policy("a", "80"), policy("b", "81")).as_bytes(),
        );
        let mut found = Vec::new();
        let kept = keep_last_good(None, before, &mut found);
        assert_eq!(
            ids(&kept),
            ["networkpolicy default/a", "networkpolicy default/b"]
        );

        // `b` is broken by an edit: its last good version stays, `a` follows its edit.
        let edited = parse_documents(
            path,
            format!("{}---\n{}", policy("a", "8080"), policy("b", "70000000000")).as_bytes(),
        );
        let kept = keep_last_good(Some(&kept), edited, &mut found);
        assert_eq!(
            ids(&kept),
            ["networkpolicy default/a", "networkpolicy default/b"]
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let ClusterObject::NetworkPolicy(b) = &kept[1] else {
            panic!("a policy")
        };
        let port = b
            .spec
            .as_ref()
            .and_then(|spec| spec.ingress.as_ref())
            .map(|rules| rules[0].ports.clone());
        assert!(format!("{port:?}").contains("81"), "{port:?}");

        // A document that cannot be identified keeps every object the read lacks.
        let garbled = parse_documents(
            path,
            format!("{}---\nkind: [\n", policy("a", "8080")).as_bytes(),
        );
        let kept = keep_last_good(Some(&kept), garbled, &mut found);
        assert_eq!(
            ids(&kept),
            ["networkpolicy default/a", "networkpolicy default/b"]
        );
    }

    #[test]
    fn the_same_object_in_two_files_is_reported_and_the_later_file_wins() {
        let mut kept = BTreeMap::new();
        for (file, port) in [("a.yaml", "80"), ("b.yaml", "81")] {
            let read = parse_documents(Path::new(file), policy("same", port).as_bytes());
            kept.insert(PathBuf::from(file), read.objects);
        }
        let mut found = Vec::new();
        let wanted = merge(&kept, &mut found);
        assert_eq!(wanted.len(), 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "duplicate_object");
        assert!(
            found[0]
                .1
                .contains("networkpolicy default/same is in a.yaml and in b.yaml"),
            "{found:?}"
        );
        assert!(format!("{wanted:?}").contains("81"));
    }

    #[test]
    fn unreadable_entries_are_reported_by_name() {
        let dir = std::env::temp_dir().join(format!("netpol-objects-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("good.yaml"), policy("good", "80")).expect("write");
        std::os::unix::fs::symlink(dir.join("loop.yaml"), dir.join("loop.yaml")).expect("symlink");
        let read = read_directory(&dir, &BTreeMap::new()).expect("listing");
        let Entry::Read(stamp, Ok(good)) = &read[&dir.join("good.yaml")] else {
            panic!("the good file is read: {read:?}");
        };
        assert_eq!(ids(&good.objects), ["networkpolicy default/good"]);
        let Entry::Unreadable(error) = &read[&dir.join("loop.yaml")] else {
            panic!("a loop: {read:?}");
        };
        assert!(error.to_string().contains("loop.yaml"), "{error}");

        // Unchanged files are not read again; a rewrite (in place or by rename) is.
        let known = BTreeMap::from([(dir.join("good.yaml"), *stamp)]);
        let again = read_directory(&dir, &known).expect("listing");
        assert!(matches!(again[&dir.join("good.yaml")], Entry::Unchanged));
        std::fs::write(dir.join("good.yaml"), policy("good", "81")).expect("rewrite");
        let again = read_directory(&dir, &known).expect("listing");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            again[&dir.join("good.yaml")],
            Entry::Read(_, Ok(_))
        ));
    }

    /// A change in the directory wakes the watch at once; the directory replaced under its
    /// path loses it; the source, waiting on the watch, sends a new file's object.
    #[tokio::test]
    async fn a_change_wakes_the_watch_and_reaches_the_source_at_once() {
        let dir = std::env::temp_dir().join(format!("netpol-objects-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut watch = DirWatch::new(&dir).expect("inotify");
        std::fs::write(dir.join("p.yaml"), policy("p", "80")).expect("write");
        let woke = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert!(
            matches!(woke, Ok(Ok(Watch::Held))),
            "a write wakes the watch"
        );
        let moved = dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&dir, &moved).expect("rename");
        let woke = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
        assert!(
            matches!(woke, Ok(Ok(Watch::Lost))),
            "the directory moved away"
        );
        std::fs::rename(&moved, &dir).expect("rename back");

        let (events_tx, mut events) = mpsc::channel(64);
        let source = tokio::spawn(run(dir.clone(), events_tx));
        // The initial list, then quiet for longer than a poll interval.
        let mut initial = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), events.recv()).await
        {
            initial.push(event);
        }
        assert!(format!("{initial:?}").contains("\"p\""), "{initial:?}");
        std::fs::write(dir.join("q.yaml"), policy("q", "81")).expect("write");
        let sent = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = events.recv().await {
                if format!("{event:?}").contains("\"q\"") {
                    return true;
                }
            }
            false
        })
        .await;
        source.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(sent, Ok(true), "the new policy is sent at once");
    }

    #[test]
    fn the_directory_is_gone_only_on_its_own_events() {
        let event = |mask: u32, name: &[u8]| {
            let mut bytes = 1i32.to_ne_bytes().to_vec();
            bytes.extend(mask.to_ne_bytes());
            bytes.extend(0u32.to_ne_bytes());
            bytes.extend((name.len() as u32).to_ne_bytes());
            bytes.extend(name);
            bytes
        };
        let created = event(libc::IN_CREATE, b"p.yaml\0\0");
        assert!(!directory_gone(&created));
        let mut both = created.clone();
        both.extend(event(libc::IN_IGNORED, b""));
        assert!(directory_gone(&both));
        assert!(!directory_gone(&created[..10]), "a short read is no event");
    }
}
