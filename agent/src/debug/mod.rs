//! The node debug CLI: `netpol-agent status | endpoints | explain | maps dump`.
//!
//! Two sources, both read-only: the agent's debug API on its Unix socket (`http.rs`: live
//! status, endpoints, the engine's reference answers and the names of every id) and the pinned
//! maps in bpffs (what the kernel really enforces). With the agent down the maps still answer,
//! named from the names file the agent keeps beside its socket; the output then says the
//! names may be stale. Nothing here writes to a map or to the agent.

pub mod client;
pub mod datapath;
pub mod iptables;
mod kernel_conntrack;
pub mod report;
mod table;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use agent_common::{
    addr::Addr,
    conntrack::{
        CT_CLOSING, CT_EGRESS_ALLOWED, CT_EGRESS_DEFERRED, CT_FIN_ORIGINAL, CT_FIN_REPLY,
        CT_INGRESS_ALLOWED, CT_SEEN_REPLY,
    },
    endpoint::{FLAG_AUDIT, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED, FLAG_NOT_PROGRAMMED},
    policy::{DIR_EGRESS, PREFIX_ANY_PORT, PREFIX_FULL},
};
use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{
    backend::{ebpf::monotonic_ns, iptables::DEFAULT_MAXELEM},
    monitor::MonitorEvent,
    policy::{Flow, Names, PathVerdict, lookup},
};

use self::{
    client::Unreachable,
    datapath::KernelState,
    iptables::{IptablesState, RuleVerdict},
    report::{
        DatapathSide, EndpointReport, ExplainReport, ExplainSide, Isolation, MapStatus, Reference,
        ReferenceSide, StatusReport,
    },
    table::{Output, Table, print, print_json},
};

/// Where the agent serves its debug API by default (a directory the DaemonSet shares with
/// the host, like the CNI socket's).
pub const DEFAULT_SOCKET: &str = "/run/netpol/agent.sock";

/// The names file beside the agent's socket.
pub fn names_file(socket: &Path) -> PathBuf {
    socket.with_file_name("names.json")
}

/// Writes `names` to `path` atomically (a reader never sees half a file).
pub fn write_names_file(path: &Path, names: &Names) -> Result<()> {
    let text = serde_json::to_vec(names).context("encoding the names")?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// How a debug command reaches the agent and the maps.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The agent's debug socket.
    #[arg(long, env = "NETPOL_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The bpffs directory of the pinned maps.
    #[arg(long, default_value = agent_common::PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Target {
    /// The agent at `socket` and its maps in `pin_dir`, answering in tables.
    pub fn new(socket: PathBuf, pin_dir: PathBuf) -> Self {
        Self {
            socket,
            pin_dir,
            output: Output::Table,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The source: an address or `namespace/pod`.
    #[arg(long)]
    pub from: String,
    /// The destination: an address or `namespace/pod` (for a Service, give a backend pod:
    /// egress to a Service is decided after DNAT).
    #[arg(long)]
    pub to: String,
    #[arg(long = "proto", value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// Destination port (TCP, UDP, SCTP).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
}

impl Protocol {
    fn number(self, ipv6: bool) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Icmp if ipv6 => 58,
            Self::Icmp => 1,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MapsArgs {
    #[command(subcommand)]
    pub action: MapsAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum MapsAction {
    /// Print every entry of a map, translated to pods, policies and selectors.
    Dump {
        #[arg(value_enum)]
        map: MapName,
        /// Raw ids and values only.
        #[arg(long)]
        numeric: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args, Debug)]
pub struct CtArgs {
    #[command(subcommand)]
    pub action: CtAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtAction {
    /// The tracked connections: ends (named), age, state, and the rule that admitted them.
    List {
        /// Only connections of this pod (`namespace/name`), at either end.
        #[arg(long)]
        pod: Option<String>,
        /// Raw values only.
        #[arg(long)]
        numeric: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// Drops only (no audit events).
    #[arg(long)]
    pub drops: bool,
    /// Only events of this pod (`namespace/name`), at either end.
    #[arg(long)]
    pub pod: Option<String>,
    /// Start with the events of this last stretch of time the agent kept (`90s`, `5m`,
    /// `1h`; at most the last 4096 events).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Print the kept events (`--since`) and exit instead of following.
    #[arg(long)]
    pub no_follow: bool,
    /// Exit after this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// `90`, `90s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and s, m or h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MapName {
    Endpoints,
    Ipcache,
    Policy,
    Services,
    Conntrack,
    Config,
    Counters,
    /// The iptables backend's `NP-` chains.
    Chains,
    /// The iptables backend's `np-` ipsets.
    Ipsets,
}

/// What a command found: whether its answer is a healthy one (the exit code).
pub type Healthy = bool;

fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

/// Whether an error means "the agent is not there" (fall back to the pins).
fn unreachable(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Unreachable>().is_some()
}

/// The names of the ids: live from the agent, else from its names file (stale, said so).
struct NameSource {
    names: Names,
    /// Set when the names are not the running agent's.
    caveat: Option<String>,
}

async fn names(target: &Target) -> Result<NameSource> {
    match client::get::<Names>(&target.socket, "/v1/names").await {
        Ok(names) => Ok(NameSource {
            names,
            caveat: None,
        }),
        Err(error) if unreachable(&error) => {
            let file = names_file(&target.socket);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    let age = std::fs::metadata(&file)
                        .and_then(|meta| meta.modified())
                        .ok()
                        .and_then(|at| at.elapsed().ok())
                        .map(|age| format!("{} s old", age.as_secs()))
                        .unwrap_or_else(|| "of unknown age".to_owned());
                    let names = serde_json::from_slice(&bytes)
                        .with_context(|| format!("decoding {}", file.display()))?;
                    Ok(NameSource {
                        names,
                        caveat: Some(format!(
                            "{error:#}: names from {} ({age}) may be stale",
                            file.display()
                        )),
                    })
                }
                Err(_) => Ok(NameSource {
                    names: Names::default(),
                    caveat: Some(format!(
                        "{error:#}, and no names file at {}: raw ids only",
                        file.display()
                    )),
                }),
            }
        }
        Err(error) => Err(error),
    }
}

/// `netpol-agent status`: healthy when the agent runs and is ready.
pub fn status(target: &Target) -> Result<Healthy> {
    let report = block_on(async {
        match client::get::<StatusReport>(&target.socket, "/v1/status").await {
            Ok(report) => Ok(report),
            Err(error) if unreachable(&error) => status_from_datapath(target, &error),
            Err(error) => Err(error),
        }
    })?;
    let healthy = report.agent_running && report.ready;
    match target.output {
        Output::Json => print_json(&report)?,
        Output::Table => print(&render_status(&report)),
    }
    Ok(healthy)
}

/// What can be said with the agent down: the maps and the switch from the pins, else the
/// chains and sets of the iptables backend.
fn status_from_datapath(target: &Target, why: &anyhow::Error) -> Result<StatusReport> {
    let installed = Installed::read(&target.pin_dir)
        .with_context(|| format!("{why:#}; and the datapath cannot be read either"))?;
    let map = |name: &str, entries: usize, capacity: u64| MapStatus {
        name: name.to_owned(),
        entries: entries as u64,
        capacity,
    };
    let (backend, enforcement, maps) = match installed {
        Installed::Ebpf(kernel) => {
            let sizes = kernel.sizes;
            let connections = kernel.connections().map(|rows| rows.len()).unwrap_or(0);
            let maps = vec![
                map(
                    "endpoints",
                    kernel.state.endpoints.len(),
                    sizes.endpoints.into(),
                ),
                map("ipcache", kernel.state.ipcache.len(), sizes.ipcache.into()),
                map("policy", kernel.state.policy.len(), sizes.policy.into()),
                map("services", kernel.services.len(), sizes.services.into()),
                map("conntrack", connections, sizes.conntrack.into()),
            ];
            ("ebpf (from the pins)", !kernel.enforcement_off(), maps)
        }
        Installed::Iptables(rules) => {
            let capacity = rules
                .sets
                .values()
                .map(|entries| entries.len().max(DEFAULT_MAXELEM) as u64)
                .sum();
            let entries = rules.sets.values().map(Vec::len).sum();
            let maps = vec![
                map("iptables_rules", rules.rule_count(), u64::MAX),
                map("ipset_entries", entries, capacity),
            ];
            ("iptables (from its chains)", !rules.enforcement_off(), maps)
        }
    };
    Ok(StatusReport {
        agent_running: false,
        backend: backend.to_owned(),
        enforcement,
        not_ready_reason: Some(format!("{why:#}")),
        maps,
        ..StatusReport::default()
    })
}

fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<22}{value}\n"));
    if report.agent_running {
        line(
            "Agent:",
            format!(
                "running (pid {}, version {}) on node {}",
                report.pid.unwrap_or_default(),
                report.version,
                report.node
            ),
        );
    } else {
        line(
            "Agent:",
            "DOWN: what follows is read from the pins".to_owned(),
        );
    }
    line(
        "Ready:",
        match (&report.not_ready_reason, report.ready) {
            (_, true) => "yes".to_owned(),
            (Some(reason), false) => format!("no: {reason}"),
            (None, false) => "no".to_owned(),
        },
    );
    line(
        "Backend:",
        if report.backend_reason.is_empty() {
            report.backend.clone()
        } else {
            format!("{} ({})", report.backend, report.backend_reason)
        },
    );
    if !report.kernel.is_empty() {
        line("Kernel:", report.kernel.clone());
    }
    if let Some(mode) = &report.attach_mode {
        line("Attach mode:", mode.clone());
    }
    line(
        "Enforcement:",
        if report.enforcement {
            "on".to_owned()
        } else {
            "OFF (disable_network_policy): every packet passes".to_owned()
        },
    );
    if report.agent_running {
        let watches = if report.failing_watches.is_empty() {
            "healthy".to_owned()
        } else {
            report
                .failing_watches
                .iter()
                .map(|watch| {
                    format!(
                        "{} failing for {} s ({})",
                        watch.kind, watch.seconds, watch.error
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        line("Source:", format!("{}; watches {watches}", report.source));
        let ago = |seconds: Option<f64>| {
            seconds
                .map(|seconds| format!("{seconds:.1} s ago"))
                .unwrap_or_else(|| "never".to_owned())
        };
        line("Last full sync:", ago(report.seconds_since_full_sync));
        line(
            "Last change:",
            format!("programmed {}", ago(report.seconds_since_change_programmed)),
        );
        let mut endpoints = format!(
            "{} local pod addresses, {} selected by a policy and enforced",
            report.endpoints.local, report.endpoints.enforced
        );
        for (reason, count) in &report.endpoints.not_enforced {
            if *count > 0 {
                endpoints.push_str(&format!(", {count} NOT enforced ({reason})"));
            }
        }
        line("Endpoints:", endpoints);
        line(
            "CNI chain:",
            match report.cni_chained {
                Some(true) => "includes netpol-cni".to_owned(),
                Some(false) => "does NOT include netpol-cni".to_owned(),
                None => "not managed".to_owned(),
            },
        );
    }
    for (index, map) in report.maps.iter().enumerate() {
        line(
            if index == 0 { "Maps:" } else { "" },
            format!(
                "{:<13} {:>8} / {:<8} ({:.0} %)",
                map.name,
                map.entries,
                map.capacity,
                map.entries as f64 * 100.0 / map.capacity.max(1) as f64
            ),
        );
    }
    if report.agent_running {
        if report.rejected_objects.is_empty() {
            line("Rejected objects:", "none".to_owned());
        }
        for (index, rejection) in report.rejected_objects.iter().enumerate() {
            line(
                if index == 0 { "Rejected objects:" } else { "" },
                format!(
                    "{} {}: {}",
                    rejection.kind, rejection.object, rejection.reason
                ),
            );
        }
        let errors: Vec<String> = report
            .programming_errors
            .iter()
            .map(|(what, count)| format!("{what} {count}"))
            .collect();
        line(
            "Programming errors:",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
        );
    }
    out
}

/// `netpol-agent endpoints`.
pub fn endpoints(target: &Target) -> Result<Healthy> {
    let (reports, caveat) = block_on(async {
        match client::get::<Vec<EndpointReport>>(&target.socket, "/v1/endpoints").await {
            Ok(reports) => Ok((reports, None)),
            Err(error) if unreachable(&error) => {
                let source = names(target).await?;
                let kernel = KernelState::read(&target.pin_dir)
                    .with_context(|| format!("{error:#}; and the pins cannot be read either"))?;
                Ok((endpoints_from_pins(&kernel, &source.names), source.caveat))
            }
            Err(error) => Err(error),
        }
    })?;
    match target.output {
        Output::Json => print_json(&reports)?,
        Output::Table => {
            if let Some(caveat) = &caveat {
                print(&format!("# {caveat}\n"));
            }
            let mut table = Table::new(&[
                "pod",
                "id",
                "addresses",
                "interface",
                "ingress",
                "egress",
                "state",
            ]);
            let isolation = |side: &Isolation| {
                if side.isolated {
                    format!("isolated by {}", side.policies.join(","))
                } else {
                    "open".to_owned()
                }
            };
            for report in &reports {
                table.row(vec![
                    report.pod.clone(),
                    report.endpoint_id.to_string(),
                    join(&report.addresses),
                    report.interface.clone().unwrap_or_else(|| "-".to_owned()),
                    isolation(&report.ingress),
                    isolation(&report.egress),
                    report.state.clone(),
                ]);
            }
            print(&table.render());
        }
    }
    Ok(caveat.is_none())
}

fn join(items: &[impl std::fmt::Display]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The endpoints as the maps hold them, named from `names` (the agent is down).
fn endpoints_from_pins(kernel: &KernelState, names: &Names) -> Vec<EndpointReport> {
    let interfaces = crate::discovery::snapshot().ok();
    let mut by_id: std::collections::BTreeMap<u32, EndpointReport> = Default::default();
    for (addr, endpoint) in kernel.endpoints() {
        let report = by_id.entry(endpoint.id).or_default();
        report.pod = names.endpoint(endpoint.id);
        report.endpoint_id = endpoint.id;
        report.addresses.extend(addr.to_ip());
        report.interface = interfaces
            .as_ref()
            .and_then(|interfaces| interfaces.link_by_index(endpoint.ifindex))
            .map(|link| link.name.clone())
            .or_else(|| Some(format!("ifindex {}", endpoint.ifindex)));
        let side = |flag: u32, set: u32| {
            let isolated = endpoint.flags & flag != 0;
            Isolation {
                isolated,
                policies: if isolated {
                    names
                        .set(set)
                        .map(|name| name.policies.iter().cloned().collect())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                },
                set: isolated.then_some(set),
            }
        };
        report.ingress = side(FLAG_INGRESS_ISOLATED, endpoint.ingress_set);
        report.egress = side(FLAG_EGRESS_ISOLATED, endpoint.egress_set);
        report.state = if endpoint.flags & FLAG_NOT_PROGRAMMED != 0 {
            "not_programmed".to_owned()
        } else {
            "unknown (agent down)".to_owned()
        };
    }
    by_id.into_values().collect()
}

/// `netpol-agent explain`: healthy unless the two answers disagree (drift).
pub fn explain(args: &ExplainArgs) -> Result<Healthy> {
    let explainer = Explainer::read(&args.target)?;
    let from = resolve(&args.from, &explainer.source.names)?;
    let to = resolve(&args.to, &explainer.source.names)?;
    let report = explainer.explain(from, to, args.protocol, args.port)?;
    match args.target.output {
        Output::Json => print_json(&report)?,
        Output::Table => print(&render_explain(&report)),
    }
    Ok(!report.drift)
}

/// `explain` with its readings taken once: the names and the datapath as installed. Each
/// flow then asks the agent for the reference answer and looks the datapath up. Public for the
/// suites that explain every pair of pods after each change.
pub struct Explainer {
    socket: PathBuf,
    source: NameSource,
    installed: Installed,
}

impl Explainer {
    pub fn read(target: &Target) -> Result<Self> {
        block_on(async {
            Ok(Self {
                socket: target.socket.clone(),
                source: names(target).await?,
                installed: Installed::read(&target.pin_dir)?,
            })
        })
    }

    /// The verdict of a new connection `from` -> `to`, both answers and whether they agree.
    pub fn explain(
        &self,
        from: IpAddr,
        to: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Result<ExplainReport> {
        let number = protocol.number(from.is_ipv6());
        if matches!(protocol, Protocol::Tcp | Protocol::Udp | Protocol::Sctp) && port == 0 {
            bail!("--port is needed for {protocol:?}");
        }
        let flow = Flow::new(from, to, number, port);
        let reference = match self.source.caveat {
            None => Some(block_on(client::get::<Reference>(
                &self.socket,
                &format!("/v1/explain?from={from}&to={to}&protocol={number}&port={port}"),
            ))?),
            Some(_) => None,
        };
        Ok(build_explain(
            flow,
            &protocol,
            reference,
            &self.installed,
            &self.source,
        ))
    }
}

/// An address, or the address of `namespace/pod`.
fn resolve(text: &str, names: &Names) -> Result<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Ok(ip);
    }
    if text.contains('/') {
        return names.address_of(text).with_context(|| {
            format!("no address known for the pod {text} (give its address instead)")
        });
    }
    bail!("{text:?} is neither an address nor namespace/pod")
}

/// The datapath as installed on this node, read back.
enum Installed {
    Ebpf(Box<KernelState>),
    Iptables(IptablesState),
}

impl Installed {
    /// The eBPF maps pinned in `pin_dir`, else our iptables chains; an error when neither is
    /// there.
    fn read(pin_dir: &Path) -> Result<Self> {
        let ebpf = match KernelState::read(pin_dir) {
            Ok(kernel) => return Ok(Self::Ebpf(Box::new(kernel))),
            Err(error) => error,
        };
        match IptablesState::read() {
            Ok(rules) if rules.installed() => Ok(Self::Iptables(rules)),
            Ok(_) => Err(ebpf.context("and no iptables chain of the agent is installed either")),
            Err(error) => {
                Err(ebpf.context(format!("and iptables cannot be read either: {error:#}")))
            }
        }
    }
}

/// One side as the installed datapath decides it.
struct Decided {
    side: DatapathSide,
    /// Whether this node enforces the side.
    local: bool,
    allowed: bool,
}

fn ebpf_sides(
    flow: &Flow,
    kernel: &KernelState,
    names: &Names,
    notes: &mut Vec<String>,
) -> [Decided; 2] {
    let looked_up = lookup(&kernel.state, flow);
    if kernel.enforcement_off() {
        notes.push("enforcement is OFF (disable_network_policy): the programs pass every packet whatever the maps say".to_owned());
    }
    if kernel.is_service(Addr::from(flow.dst)) {
        notes.push(format!(
            "{} is a Service address: egress to a Service is decided after DNAT; explain the backend pod instead",
            flow.dst
        ));
    }
    let decide = |verdict: PathVerdict, address: IpAddr, end: &str, notes: &mut Vec<String>| {
        let mut side = DatapathSide::default();
        let (name, endpoint, set, class, rule) = match verdict {
            PathVerdict::NotEndpoint => ("not_endpoint", None, None, None, None),
            PathVerdict::NotIsolated { endpoint } => {
                ("not_isolated", Some(endpoint), None, None, None)
            }
            PathVerdict::Allowed {
                endpoint,
                set,
                class,
                rule,
            } => (
                "allowed",
                Some(endpoint),
                Some(set),
                Some(class),
                Some(rule),
            ),
            PathVerdict::Denied {
                endpoint,
                set,
                class,
            } => ("denied", Some(endpoint), Some(set), Some(class), None),
        };
        side.verdict = name.to_owned();
        side.endpoint = endpoint.map(|id| names.endpoint(id));
        side.set = set;
        side.class = class;
        side.class_name = class.map(|class| names.class(class));
        side.rule = rule;
        side.rule_name = rule.map(|rule| names.rule(rule));
        let flags = kernel
            .state
            .endpoints
            .get(&Addr::from(address))
            .map(|endpoint| endpoint.flags)
            .unwrap_or(0);
        if flags & FLAG_NOT_PROGRAMMED != 0 {
            notes.push(format!("the {end} is written NOT PROGRAMMED: a write for it failed, so everything new is denied until it succeeds"));
        }
        if flags & FLAG_AUDIT != 0 {
            notes.push(format!(
                "the {end} is in audit mode: denials are reported, not enforced"
            ));
        }
        Decided {
            side,
            local: verdict.enforced(),
            allowed: kernel.enforcement_off() || verdict.allowed(),
        }
    };
    [
        decide(looked_up.egress, flow.src, "source", notes),
        decide(looked_up.ingress, flow.dst, "destination", notes),
    ]
}

fn iptables_sides(
    flow: &Flow,
    rules: &IptablesState,
    names: &Names,
    reference: Option<&Reference>,
    notes: &mut Vec<String>,
) -> [Decided; 2] {
    let (egress, ingress) = rules.verdicts(flow);
    let local_pods: std::collections::BTreeSet<&String> = names.endpoints.values().collect();
    let decide = |verdict: RuleVerdict,
                  address: IpAddr,
                  reference: Option<&ReferenceSide>,
                  notes: &mut Vec<String>| {
        let mut side = DatapathSide::default();
        let name = match &verdict {
            RuleVerdict::NotIsolated => "not_isolated",
            RuleVerdict::EnforcementOff => {
                notes.push(
                    "enforcement is OFF (disable_network_policy): the chains return first"
                        .to_owned(),
                );
                "enforcement_off"
            }
            RuleVerdict::AfterDnat => {
                notes.push(format!(
                    "{} is a Service address: egress to a Service is decided after DNAT; explain the backend pod instead",
                    flow.dst
                ));
                "after_dnat"
            }
            RuleVerdict::Allowed { rule, .. } => {
                side.rule = *rule;
                side.rule_name = rule.map(|rule| names.rule(rule));
                "allowed"
            }
            RuleVerdict::Denied { .. } => "denied",
            RuleVerdict::NotUnderstood { chain, rule } => {
                notes.push(format!(
                    "a rule of {chain} is not one this reader understands: {rule}"
                ));
                "not_understood"
            }
        };
        side.verdict = name.to_owned();
        let pod = names.pod_at(address).map(str::to_owned);
        let dispatched = !matches!(verdict, RuleVerdict::NotIsolated);
        let local = reference
            .map(|reference| reference.local)
            .unwrap_or_else(|| {
                dispatched || pod.as_ref().is_some_and(|pod| local_pods.contains(pod))
            });
        side.endpoint = if local { pod } else { None };
        Decided {
            side,
            local,
            allowed: verdict.allowed(),
        }
    };
    [
        decide(
            egress,
            flow.src,
            reference.map(|reference| &reference.egress),
            notes,
        ),
        decide(
            ingress,
            flow.dst,
            reference.map(|reference| &reference.ingress),
            notes,
        ),
    ]
}

fn build_explain(
    flow: Flow,
    protocol: &Protocol,
    reference: Option<Reference>,
    installed: &Installed,
    source: &NameSource,
) -> ExplainReport {
    let names = &source.names;
    let mut notes = Vec::new();
    if let Some(caveat) = &source.caveat {
        notes.push(format!("only the datapath's answer: {caveat}"));
    }
    let [egress_decided, ingress_decided] = match installed {
        Installed::Ebpf(kernel) => ebpf_sides(&flow, kernel, names, &mut notes),
        Installed::Iptables(rules) => {
            iptables_sides(&flow, rules, names, reference.as_ref(), &mut notes)
        }
    };
    let allowed = egress_decided.allowed && ingress_decided.allowed;
    let side = |direction: &str, ip: IpAddr, decided: Decided, reference: Option<ReferenceSide>| {
        let agree = reference.as_ref().map(|reference| {
            reference.local == decided.local
                && (!decided.local || reference.allowed == decided.allowed)
        });
        ExplainSide {
            direction: direction.to_owned(),
            pod: reference
                .as_ref()
                .and_then(|reference| reference.pod.clone())
                .or_else(|| names.pod_at(ip).map(str::to_owned)),
            local: decided.local,
            reference,
            datapath: Some(decided.side),
            agree,
        }
    };
    let (egress_reference, ingress_reference) = match reference {
        Some(reference) => (Some(reference.egress), Some(reference.ingress)),
        None => (None, None),
    };
    let egress = side("egress", flow.src, egress_decided, egress_reference);
    let ingress = side("ingress", flow.dst, ingress_decided, ingress_reference);
    let drift = [&egress, &ingress]
        .iter()
        .any(|side| side.agree == Some(false));
    ExplainReport {
        from: flow.src,
        to: flow.dst,
        protocol: format!("{protocol:?}").to_lowercase(),
        port: flow.port,
        allowed,
        egress,
        ingress,
        drift,
        notes,
    }
}

fn render_explain(report: &ExplainReport) -> String {
    let mut out = format!(
        "{} -> {} {}/{}: {}\n",
        report.from,
        report.to,
        report.protocol,
        report.port,
        if report.allowed { "ALLOWED" } else { "DENIED" }
    );
    for side in [&report.egress, &report.ingress] {
        let at = if side.direction == "egress" {
            "egress at the source"
        } else {
            "ingress at the destination"
        };
        let pod = side.pod.clone().unwrap_or_else(|| "not a pod".to_owned());
        out.push_str(&format!("\n{at} ({pod}):\n"));
        if !side.local {
            out.push_str("  not enforced on this node\n");
        }
        if let Some(reference) = &side.reference
            && side.local
        {
            let verdict = if reference.isolated_by.is_empty() {
                "allowed: no policy isolates it in this direction".to_owned()
            } else if reference.allowed {
                format!(
                    "allowed by {} (isolated by {})",
                    reference.allowed_by.join(", "),
                    reference.isolated_by.join(", ")
                )
            } else {
                format!(
                    "denied: isolated by {} and no rule allows this peer/port",
                    reference.isolated_by.join(", ")
                )
            };
            out.push_str(&format!("  engine:   {verdict}\n"));
        }
        if let Some(datapath) = &side.datapath
            && side.local
        {
            let detail = match datapath.verdict.as_str() {
                "allowed" => format!(
                    "allowed by rule {} ({}), peer class {} ({})",
                    datapath.rule.unwrap_or_default(),
                    datapath.rule_name.clone().unwrap_or_default(),
                    datapath.class.unwrap_or_default(),
                    datapath.class_name.clone().unwrap_or_default()
                ),
                "denied" => format!(
                    "denied: no entry for set {} and peer class {} ({}) or any peer",
                    datapath.set.unwrap_or_default(),
                    datapath.class.unwrap_or_default(),
                    datapath.class_name.clone().unwrap_or_default()
                ),
                "not_isolated" => "allowed: not isolated".to_owned(),
                other => other.to_owned(),
            };
            out.push_str(&format!("  datapath: {detail}\n"));
        }
        if side.agree == Some(false) {
            out.push_str("  !!! DRIFT: the datapath does not hold what the engine compiled; please report this\n");
        }
    }
    for note in &report.notes {
        out.push_str(&format!("\nnote: {note}\n"));
    }
    out
}

/// `netpol-agent maps dump MAP`.
pub fn dump(map: MapName, numeric: bool, target: &Target) -> Result<Healthy> {
    let (source, installed) = block_on(async {
        let source = names(target).await?;
        Ok((source, Installed::read(&target.pin_dir)?))
    })?;
    let names = if numeric {
        &Names::default()
    } else {
        &source.names
    };
    let table = match installed {
        Installed::Ebpf(kernel) => dump_ebpf(map, &kernel, names, numeric)?,
        Installed::Iptables(rules) => dump_iptables(map, &rules, names, numeric)?,
    };
    print_table(
        &table,
        target.output,
        source.caveat.as_deref().filter(|_| !numeric),
    )?;
    Ok(true)
}

/// A table as `output` wants it; as text, under the caveat on its names if there is one.
fn print_table(table: &Table, output: Output, caveat: Option<&str>) -> Result<()> {
    match output {
        Output::Json => print_json(&table.to_json())?,
        Output::Table => {
            if let Some(caveat) = caveat {
                print(&format!("# {caveat}\n"));
            }
            print(&table.render());
        }
    }
    Ok(())
}

/// The iptables backend's equivalent of the maps: its chains and its sets.
fn dump_iptables(
    map: MapName,
    rules: &IptablesState,
    names: &Names,
    numeric: bool,
) -> Result<Table> {
    // `np-4<class hex>-<hash>`: the class a set holds.
    let class_of = |set: &str| {
        set.strip_prefix("np-")
            .and_then(|rest| rest.get(1..))
            .and_then(|rest| rest.split('-').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
    };
    match map {
        MapName::Chains => {
            let mut columns = vec!["family", "table", "chain", "index", "rule"];
            if !numeric {
                columns.extend(["rule_name", "peer"]);
            }
            let mut table = Table::new(&columns);
            for ((family, saved_table), saved) in &rules.tables {
                for (chain, chain_rules) in saved.ours() {
                    for (index, (_, rule)) in chain_rules.iter().enumerate() {
                        let mut row = vec![
                            format!("{family:?}").to_lowercase(),
                            saved_table.name().to_owned(),
                            chain.clone(),
                            index.to_string(),
                            rule.clone(),
                        ];
                        if !numeric {
                            let rule_name = crate::backend::iptables::tools::comment(rule)
                                .and_then(|comment| comment.strip_prefix("np-rule-"))
                                .and_then(|id| id.parse().ok())
                                .map(|id| names.rule(id))
                                .unwrap_or_else(|| "-".to_owned());
                            let peer = rule
                                .split_whitespace()
                                .skip_while(|word| *word != "--match-set")
                                .nth(1)
                                .and_then(class_of)
                                .map(|class| names.class(class))
                                .unwrap_or_else(|| "-".to_owned());
                            row.extend([rule_name, peer]);
                        }
                        table.row(row);
                    }
                }
            }
            Ok(table)
        }
        MapName::Ipsets => {
            let mut columns = vec!["set", "entry", "nomatch"];
            if !numeric {
                columns.extend(["pod", "class"]);
            }
            let mut table = Table::new(&columns);
            for (set, entries) in &rules.sets {
                for (prefix, nomatch) in entries {
                    let mut row = vec![set.clone(), prefix.to_string(), nomatch.to_string()];
                    if !numeric {
                        let pod = pod_of_prefix(prefix, names);
                        let class = class_of(set)
                            .map(|class| names.class(class))
                            .unwrap_or_else(|| "-".to_owned());
                        row.extend([pod, class]);
                    }
                    table.row(row);
                }
            }
            Ok(table)
        }
        other => bail!(
            "the iptables backend is in use on this node: it has no {other:?} map; dump `chains` or `ipsets`"
        ),
    }
}

/// One eBPF map.
fn dump_ebpf(map: MapName, kernel: &KernelState, names: &Names, numeric: bool) -> Result<Table> {
    Ok(match map {
        MapName::Endpoints => dump_endpoints(kernel, names, numeric),
        MapName::Ipcache => dump_ipcache(kernel, names, numeric),
        MapName::Policy => dump_policy(kernel, names, numeric),
        MapName::Services => {
            let mut table = Table::new(&["prefix"]);
            for (addr, len) in &kernel.services {
                table.row(vec![prefix_text(*addr, *len)]);
            }
            table
        }
        MapName::Conntrack => dump_conntrack(kernel, names, numeric, None)?,
        MapName::Config => {
            let config = kernel.config;
            let mut table = Table::new(&["field", "value"]);
            for (field, value) in [
                ("flags", format!("{:#x}", config.flags)),
                ("enforcement", (!kernel.enforcement_off()).to_string()),
                ("generation", format!("{:#x}", config.generation)),
                ("tcp_syn_timeout_ms", config.tcp_syn_timeout_ms.to_string()),
                (
                    "tcp_established_timeout_ms",
                    config.tcp_established_timeout_ms.to_string(),
                ),
                (
                    "tcp_close_timeout_ms",
                    config.tcp_close_timeout_ms.to_string(),
                ),
                ("udp_timeout_ms", config.udp_timeout_ms.to_string()),
                ("other_timeout_ms", config.other_timeout_ms.to_string()),
            ] {
                table.row(vec![field.to_owned(), value]);
            }
            table
        }
        MapName::Counters => {
            let mut table = Table::new(&["counter", "direction", "packets", "bytes"]);
            for (reason, direction, count) in kernel.drops()? {
                table.row(vec![
                    format!("drop {}", reason.name()),
                    direction.to_owned(),
                    count.packets.to_string(),
                    count.bytes.to_string(),
                ]);
            }
            for (rule, count) in kernel.rule_hits()? {
                let name = if numeric {
                    format!("rule {rule}")
                } else {
                    format!("allow {}", names.rule(rule))
                };
                table.row(vec![
                    name,
                    "-".to_owned(),
                    count.packets.to_string(),
                    count.bytes.to_string(),
                ]);
            }
            table
        }
        MapName::Chains | MapName::Ipsets => bail!(
            "the eBPF backend is in use on this node: chains and ipsets are the iptables backend's"
        ),
    })
}

/// The pod whose address a host prefix is, or `-`.
fn pod_of_prefix(prefix: &crate::policy::IpPrefix, names: &Names) -> String {
    prefix
        .is_host()
        .then(|| prefix.addr.to_ip())
        .flatten()
        .and_then(|ip| names.pod_at(ip))
        .unwrap_or("-")
        .to_owned()
}

fn prefix_text(addr: Addr, len: u32) -> String {
    match addr.to_ip() {
        Some(ip) => format!("{ip}/{len}"),
        None => format!("{addr:?}/{len}"),
    }
}

fn dump_endpoints(kernel: &KernelState, names: &Names, numeric: bool) -> Table {
    let mut columns = vec!["address", "id"];
    if !numeric {
        columns.push("pod");
    }
    columns.extend(["ifindex", "flags", "ingress_set", "egress_set"]);
    let mut table = Table::new(&columns);
    for (addr, endpoint) in kernel.endpoints() {
        let mut row = vec![
            addr.to_ip().map(|ip| ip.to_string()).unwrap_or_default(),
            endpoint.id.to_string(),
        ];
        if !numeric {
            row.push(names.endpoint(endpoint.id));
        }
        let flags = if numeric {
            format!("{:#x}", endpoint.flags)
        } else {
            let mut flags = Vec::new();
            for (bit, name) in [
                (FLAG_INGRESS_ISOLATED, "ingress-isolated"),
                (FLAG_EGRESS_ISOLATED, "egress-isolated"),
                (FLAG_AUDIT, "audit"),
                (FLAG_NOT_PROGRAMMED, "NOT-PROGRAMMED"),
            ] {
                if endpoint.flags & bit != 0 {
                    flags.push(name);
                }
            }
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags.join(",")
            }
        };
        row.extend([
            endpoint.ifindex.to_string(),
            flags,
            endpoint.ingress_set.to_string(),
            endpoint.egress_set.to_string(),
        ]);
        table.row(row);
    }
    table
}

fn dump_ipcache(kernel: &KernelState, names: &Names, numeric: bool) -> Table {
    let mut columns = vec!["prefix", "class"];
    if !numeric {
        columns.extend(["pod", "stands_for"]);
    }
    let mut table = Table::new(&columns);
    for (prefix, class) in &kernel.state.ipcache {
        let mut row = vec![prefix.to_string(), class.id.to_string()];
        if !numeric {
            let pod = pod_of_prefix(prefix, names);
            row.extend([pod, names.class(class.id)]);
        }
        table.row(row);
    }
    table
}

fn dump_policy(kernel: &KernelState, names: &Names, numeric: bool) -> Table {
    let mut columns = vec!["set", "class", "direction", "protocol", "ports", "rule"];
    if !numeric {
        columns.extend(["pods", "peer", "rule_name"]);
    }
    let mut table = Table::new(&columns);
    for (entry, value) in &kernel.state.policy {
        let key = entry.key;
        let protocol = if entry.prefix_len < PREFIX_ANY_PORT {
            "any".to_owned()
        } else {
            key.protocol.to_string()
        };
        let ports = if entry.prefix_len <= PREFIX_ANY_PORT {
            "any".to_owned()
        } else {
            let block = 1u32 << (PREFIX_FULL - entry.prefix_len);
            let first = u32::from(key.port_number());
            if block == 1 {
                first.to_string()
            } else {
                format!("{first}-{}", first + block - 1)
            }
        };
        let direction = if key.direction == DIR_EGRESS {
            "egress"
        } else {
            "ingress"
        };
        let mut row = vec![
            key.set_id().to_string(),
            key.class_id().to_string(),
            direction.to_owned(),
            protocol,
            ports,
            value.rule.to_string(),
        ];
        if !numeric {
            let pods = names
                .set(key.set_id())
                .map(|set| {
                    let pods = if key.direction == DIR_EGRESS {
                        &set.egress_of
                    } else {
                        &set.ingress_of
                    };
                    pods.iter().cloned().collect::<Vec<_>>().join(",")
                })
                .unwrap_or_default();
            row.extend([pods, names.class(key.class_id()), names.rule(value.rule)]);
        }
        table.row(row);
    }
    table
}

/// The connection table; `pod` keeps the connections with that pod at either end.
fn dump_conntrack(
    kernel: &KernelState,
    names: &Names,
    numeric: bool,
    pod: Option<&str>,
) -> Result<Table> {
    let now_ns = monotonic_ns();
    let mut columns = vec![
        "source",
        "destination",
        "protocol",
        "age_s",
        "state",
        "flags",
        "rule",
    ];
    if !numeric {
        columns.extend(["source_pod", "destination_pod", "rule_name"]);
    }
    let mut table = Table::new(&columns);
    let mut connections = kernel.connections()?;
    connections.sort_by_key(|(key, _)| (key.src, key.dst, key.sport, key.dport));
    for (key, entry) in connections {
        let src = key.src.to_ip();
        let dst = key.dst.to_ip();
        let pod_at = |ip: Option<IpAddr>| ip.and_then(|ip| names.pod_at(ip));
        if let Some(pod) = pod
            && pod_at(src) != Some(pod)
            && pod_at(dst) != Some(pod)
        {
            continue;
        }
        // Programs on other CPUs may have stamped a time after `now`: age 0.
        let age = now_ns.saturating_sub(entry.last_seen_ns) as f64 / 1e9;
        let end = |ip: Option<IpAddr>, port: u16| {
            format!("{}:{port}", ip.map(|ip| ip.to_string()).unwrap_or_default())
        };
        let state = if entry.flags & CT_CLOSING != 0 {
            "closing"
        } else if entry.flags & CT_SEEN_REPLY != 0 {
            "established"
        } else {
            "opening"
        };
        let flags = flags_text(
            entry.flags,
            numeric,
            &[
                (CT_EGRESS_ALLOWED, "egress-allowed"),
                (CT_INGRESS_ALLOWED, "ingress-allowed"),
                (CT_EGRESS_DEFERRED, "egress-after-dnat"),
                (CT_FIN_ORIGINAL, "fin-original"),
                (CT_FIN_REPLY, "fin-reply"),
            ],
        );
        let mut row = vec![
            end(src, key.sport),
            end(dst, key.dport),
            key.protocol.to_string(),
            format!("{age:.1}"),
            state.to_owned(),
            flags,
            entry.rule.to_string(),
        ];
        if !numeric {
            row.extend([
                pod_at(src).unwrap_or("-").to_owned(),
                pod_at(dst).unwrap_or("-").to_owned(),
                if entry.rule == 0 {
                    "-".to_owned()
                } else {
                    names.rule(entry.rule)
                },
            ]);
        }
        table.row(row);
    }
    Ok(table)
}

/// A connection's flag bits: hex with `numeric`, else the names of the set ones (`-` for
/// none).
fn flags_text(flags: u32, numeric: bool, names: &[(u32, &str)]) -> String {
    if numeric {
        return format!("{flags:#x}");
    }
    let named: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if named.is_empty() {
        "-".to_owned()
    } else {
        named.join(",")
    }
}

/// `netpol-agent ct list`: the connections the datapath tracks, named: the eBPF
/// connection table, or the kernel's own for the iptables backend.
pub fn ct_list(pod: Option<&str>, numeric: bool, target: &Target) -> Result<Healthy> {
    let (source, installed) = block_on(async {
        let source = names(target).await?;
        Ok((source, Installed::read(&target.pin_dir)?))
    })?;
    let table = match installed {
        Installed::Ebpf(kernel) => {
            let names = if numeric {
                &Names::default()
            } else {
                &source.names
            };
            dump_conntrack(&kernel, names, numeric, pod)?
        }
        Installed::Iptables(rules) => kernel_connections(&rules, &source.names, numeric, pod)?,
    };
    print_table(
        &table,
        target.output,
        source.caveat.as_deref().filter(|_| !numeric),
    )?;
    Ok(true)
}

/// The kernel's connections with a pod of this node at one end (what the iptables backend
/// relies on), each credited to the rule of the installed chains that admits its first
/// packet now: the kernel does not record which rule admitted a connection. `names` also
/// decides which connections are a pod's, so it is the real one even for `numeric`.
fn kernel_connections(
    rules: &IptablesState,
    names: &Names,
    numeric: bool,
    pod: Option<&str>,
) -> Result<Table> {
    let mut columns = vec![
        "source",
        "destination",
        "service",
        "protocol",
        "age_s",
        "state",
        "timeout_s",
        "flags",
        "rule",
    ];
    if !numeric {
        columns.extend(["source_pod", "destination_pod", "rule_name"]);
    }
    let mut table = Table::new(&columns);
    let mut connections = kernel_conntrack::dump()?;
    connections.sort_by_key(|connection| {
        let original = connection.original;
        (original.src, original.dst, original.sport, original.dport)
    });
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or_default();
    let local_pods: std::collections::BTreeSet<&str> =
        names.endpoints.values().map(String::as_str).collect();
    let rule_of = |verdict: &RuleVerdict| match verdict {
        RuleVerdict::Allowed {
            rule: Some(rule), ..
        } => Some(*rule),
        _ => None,
    };
    for connection in connections {
        let original = connection.original;
        // Policy judges the destination after DNAT: the reply's source.
        let (dst, dport) = (connection.reply.src, connection.reply.sport);
        let (src_pod, dst_pod) = (names.pod_at(original.src), names.pod_at(dst));
        let (egress, ingress) =
            rules.verdicts(&Flow::new(original.src, dst, original.protocol, dport));
        let dispatched = |verdict: &RuleVerdict| {
            matches!(
                verdict,
                RuleVerdict::Allowed { .. } | RuleVerdict::Denied { .. }
            )
        };
        let ours = [src_pod, dst_pod]
            .into_iter()
            .flatten()
            .any(|pod| local_pods.contains(pod))
            || dispatched(&egress)
            || dispatched(&ingress);
        let wanted = match pod {
            Some(pod) => src_pod == Some(pod) || dst_pod == Some(pod),
            None => ours,
        };
        if !wanted {
            continue;
        }
        let end = |ip: IpAddr, port: u16| format!("{}", std::net::SocketAddr::new(ip, port));
        let service = if (original.dst, original.dport) == (dst, dport) {
            "-".to_owned()
        } else {
            end(original.dst, original.dport)
        };
        let age = connection.start_ns.map_or_else(
            || "-".to_owned(),
            |start| format!("{:.1}", now_ns.saturating_sub(start) as f64 / 1e9),
        );
        let flags = flags_text(connection.status, numeric, &kernel_conntrack::STATUS_NAMES);
        let rule = rule_of(&ingress).or_else(|| rule_of(&egress));
        let mut row = vec![
            end(original.src, original.sport),
            end(dst, dport),
            service,
            original.protocol.to_string(),
            age,
            connection.state().to_owned(),
            connection
                .timeout_s
                .map_or_else(|| "-".to_owned(), |timeout| timeout.to_string()),
            flags,
            rule.unwrap_or_default().to_string(),
        ];
        if !numeric {
            row.extend([
                src_pod.unwrap_or("-").to_owned(),
                dst_pod.unwrap_or("-").to_owned(),
                rule.map_or_else(|| "-".to_owned(), |rule| names.rule(rule)),
            ]);
        }
        table.row(row);
    }
    Ok(table)
}

/// `netpol-agent monitor`: the drop and audit events as they happen.
pub fn monitor(args: &MonitorArgs) -> Result<Healthy> {
    let target = &args.target;
    let mut path = format!("/v1/monitor?follow={}", !args.no_follow);
    if let Some(since) = args.since {
        path.push_str(&format!("&since={}", since.as_secs_f64()));
    }
    let mut shown = 0u64;
    block_on(client::stream_lines(&target.socket, &path, |line| {
        let event: MonitorEvent =
            serde_json::from_str(line).with_context(|| format!("an event line: {line}"))?;
        let wanted = (!args.drops || event.kind != "audit")
            && args.pod.as_deref().is_none_or(|pod| {
                event.kind == "lost"
                    || event.pod.as_deref() == Some(pod)
                    || event.peer.as_deref() == Some(pod)
            });
        if wanted {
            match target.output {
                Output::Json => print(&format!("{line}\n")),
                Output::Table => print(&format!("{}\n", render_event(&event))),
            }
            shown += 1;
        }
        Ok(args.max_events.is_none_or(|max| shown < max))
    }))?;
    Ok(true)
}

fn render_event(event: &MonitorEvent) -> String {
    if event.kind == "lost" {
        return format!(
            "-- {} events missed: this terminal read too slowly --",
            event.count
        );
    }
    let clock = event
        .time
        .split('.')
        .next()
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .map(|seconds| {
            let day = seconds % 86_400;
            let millis = event.time.split('.').nth(1).unwrap_or("000");
            format!(
                "{:02}:{:02}:{:02}.{millis}",
                day / 3600,
                day / 60 % 60,
                day % 60
            )
        })
        .unwrap_or_default();
    let end = |ip: Option<IpAddr>, port: u16, pod: Option<&String>| {
        let address = ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "?".to_owned());
        let address = if port == 0 {
            address
        } else {
            format!("{address}:{port}")
        };
        match pod {
            Some(pod) => format!("{pod} ({address})"),
            None => address,
        }
    };
    let (source_pod, destination_pod) = if event.direction == "ingress" {
        (event.peer.as_ref(), event.pod.as_ref())
    } else {
        (event.pod.as_ref(), event.peer.as_ref())
    };
    let protocol = match event.protocol {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        132 => "sctp".to_owned(),
        1 | 58 => "icmp".to_owned(),
        other => format!("proto {other}"),
    };
    let mut line = format!(
        "{clock} {} {} {} -> {} {protocol} reason={}",
        event.kind.to_uppercase(),
        event.direction,
        end(event.src, event.sport, source_pod),
        end(event.dst, event.dport, destination_pod),
        event.reason
    );
    if !event.isolated_by.is_empty() {
        line.push_str(&format!(" isolated by {}", event.isolated_by.join(",")));
    }
    line
}
