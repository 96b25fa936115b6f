//! The agent's side of the chained CNI plugin (`netpol-cni`, `cni-plugin/`): the socket the
//! plugin asks on, and the plugin's entry in the node's CNI configuration.
//!
//! - [`serve`] accepts one request per connection and hands it to the runtime as a
//!   [`CniCall`]; the runtime answers ADD only once the pod is enforced (`runtime.rs`).
//! - [`ChainInstaller`] keeps `{"type": "netpol-cni"}` at the end of the plugin list of the
//!   conflist the runtime uses (the first file of the directory, as libcni picks it). The CNI's
//!   owner may rewrite that file (Terway regenerates its conflist when it restarts): the
//!   installer notices and appends the entry again.
//! - [`install_plugin`] and [`remove_from_chain`] are the DaemonSet's install step and the
//!   uninstall's.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netpol_cni::{PLUGIN_TYPE, Request, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// One plugin request and where its answer goes.
#[derive(Debug)]
pub struct CniCall {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// A request longer than this is no plugin's.
const MAX_REQUEST: usize = 64 * 1024;

/// Listens on `socket` (replacing a stale socket file) and passes every request to `calls`.
pub async fn serve(socket: PathBuf, calls: mpsc::Sender<CniCall>) -> Result<()> {
    if let Some(parent) = socket.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::remove_file(&socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing the old {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    // Only root (the runtime running the plugin) may ask.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving the CNI plugin");
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting a CNI connection")?;
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, calls).await {
                tracing::warn!(error = format!("{error:#}"), "a CNI plugin request failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<CniCall>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    reader
        .read_line(&mut line)
        .await
        .context("reading the request")?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            tracing::debug!(?request, "CNI request");
            if calls.send(CniCall { request, reply }).await.is_err() {
                Response {
                    ok: false,
                    message: "the agent is shutting down".to_owned(),
                }
            } else {
                answer.await.unwrap_or_else(|_| Response {
                    ok: false,
                    message: "the agent dropped the request".to_owned(),
                })
            }
        }
        Err(error) => Response {
            ok: false,
            message: format!("unreadable request: {error}"),
        },
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .context("writing the answer")
}

/// Copies the plugin binary into the runtime's CNI binary directory, atomically (a runtime
/// may be executing the old one).
pub fn install_plugin(binary: &Path, bin_dir: &Path) -> Result<PathBuf> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let partial = bin_dir.join(format!(".{PLUGIN_TYPE}.partial"));
    fs::copy(binary, &partial)
        .with_context(|| format!("copying {} to {}", binary.display(), partial.display()))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", partial.display()))?;
    fs::rename(&partial, &target).with_context(|| format!("installing {}", target.display()))?;
    Ok(target)
}

/// The conflist the runtime uses: the first `.conflist`/`.conf`/`.json` file by name, as
/// libcni orders them.
pub fn active_config(conf_dir: &Path) -> Result<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .with_context(|| format!("reading {}", conf_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| ext == "conflist" || ext == "conf" || ext == "json")
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// Whether the configuration's plugin list ends with ours (pointing at `socket`).
pub fn chain_includes_plugin(config: &serde_json::Value) -> bool {
    config["plugins"]
        .as_array()
        .is_some_and(|plugins| plugins.iter().any(|plugin| plugin["type"] == PLUGIN_TYPE))
}

/// `config` with our entry appended to its plugin list (a single-plugin `.conf` becomes a
/// list), or `None` when it holds it already.
pub fn with_plugin(config: &serde_json::Value, socket: &Path) -> Result<Option<serde_json::Value>> {
    if chain_includes_plugin(config) {
        return Ok(None);
    }
    let mut list = if config["plugins"].is_array() {
        config.clone()
    } else if config["type"].is_string() {
        // A `.conf` of one plugin: the same network as a list.
        let mut single = config.clone();
        let Some(object) = single.as_object_mut() else {
            bail!("the CNI configuration is not a JSON object");
        };
        object.remove("cniVersion");
        object.remove("name");
        serde_json::json!({
            "cniVersion": config["cniVersion"],
            "name": config["name"],
            "plugins": [single],
        })
    } else {
        bail!("the CNI configuration has neither `plugins` nor `type`");
    };
    let plugins = list["plugins"]
        .as_array_mut()
        .context("`plugins` is not a list")?;
    plugins.push(serde_json::json!({"type": PLUGIN_TYPE, "socket": socket}));
    Ok(Some(list))
}

/// `config` without our entry, or `None` when it had none.
pub fn without_plugin(config: &serde_json::Value) -> Option<serde_json::Value> {
    if !chain_includes_plugin(config) {
        return None;
    }
    let mut list = config.clone();
    if let Some(plugins) = list["plugins"].as_array_mut() {
        plugins.retain(|plugin| plugin["type"] != PLUGIN_TYPE);
    }
    Some(list)
}

/// Rewrites `path` atomically (a runtime may read it at any moment), keeping its mode.
fn write_config(path: &Path, config: &serde_json::Value) -> Result<()> {
    let partial = path.with_extension("netpol-partial");
    let mut file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(serde_json::to_string_pretty(config)?.as_bytes())
        .with_context(|| format!("writing {}", partial.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", partial.display()))?;
    if let Ok(metadata) = fs::metadata(path) {
        let _ = fs::set_permissions(
            &partial,
            fs::Permissions::from_mode(metadata.mode() & 0o7777),
        );
    }
    fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Removes our entry from the active configuration (`netpol-agent cleanup`). Returns the file
/// it changed.
pub fn remove_from_chain(conf_dir: &Path) -> Result<Option<PathBuf>> {
    let Some(path) = active_config(conf_dir)? else {
        return Ok(None);
    };
    let config = read_config(&path)?;
    match without_plugin(&config) {
        Some(config) => {
            write_config(&path, &config)?;
            Ok(Some(path))
        }
        None => Ok(None),
    }
}

/// Keeps the plugin in the chain: appends it to the active configuration, and again whenever
/// the file's owner rewrites it without it.
pub struct ChainInstaller {
    conf_dir: PathBuf,
    socket: PathBuf,
    /// (path, inode, size, mtime) of the file as last seen, to notice rewrites cheaply.
    seen: Option<(PathBuf, u64, u64, i64)>,
}

/// How often the installer looks at the configuration directory.
pub const CHAIN_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl ChainInstaller {
    pub fn new(conf_dir: PathBuf, socket: PathBuf) -> Self {
        Self {
            conf_dir,
            socket,
            seen: None,
        }
    }

    /// Looks once: the chain includes the plugin when this returns `Ok`.
    pub fn check(&mut self) -> Result<()> {
        let Some(path) = active_config(&self.conf_dir)? else {
            self.seen = None;
            bail!(
                "no CNI configuration in {} yet (the node's CNI writes it)",
                self.conf_dir.display()
            );
        };
        let metadata =
            fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let stamp = (
            path.clone(),
            metadata.ino(),
            metadata.size(),
            metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000,
        );
        if self.seen.as_ref() == Some(&stamp) {
            return Ok(());
        }
        let config = read_config(&path)?;
        if let Some(config) = with_plugin(&config, &self.socket)? {
            write_config(&path, &config)?;
            tracing::info!(config = %path.display(), "appended the netpol-cni plugin to the CNI chain");
            let metadata =
                fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            self.seen = Some((
                path,
                metadata.ino(),
                metadata.size(),
                metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000,
            ));
        } else {
            self.seen = Some(stamp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptp() -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "pods",
            "plugins": [{"type": "ptp", "ipam": {"type": "host-local"}}],
        })
    }

    #[test]
    fn should_append_the_plugin_once_and_remove_only_it() {
        let socket = Path::new("/run/netpol/cni.sock");
        let with = with_plugin(&ptp(), socket)
            .expect("valid")
            .expect("appended");
        assert_eq!(with["plugins"][1]["type"], PLUGIN_TYPE);
        assert_eq!(
            with["plugins"][0],
            ptp()["plugins"][0],
            "the chain before is untouched"
        );
        assert!(
            with_plugin(&with, socket).expect("valid").is_none(),
            "idempotent"
        );
        assert_eq!(without_plugin(&with), Some(ptp()));
        assert_eq!(without_plugin(&ptp()), None);
    }

    #[test]
    fn should_turn_a_single_plugin_conf_into_a_list() {
        let conf = serde_json::json!({"cniVersion": "0.3.1", "name": "n", "type": "bridge"});
        let list = with_plugin(&conf, Path::new("/s"))
            .expect("valid")
            .expect("appended");
        assert_eq!(list["name"], "n");
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["plugins"][1]["type"], PLUGIN_TYPE);
    }

    #[test]
    fn should_notice_a_rewrite_without_the_plugin_and_append_again() {
        let dir = std::env::temp_dir().join(format!("netpol-cni-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("10-pods.conflist");
        fs::write(&file, ptp().to_string()).expect("write");
        fs::write(dir.join("20-later.conflist"), ptp().to_string()).expect("write");
        let mut installer = ChainInstaller::new(dir.clone(), PathBuf::from("/s"));
        installer.check().expect("installed");
        assert!(chain_includes_plugin(&read_config(&file).expect("json")));
        assert!(
            !chain_includes_plugin(&read_config(&dir.join("20-later.conflist")).expect("json")),
            "only the active configuration changes"
        );
        // The CNI's owner writes its own version again.
        fs::write(&file, ptp().to_string()).expect("rewrite");
        installer.check().expect("installed");
        assert!(chain_includes_plugin(&read_config(&file).expect("json")));
        assert_eq!(
            remove_from_chain(&dir).expect("removed"),
            Some(file.clone())
        );
        assert!(!chain_includes_plugin(&read_config(&file).expect("json")));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
