//! The `netpol-agent` command line: raw flags ([`Cli`]) are validated into a [`RunConfig`]
//! before anything starts; `main.rs` only prints the error chain.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::{mpsc, watch};

use crate::{
    backend::{
        InterfaceRole,
        ebpf::{
            AttachMode, BPFFS, ClockChoice, Datapath, EbpfBackend, EventThread, LoadOptions,
            MapSizes, ensure_bpffs,
        },
    },
    discovery,
    metrics::Metrics,
    model::Cidr,
    runtime::{Runtime, RuntimeConfig},
    source::{self, ObjectKind},
};

#[derive(Parser, Debug)]
#[command(
    name = "netpol-agent",
    version,
    about = "eBPF NetworkPolicy agent for one Kubernetes node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the cluster and enforce NetworkPolicy on this node.
    Run(Box<RunArgs>),
    /// Remove every program, filter, link and pinned map the agent installed.
    Cleanup(CleanupArgs),
    /// Copy the chained CNI plugin into the runtime's CNI binary directory (the DaemonSet's
    /// install step).
    InstallCni(InstallCniArgs),
    /// The agent's state on this node: backend, sync, endpoints, maps, rejections.
    Status(crate::debug::Target),
    /// Every local pod: addresses, interface, isolation and the policies causing it.
    Endpoints(crate::debug::Target),
    /// Why a new connection is allowed or denied on this node: the engine's answer and the
    /// datapath's (the maps read back from the kernel), compared.
    Explain(crate::debug::ExplainArgs),
    /// The datapath's maps, translated to pods, policies and selectors.
    Maps(crate::debug::MapsArgs),
    /// Drop and audit events as they happen, with pod and policy names.
    Monitor(crate::debug::MonitorArgs),
    /// The datapath's connection tracking.
    Ct(crate::debug::CtArgs),
}

#[derive(clap::Args, Debug)]
pub struct InstallCniArgs {
    /// The runtime's CNI binary directory (as the DaemonSet mounts it).
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, default_value = "/usr/local/bin/netpol-cni")]
    pub plugin: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// This node's name (spec.nodeName of its pods).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Read objects from YAML files in this directory instead of an API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub objects_dir: Option<PathBuf>,
    /// Kubeconfig to reach the API server (default: in-cluster config, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Enforcement backend.
    #[arg(long, env = "BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Where /healthz, /readyz and /metrics are served (the probes' address: keep it local).
    #[arg(long, default_value = "127.0.0.1:9990")]
    pub listen: SocketAddr,
    /// A second address serving the same endpoints for Prometheus to scrape, such as
    /// `0.0.0.0:9991` (the agent runs in the host network: anything that reaches the node
    /// reaches it). Off unless set; an empty value is off.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Service ranges (repeatable, or comma-separated) whose egress is decided after
    /// kube-proxy's DNAT, in addition to the addresses the agent learns from Service objects
    /// (cluster, external and load-balancer IPs). Empty entries are ignored.
    #[arg(
        long = "service-cidr",
        env = "SERVICE_CIDR",
        value_delimiter = ',',
        default_value = "10.96.0.0/12"
    )]
    pub service_cidrs: Vec<String>,
    /// Uplink interfaces (repeatable, or comma-separated); default (or empty): those holding
    /// the default routes.
    #[arg(long = "uplink", env = "UPLINKS", value_delimiter = ',')]
    pub uplinks: Vec<String>,
    /// Name prefixes of the host side of pods' links (repeatable, or comma-separated; `cali`
    /// for Terway and Calico, `veth` for the ptp plugin): such an interface that no known pod
    /// routes through is closed, all its traffic dropped (reason `unknown_pod`), until the
    /// agent knows its pod. Empty: off.
    #[arg(
        long = "pod-interface-prefix",
        env = "POD_INTERFACE_PREFIXES",
        value_delimiter = ','
    )]
    pub pod_interface_prefixes: Vec<String>,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = agent_common::PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Attach with tc netlink (clsact) even where tcx is available.
    #[arg(long)]
    pub legacy_tc: bool,
    /// Seconds a watch of the API server may fail before /readyz fails (enforcement goes on
    /// with the last state known meanwhile).
    #[arg(long, default_value_t = 60)]
    pub stale_after_seconds: u64,
    /// Serve the chained CNI plugin on this Unix socket: a pod's sandbox then starts only once
    /// its policies are enforced. Empty: off.
    #[arg(long, env = "CNI_SOCKET")]
    pub cni_socket: Option<String>,
    /// Keep the plugin in the chain of the active CNI configuration in this directory
    /// (appended once the agent is ready, appended again whenever the file is rewritten
    /// without it). Needs --cni-socket. Empty: the chain is left alone.
    #[arg(long, env = "CNI_CONF_DIR")]
    pub cni_conf_dir: Option<String>,
    /// Serve the debug API (`netpol-agent status`, `explain`, ...) on this Unix socket, and
    /// keep the names of the datapath's ids beside it for when the agent is down. Empty: off.
    #[arg(long, env = "API_SOCKET", default_value = crate::debug::DEFAULT_SOCKET)]
    pub api_socket: String,
    /// Pretend the kernel is this version when choosing the backend (tests).
    #[arg(long, hide = true)]
    pub assume_kernel: Option<String>,
    #[command(flatten)]
    pub sizes: SizeArgs,
}

#[derive(clap::Args, Debug)]
pub struct SizeArgs {
    /// Capacity of the endpoints map (local pod addresses).
    #[arg(long, default_value_t = MapSizes::default().endpoints)]
    pub max_endpoints: u32,
    /// Capacity of the address-prefix map.
    #[arg(long, default_value_t = MapSizes::default().ipcache)]
    pub max_prefixes: u32,
    /// Capacity of the policy map.
    #[arg(long, default_value_t = MapSizes::default().policy)]
    pub max_policy_entries: u32,
    /// Capacity of the Service addresses map (learned addresses and --service-cidr ranges).
    #[arg(long, default_value_t = MapSizes::default().services)]
    pub max_services: u32,
    /// How many times its starting size a full map may grow to while the agent runs (the
    /// endpoints, prefix, policy and Service maps; 1: never).
    #[arg(long, default_value_t = 16)]
    pub map_growth_limit: u32,
    /// Capacity of the connection-tracking map.
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    pub max_connections: u32,
}

#[derive(clap::Args, Debug)]
pub struct CleanupArgs {
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = agent_common::PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Remove the chained CNI plugin from the active configuration in this directory (first,
    /// so that no new pod waits for an agent that is gone).
    #[arg(long, env = "CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Remove the plugin binary from this directory.
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// eBPF on 4.19+ when the feature probe passes and the datapath loads, iptables
    /// otherwise.
    Auto,
    Ebpf,
    Iptables,
}

/// Where objects come from.
#[derive(Clone, Debug)]
pub enum SourceChoice {
    ObjectsDir(PathBuf),
    Kube(Option<PathBuf>),
}

/// Validated settings of `run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub node_name: String,
    pub source: SourceChoice,
    pub backend: BackendChoice,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub service_ranges: Vec<(IpAddr, u8)>,
    pub uplinks: Option<Vec<String>>,
    pub load: LoadOptions,
    pub assume_kernel: Option<KernelVersion>,
    pub stale_after: std::time::Duration,
    pub map_growth_limit: u32,
    pub cni_socket: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub pod_interface_prefixes: Vec<String>,
    pub api_socket: Option<PathBuf>,
}

/// An empty path from the environment (an empty ConfigMap key) means "not set".
fn non_empty(path: Option<String>) -> Option<PathBuf> {
    path.map(|path| path.trim().to_owned())
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

impl RunArgs {
    pub fn validate(self) -> Result<RunConfig> {
        if self.node_name.trim().is_empty() {
            bail!("--node-name (or NODE_NAME) must not be empty");
        }
        let mut service_ranges = Vec::new();
        for text in self
            .service_cidrs
            .iter()
            .map(|text| text.trim())
            .filter(|text| !text.is_empty())
        {
            let cidr = Cidr::parse(text)
                .map_err(|reason| anyhow::anyhow!("--service-cidr {text}: {reason}"))?;
            service_ranges.push((cidr.addr(), cidr.len()));
        }
        let uplinks: Vec<String> = self
            .uplinks
            .iter()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        let metrics_listen = match self.metrics_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().with_context(|| {
                format!("--metrics-listen (or METRICS_LISTEN) {text:?}: expected ADDRESS:PORT")
            })?),
        };
        let assume_kernel = self
            .assume_kernel
            .as_deref()
            .map(parse_kernel_version)
            .transpose()?;
        let SizeArgs {
            max_endpoints,
            max_prefixes,
            max_policy_entries,
            max_services,
            map_growth_limit,
            max_connections,
        } = self.sizes;
        let sizes = MapSizes {
            endpoints: max_endpoints,
            ipcache: max_prefixes,
            policy: max_policy_entries,
            services: max_services,
            conntrack: max_connections,
            ..MapSizes::default()
        };
        let cni_socket = non_empty(self.cni_socket);
        let cni_conf_dir = non_empty(self.cni_conf_dir);
        if cni_conf_dir.is_some() && cni_socket.is_none() {
            bail!(
                "--cni-conf-dir (or CNI_CONF_DIR) needs --cni-socket (or CNI_SOCKET): the plugin asks the agent there"
            );
        }
        let attach_mode = if self.legacy_tc {
            AttachMode::Netlink
        } else {
            AttachMode::detect()
        };
        Ok(RunConfig {
            node_name: self.node_name,
            source: match self.objects_dir {
                Some(dir) => SourceChoice::ObjectsDir(dir),
                None => SourceChoice::Kube(self.kubeconfig),
            },
            backend: self.backend,
            listen: self.listen,
            metrics_listen,
            service_ranges,
            uplinks: Some(uplinks).filter(|uplinks| !uplinks.is_empty()),
            load: LoadOptions {
                sizes,
                pin_dir: Some(self.pin_dir),
                attach_mode,
                clock: ClockChoice::Ticks,
            },
            assume_kernel,
            stale_after: std::time::Duration::from_secs(self.stale_after_seconds),
            map_growth_limit,
            cni_socket,
            cni_conf_dir,
            api_socket: non_empty(Some(self.api_socket)),
            pod_interface_prefixes: self
                .pod_interface_prefixes
                .iter()
                .map(|prefix| prefix.trim().to_owned())
                .filter(|prefix| !prefix.is_empty())
                .collect(),
        })
    }
}

fn parse_kernel_version(text: &str) -> Result<KernelVersion> {
    let mut parts = text.split('.').map(|part| part.parse::<u16>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        bail!("--assume-kernel {text}: expected MAJOR.MINOR[.PATCH]");
    };
    let patch = match parts.next() {
        Some(Ok(patch)) => patch,
        Some(Err(_)) => bail!("--assume-kernel {text}: bad patch level"),
        None => 0,
    };
    Ok(KernelVersion::new(major as u8, minor as u8, patch))
}

/// The backend `auto` picks, and why.
pub fn choose_backend(
    choice: BackendChoice,
    assumed: Option<KernelVersion>,
) -> (BackendChoice, String) {
    match choice {
        BackendChoice::Ebpf | BackendChoice::Iptables => {
            (choice, "requested with --backend".to_owned())
        }
        BackendChoice::Auto => {
            let kernel = assumed.map(Ok).unwrap_or_else(KernelVersion::current);
            let kernel = match kernel {
                Ok(kernel) => kernel,
                Err(error) => {
                    return (
                        BackendChoice::Iptables,
                        format!("kernel version unknown ({error})"),
                    );
                }
            };
            if kernel < KernelVersion::new(4, 19, 0) {
                return (
                    BackendChoice::Iptables,
                    format!("kernel {kernel} is older than 4.19"),
                );
            }
            let lpm = is_map_supported(MapType::LpmTrie).unwrap_or(false);
            let sched_cls = is_program_supported(ProgramType::SchedClassifier).unwrap_or(false);
            if !lpm || !sched_cls {
                return (
                    BackendChoice::Iptables,
                    format!(
                        "feature probe failed (LPM trie maps: {lpm}, sched_cls programs: {sched_cls})"
                    ),
                );
            }
            (
                BackendChoice::Ebpf,
                format!("kernel {kernel}, LPM trie maps and sched_cls programs available"),
            )
        }
    }
}

/// The eBPF backend as `run` starts it.
struct EbpfStart {
    backend: Box<dyn crate::backend::Backend + Send>,
    /// The drop-event reader, and the hub it feeds.
    events: EventThread,
    hub: Arc<crate::monitor::EventHub>,
    attach_mode: String,
}

/// The datapath loaded (maps, programs, pins), its drop-event reader started, the state
/// pinned by a previous run adopted.
fn ebpf_backend(config: &RunConfig, metrics: &Arc<Metrics>) -> Result<EbpfStart> {
    ensure_bpffs(std::path::Path::new(BPFFS)).context("bpffs is needed for pinned maps")?;
    let mut datapath = Datapath::load_with(&config.load).context("loading the eBPF datapath")?;
    let attach_mode = format!("{:?}", datapath.attach_mode()).to_lowercase();
    let hub = crate::monitor::EventHub::new();
    let events = datapath
        .event_reader()
        .context("opening the drop-event buffers")?
        .spawn(crate::monitor::EventFanout {
            metrics: Arc::clone(metrics),
            hub: Arc::clone(&hub),
        })
        .context("starting the drop-event reader")?;
    let backend = EbpfBackend::new(datapath)
        .context("adopting the pinned datapath state")?
        .with_growth_limit(config.map_growth_limit);
    Ok(EbpfStart {
        backend: Box::new(backend),
        events,
        hub,
        attach_mode,
    })
}

/// `netpol-agent run`.
pub async fn run(config: RunConfig) -> Result<()> {
    let metrics = Metrics::new();
    let mut event_hub = None;
    let (mut backend_choice, mut reason) = choose_backend(config.backend, config.assume_kernel);
    tracing::info!(backend = ?backend_choice, reason, "backend chosen");
    let mut event_thread: Option<EventThread> = None;
    let mut nflog_thread = None;
    let mut attach_mode = None;
    let mut ebpf = None;
    if backend_choice != BackendChoice::Iptables {
        match ebpf_backend(&config, &metrics) {
            Ok(start) => {
                ebpf = Some(start.backend);
                event_thread = Some(start.events);
                event_hub = Some(start.hub);
                attach_mode = Some(start.attach_mode);
            }
            // Chosen, not asked for: a kernel whose verifier refuses the programs (4.19's
            // stricter limits) is still enforced, by the backend meant for old kernels.
            Err(error) if config.backend == BackendChoice::Auto => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "the eBPF datapath did not load on this kernel: enforcing with the iptables backend instead"
                );
                reason = format!("{reason}, but the eBPF datapath did not load ({error:#})");
                backend_choice = BackendChoice::Iptables;
            }
            Err(error) => return Err(error),
        }
    }
    let backend: Box<dyn crate::backend::Backend + Send> = match ebpf {
        Some(backend) => backend,
        None => {
            // Drops are still enforced without it: only `monitor` goes without events.
            match crate::backend::iptables::nflog::spawn(crate::monitor::EventFanout {
                metrics: Arc::clone(&metrics),
                hub: Arc::clone(event_hub.insert(crate::monitor::EventHub::new())),
            }) {
                Ok(thread) => nflog_thread = Some(thread),
                Err(error) => {
                    event_hub = None;
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "cannot read the drop log (NFLOG group {}): `monitor` shows no events",
                        crate::backend::iptables::render::NFLOG_GROUP
                    );
                }
            }
            Box::new(
                crate::backend::iptables::IptablesBackend::detect()
                    .context("setting up the iptables backend")?,
            )
        }
    };

    let agent_info = crate::http::AgentInfo {
        node: config.node_name.clone(),
        backend_reason: reason.clone(),
        kernel: config
            .assume_kernel
            .map(Ok)
            .unwrap_or_else(KernelVersion::current)
            .map(|kernel| kernel.to_string())
            .unwrap_or_else(|error| format!("unknown ({error})")),
        attach_mode,
        source: match &config.source {
            SourceChoice::ObjectsDir(dir) => format!("objects-dir {}", dir.display()),
            SourceChoice::Kube(_) => "api-server".to_owned(),
        },
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let source = match config.source.clone() {
        SourceChoice::ObjectsDir(dir) => {
            tracing::info!(dir = %dir.display(), "reading objects from a directory");
            tokio::spawn(async move {
                source::objects_dir::run(dir, events_tx).await;
                Ok(())
            })
        }
        SourceChoice::Kube(kubeconfig) => {
            let client = kube_client(kubeconfig).await?;
            tokio::spawn(async move {
                source::kube::run(client, events_tx).await;
                Ok(())
            })
        }
    };

    let (interfaces_tx, interfaces_rx) = watch::channel(());
    let (watcher_failed_tx, mut watcher_failed) = mpsc::unbounded_channel();
    let _watcher = discovery::watch(
        std::time::Duration::from_millis(100),
        move |event| match event {
            discovery::WatchEvent::Changed => {
                interfaces_tx.send_replace(());
                std::ops::ControlFlow::Continue(())
            }
            discovery::WatchEvent::Failed(error) => {
                let _ = watcher_failed_tx.send(error);
                std::ops::ControlFlow::Break(())
            }
        },
    )
    .context("watching interfaces over netlink")?;
    let interface_watcher = tokio::spawn(async move {
        match watcher_failed.recv().await {
            Some(error) => Err(anyhow::Error::new(error)),
            None => Ok(()),
        }
    });

    let stop = |mut shutdown: watch::Receiver<bool>| async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let serve_on = |listen: SocketAddr| {
        let router = crate::http::probes(Arc::clone(&metrics));
        tokio::spawn(crate::http::serve_tcp(
            listen,
            router,
            stop(shutdown_rx.clone()),
        ))
    };
    let server = serve_on(config.listen);
    let scrape_server = config.metrics_listen.map(serve_on);

    let runtime = Runtime::new(
        RuntimeConfig {
            node_name: config.node_name.clone(),
            uplinks: config.uplinks.clone(),
            service_ranges: config.service_ranges.clone(),
            kinds: BTreeSet::from([
                ObjectKind::Namespace,
                ObjectKind::Pod,
                ObjectKind::NetworkPolicy,
                ObjectKind::ConfigMap,
                ObjectKind::Service,
            ]),
            stale_after: config.stale_after,
            pod_interface_prefixes: config.pod_interface_prefixes.clone(),
            names_file: config.api_socket.as_deref().map(crate::debug::names_file),
        },
        backend,
        Arc::clone(&metrics),
    );
    let pin_dir = config
        .load
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(agent_common::PIN_DIR));
    let mut runtime = runtime.with_handover(handover(backend_choice, pin_dir));
    let mut cni_tasks = Vec::new();
    if let Some(socket) = config.cni_socket.clone() {
        let (calls_tx, calls_rx) = mpsc::channel(256);
        runtime = runtime.with_cni(calls_rx);
        cni_tasks.push((
            "the CNI plugin socket",
            tokio::spawn(crate::cni::serve(socket.clone(), calls_tx)),
        ));
        if let Some(conf_dir) = config.cni_conf_dir.clone() {
            let metrics = Arc::clone(&metrics);
            cni_tasks.push((
                "the CNI chain installer",
                tokio::spawn(keep_chain(conf_dir, socket, metrics)),
            ));
        }
    }
    let mut api_tasks = Vec::new();
    if let Some(socket) = config.api_socket.clone() {
        let (queries_tx, queries_rx) = mpsc::channel(16);
        runtime = runtime.with_queries(queries_rx);
        let router =
            crate::http::debug_api(Arc::clone(&metrics), agent_info, queries_tx, event_hub);
        let stop = stop(shutdown_rx.clone());
        api_tasks.push((
            "the debug API",
            tokio::spawn(async move { crate::http::serve_unix(&socket, router, stop).await }),
        ));
    }
    let runtime = tokio::spawn(async move {
        runtime.run(events_rx, interfaces_rx, shutdown_rx).await;
        Ok(())
    });

    let mut tasks = vec![
        ("the runtime", runtime),
        ("the cluster source", source),
        ("the link and route watcher", interface_watcher),
        ("the HTTP endpoint", server),
    ];
    tasks.extend(scrape_server.map(|server| ("the scrape endpoint", server)));
    tasks.extend(cni_tasks);
    tasks.extend(api_tasks);
    let death = supervise(wait_for_signal(), &mut tasks).await;
    let _ = shutdown_tx.send(true);
    if let Some(reason) = death {
        metrics.set_dead(reason.clone());
        tracing::error!(
            reason,
            "a core task died: exiting for a restart; enforcement stays in place meanwhile"
        );
        bail!("{reason}");
    }
    tracing::info!("stopping; enforcement stays in place (`netpol-agent cleanup` removes it)");
    let (_, runtime) = tasks.swap_remove(0);
    let _ = runtime.await;
    drop(event_thread);
    drop(nflog_thread);
    Ok(())
}

/// Keeps the plugin in the node's CNI chain once the agent is ready to answer it: before that,
/// every new pod's ADD would wait for an agent that cannot confirm anything yet.
async fn keep_chain(conf_dir: PathBuf, socket: PathBuf, metrics: Arc<Metrics>) -> Result<()> {
    while !metrics.is_ready() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut installer = crate::cni::ChainInstaller::new(conf_dir, socket);
    let mut failing = false;
    loop {
        match installer.check() {
            Ok(()) => {
                metrics.set_cni_chained(true);
                failing = false;
            }
            Err(error) => {
                metrics.set_cni_chained(false);
                if !failing {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "the CNI chain does not include the netpol-cni plugin; retrying"
                    );
                }
                failing = true;
            }
        }
        tokio::time::sleep(crate::cni::CHAIN_CHECK_INTERVAL).await;
    }
}

/// `netpol-agent install-cni`: the DaemonSet's install step.
pub fn install_cni(args: InstallCniArgs) -> Result<()> {
    let installed = crate::cni::install_plugin(&args.plugin, &args.bin_dir)?;
    tracing::info!(plugin = %installed.display(), "installed the CNI plugin");
    Ok(())
}

/// A task meant to run for the life of the process.
type CoreTask = (&'static str, tokio::task::JoinHandle<Result<()>>);

/// Waits for `stop`, or for one of `tasks` to end: then returns why it ended (a panic, an
/// error, or just ending: all are deaths).
async fn supervise(
    stop: impl std::future::Future<Output = ()>,
    tasks: &mut [CoreTask],
) -> Option<String> {
    let ended = futures::future::select_all(tasks.iter_mut().map(|(_, handle)| handle));
    tokio::select! {
        () = stop => None,
        (ended, index, _) = ended => {
            let task = tasks[index].0;
            Some(match ended {
                Ok(Ok(())) => format!("{task} stopped"),
                Ok(Err(error)) => format!("{task} failed: {error:#}"),
                Err(error) if error.is_panic() => {
                    let payload = error.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|text| (*text).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".to_owned());
                    format!("{task} panicked: {message}")
                }
                Err(error) => format!("{task} was cancelled: {error}"),
            })
        }
    }
}

async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig")?,
    };
    kube::Client::try_from(config).context("building the API client")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "cannot watch SIGTERM; stopping on Ctrl-C only"
            );
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `netpol-agent cleanup`: detaches our programs from every interface and removes the pins,
/// our iptables chains and our ipsets.
pub fn cleanup(args: CleanupArgs) -> Result<()> {
    // The chain first: a pod created from here on must not wait for an agent that is gone.
    if let Some(conf_dir) = &args.cni_conf_dir {
        match crate::cni::remove_from_chain(conf_dir) {
            Ok(Some(file)) => {
                tracing::info!(config = %file.display(), "removed the netpol-cni plugin from the CNI chain")
            }
            Ok(None) => {}
            Err(error) => bail!(
                "removing the netpol-cni plugin from the CNI chain in {} failed: {error:#}",
                conf_dir.display()
            ),
        }
    }
    if let Some(bin_dir) = &args.cni_bin_dir {
        let plugin = bin_dir.join(netpol_cni::PLUGIN_TYPE);
        match std::fs::remove_file(&plugin) {
            Ok(()) => tracing::info!(plugin = %plugin.display(), "removed the CNI plugin"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => bail!("removing {} failed: {error}", plugin.display()),
        }
    }
    let mut failures = remove_ebpf_state(&args.pin_dir)?;
    if let Err(error) = remove_iptables_state() {
        tracing::warn!(
            error = &error as &dyn std::error::Error,
            "removing iptables chains and ipsets failed"
        );
        failures += 1;
    }
    if failures > 0 {
        bail!("{failures} removal(s) failed; see the log");
    }
    Ok(())
}

/// Detaches the eBPF backend's programs from every interface (both attach modes) and removes
/// its pins; returns how many detach operations failed.
fn remove_ebpf_state(pin_dir: &Path) -> Result<usize> {
    let interfaces = discovery::snapshot().context("listing interfaces")?;
    let mut failures = 0;
    for link in interfaces.links() {
        for role in [InterfaceRole::Pod, InterfaceRole::Uplink] {
            for mode in [AttachMode::Netlink, AttachMode::Tcx] {
                if let Err(error) =
                    crate::backend::ebpf::detach_interface(&link.name, role, mode, pin_dir)
                {
                    tracing::warn!(iface = %link.name, error = &error as &dyn std::error::Error, "detaching failed");
                    failures += 1;
                }
            }
        }
    }
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => tracing::info!(dir = %pin_dir.display(), "removed pinned maps and links"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("removing {}", pin_dir.display()));
        }
    }
    Ok(failures)
}

/// Removes the iptables backend's jumps, chains and ipsets; returns how many it removed.
fn remove_iptables_state() -> Result<usize, crate::backend::iptables::IptablesError> {
    let removed = crate::backend::iptables::cleanup()?;
    if removed > 0 {
        tracing::info!(removed, "removed our iptables chains, jumps and ipsets");
    }
    Ok(removed)
}

/// What the starting backend removes of the other one once its own state is programmed: an
/// agent moved from one backend to the other must not leave the old one enforcing an old
/// policy underneath (no gap either: the old state goes only after the new one holds).
fn handover(backend: BackendChoice, pin_dir: PathBuf) -> Box<dyn FnOnce() + Send> {
    match backend {
        BackendChoice::Iptables => Box::new(move || match pin_dir.try_exists() {
            Ok(false) => {}
            Ok(true) | Err(_) => match remove_ebpf_state(&pin_dir) {
                Ok(0) => tracing::warn!(
                    dir = %pin_dir.display(),
                    "found the eBPF backend's programs and pins: removed them, the iptables backend enforces now"
                ),
                Ok(failures) => tracing::error!(
                    failures,
                    "removing the eBPF backend's programs failed in part: they may still drop traffic; run `netpol-agent cleanup` and restart"
                ),
                Err(error) => {
                    tracing::error!(
                        error = &*error as &dyn std::error::Error,
                        "removing the eBPF backend's state failed"
                    )
                }
            },
        }),
        BackendChoice::Ebpf | BackendChoice::Auto => Box::new(|| match remove_iptables_state() {
            Ok(0) => {}
            Ok(removed) => tracing::warn!(
                removed,
                "found the iptables backend's chains and sets: removed them, the eBPF backend enforces now"
            ),
            Err(error) => tracing::error!(
                error = &error as &dyn std::error::Error,
                "removing the iptables backend's chains failed: they may still drop traffic; run `netpol-agent cleanup` and restart"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_iptables_below_4_19() {
        let (backend, reason) =
            choose_backend(BackendChoice::Auto, Some(KernelVersion::new(4, 14, 0)));
        assert_eq!(backend, BackendChoice::Iptables);
        assert!(reason.contains("older than 4.19"), "{reason}");
    }

    #[test]
    fn kernel_versions_parse_with_or_without_patch_level() {
        assert_eq!(
            parse_kernel_version("4.19").expect("parses"),
            KernelVersion::new(4, 19, 0)
        );
        assert_eq!(
            parse_kernel_version("5.10.3").expect("parses"),
            KernelVersion::new(5, 10, 3)
        );
        assert!(parse_kernel_version("five").is_err());
    }

    fn run_config(args: &[&str]) -> Result<RunConfig> {
        let cli = Cli::try_parse_from(
            [
                "netpol-agent",
                "run",
                "--node-name",
                "node-1",
                "--objects-dir",
                "/tmp",
            ]
            .iter()
            .chain(args),
        )?;
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        args.validate()
    }

    /// The ConfigMap's keys reach the agent as environment variables that may be empty or
    /// hold comma-separated lists; the flags read the same way.
    #[test]
    fn list_flags_take_commas_and_empty_values_mean_none() {
        let config = run_config(&[
            "--uplink",
            "eth0, eth1",
            "--service-cidr",
            "192.168.0.0/16,",
        ])
        .expect("valid");
        assert_eq!(
            config.uplinks,
            Some(vec!["eth0".to_owned(), "eth1".to_owned()])
        );
        assert_eq!(config.service_ranges.len(), 1);
        assert_eq!(config.metrics_listen, None);

        let config = run_config(&[
            "--uplink",
            "",
            "--service-cidr",
            "",
            "--metrics-listen",
            "",
            "--cni-socket",
            "",
            "--cni-conf-dir",
            "",
            "--pod-interface-prefix",
            "",
        ])
        .expect("valid");
        assert_eq!(config.cni_socket, None, "empty: no CNI plugin socket");
        assert_eq!(config.cni_conf_dir, None, "empty: the chain is left alone");
        assert!(
            config.pod_interface_prefixes.is_empty(),
            "empty: no safety net"
        );
        assert_eq!(
            config.uplinks, None,
            "empty: the default routes' interfaces"
        );
        assert!(
            config.service_ranges.is_empty(),
            "empty: learned Services only"
        );
        assert_eq!(config.metrics_listen, None, "empty: no scrape endpoint");

        let config = run_config(&["--metrics-listen", "0.0.0.0:9991"]).expect("valid");
        assert_eq!(
            config.metrics_listen,
            Some("0.0.0.0:9991".parse().expect("address"))
        );
        assert_eq!(config.service_ranges.len(), 1, "the default range");
        let error = run_config(&["--metrics-listen", "9991"]).expect_err("no address");
        assert!(error.to_string().contains("ADDRESS:PORT"), "{error}");
    }

    fn forever() -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_panicking_core_task_is_a_death_with_its_message() {
        let mut tasks = [
            ("the runtime", tokio::spawn(async { panic!("boom") })),
            ("the HTTP endpoint", forever()),
        ];
        let death = supervise(std::future::pending(), &mut tasks).await;
        assert_eq!(death.as_deref(), Some("the runtime panicked: boom"));
    }

    #[tokio::test]
    async fn a_core_task_that_ends_or_fails_is_a_death_and_a_signal_is_not() {
        let mut tasks = [
            ("the cluster source", tokio::spawn(async { Ok(()) })),
            ("the runtime", forever()),
        ];
        let death = supervise(std::future::pending(), &mut tasks).await;
        assert_eq!(death.as_deref(), Some("the cluster source stopped"));

        let mut tasks = [(
            "the link and route watcher",
            tokio::spawn(async { Err(anyhow::anyhow!("socket closed")) }),
        )];
        let death = supervise(std::future::pending(), &mut tasks).await;
        assert_eq!(
            death.as_deref(),
            Some("the link and route watcher failed: socket closed")
        );

        let mut tasks = [("the runtime", forever())];
        assert_eq!(supervise(async {}, &mut tasks).await, None);
    }
}
