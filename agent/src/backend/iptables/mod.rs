//! [`IptablesBackend`]: the compiled state enforced with iptables and ipset, for kernels the
//! eBPF datapath does not support (as kube-router and Felix's iptables mode do).
//!
//! [`render`] turns the engine's [`NodeState`] into sets and chains (the layout is documented
//! there and in `docs/ARCHITECTURE-iptables.md`); this module writes them:
//! 1. `ipset restore`: every set the new rules name that does not exist yet (set names carry
//!    a hash of their content, so a changed class is a new set; on a full sync, sets that
//!    already exist are refilled through a temporary set and `swap`);
//! 2. one `iptables-restore --noflush` per family: the chains that changed are declared (which
//!    flushes them) and rewritten, stale chains of ours are flushed and deleted, and our one
//!    jump per hooked built-in chain is (re)inserted at position 1 — one atomic commit per
//!    table, so no packet sees half an update;
//! 3. `ipset destroy` of our sets no rule names any more.
//!
//! Only chains named `NP-…` and sets named `np-…` are ever flushed or deleted, and only rules
//! jumping to `NP-…` chains are deleted from built-in chains. Per-rule counters are read from
//! `*-save -c` (rules are commented `np-rule-<id>`); counters of chains about to be rewritten
//! are carried over in memory first.

pub mod nflog;
pub mod nfnetlink;
pub mod render;
pub mod tools;

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{addr::Addr, endpoint::Endpoint, metrics::DropReason};

use self::{
    render::{Family, Ruleset, SET_PREFIX, Table, cidr},
    tools::{Flavour, SavedTable, comment, run},
};
use crate::{
    backend::{Backend, BackendError, Count, Counters, InterfaceRole, MapUsage, PodInterfaces},
    policy::{Delta, NodeState},
};

/// Errors of the iptables backend.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("no usable iptables: {reason}")]
    NoTool { reason: String },
}

/// Sets larger than this get a larger `maxelem`.
pub const DEFAULT_MAXELEM: usize = 65536;

/// The iptables and ipset backend.
pub struct IptablesBackend {
    flavour: Flavour,
    state: NodeState,
    service_ranges: Vec<(Addr, u8)>,
    enforce: bool,
    /// What the last successful sync wrote (`None`: nothing yet, or the kernel's content is
    /// unknown after a failure: the next sync rewrites everything).
    written: Option<Ruleset>,
    /// Counts of rules that were rewritten or removed, by comment.
    carried: BTreeMap<String, Count>,
    /// Pod addresses and the interface index they route through, as last given.
    pod_addresses: PodInterfaces,
    /// Pod interfaces no known pod routes through: closed.
    unknown_pods: BTreeSet<String>,
}

impl IptablesBackend {
    /// A backend on the flavour kube-proxy uses here (see [`Flavour::detect`]).
    pub fn detect() -> Result<Self, IptablesError> {
        let (flavour, reason) = Flavour::detect()?;
        tracing::info!(flavour = flavour.name(), reason, "iptables flavour chosen");
        Self::with_flavour(flavour)
    }

    /// A backend on `flavour`; checks that its tools and ipset run.
    pub fn with_flavour(flavour: Flavour) -> Result<Self, IptablesError> {
        for family in Family::BOTH {
            run(&flavour.program(family, "restore"), &["--version"], None)?;
        }
        run("ipset", &["version"], None)?;
        Ok(Self {
            flavour,
            state: NodeState::default(),
            service_ranges: Vec::new(),
            enforce: true,
            written: None,
            carried: BTreeMap::new(),
            pod_addresses: PodInterfaces::new(),
            unknown_pods: BTreeSet::new(),
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// What the backend would write for its current state.
    pub fn render(&self) -> Ruleset {
        render::render(
            &self.state,
            &self.service_ranges,
            self.enforce,
            &self.pod_sources(),
            &self.unknown_pods,
        )
    }

    /// Every pod interface, by name, with the addresses of the pods routed through it.
    fn pod_sources(&self) -> render::PodSources {
        let mut sources = render::PodSources::new();
        for (addr, index) in &self.pod_addresses {
            let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: the buffer holds IF_NAMESIZE bytes, as the call requires.
            let found = unsafe { libc::if_indextoname(*index, name.as_mut_ptr()) };
            // Gone: nothing arrives on it any more.
            if found.is_null() {
                continue;
            }
            // SAFETY: on success the buffer holds a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
            sources
                .entry(name.to_string_lossy().into_owned())
                .or_default()
                .push(*addr);
        }
        sources
    }

    /// Writes the current state: everything when `full` or after a failure, otherwise what
    /// changed since the last write.
    fn sync(&mut self, full: bool) -> Result<(), IptablesError> {
        let desired = self.render();
        let previous = if full { None } else { self.written.take() };
        let result = self.write(&desired, previous.as_ref());
        // On failure the kernel holds something between the two: rewrite everything next time.
        self.written = result.is_ok().then_some(desired);
        result
    }

    fn write(
        &mut self,
        desired: &Ruleset,
        previous: Option<&Ruleset>,
    ) -> Result<(), IptablesError> {
        // 1. Sets first: the rules about to name them need them.
        let existing: BTreeSet<String> = match previous {
            Some(previous) => previous.sets.keys().cloned().collect(),
            None => list_sets()?,
        };
        let mut batch = String::new();
        for (name, spec) in &desired.sets {
            if previous.is_some() && existing.contains(name) {
                continue;
            }
            let maxelem = spec.entries.len().max(DEFAULT_MAXELEM);
            let create = |name: &str| {
                format!(
                    "create {name} hash:net family {} maxelem {maxelem} -exist\n",
                    spec.family.ipset_family()
                )
            };
            let fill = |batch: &mut String, name: &str| {
                for (prefix, nomatch) in &spec.entries {
                    batch.push_str(&format!(
                        "add {name} {}{}\n",
                        cidr(prefix),
                        if *nomatch { " nomatch" } else { "" }
                    ));
                }
            };
            if existing.contains(name) {
                // Possibly in use by rules of a previous run: refill through a swap.
                let temporary = format!("{SET_PREFIX}tmp-{}", std::process::id());
                batch.push_str(&create(&temporary));
                batch.push_str(&format!("flush {temporary}\n"));
                fill(&mut batch, &temporary);
                batch.push_str(&format!("swap {temporary} {name}\ndestroy {temporary}\n"));
            } else {
                batch.push_str(&create(name));
                batch.push_str(&format!("flush {name}\n"));
                fill(&mut batch, name);
            }
        }
        if !batch.is_empty() {
            run("ipset", &["restore"], Some(&batch))?;
        }

        // 2. Chains, one atomic restore per family.
        for family in Family::BOTH {
            let saved = tools::save(self.flavour, family)?;
            let mut text = String::new();
            for table in Table::BOTH {
                let empty = BTreeMap::new();
                let wanted = desired.chains.get(&(family, table)).unwrap_or(&empty);
                let before = previous.and_then(|previous| previous.chains.get(&(family, table)));
                let kernel = saved.get(&table).cloned().unwrap_or_default();
                let section = self.table_section(table, wanted, before, &kernel);
                text.push_str(&section);
            }
            if !text.is_empty() {
                run(
                    &self.flavour.program(family, "restore"),
                    &["--noflush"],
                    Some(&text),
                )?;
            }
        }

        // 3. Sets nothing names any more.
        let mut batch = String::new();
        for name in existing {
            if !desired.sets.contains_key(&name) {
                batch.push_str(&format!("destroy {name}\n"));
            }
        }
        if !batch.is_empty()
            && let Err(error) = run("ipset", &["restore"], Some(&batch))
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "removing stale ipsets failed; retried on the next full sync"
            );
        }
        Ok(())
    }

    /// The `*table ... COMMIT` section that turns `kernel` into `wanted` (empty if nothing
    /// changes), carrying over the counters of rewritten and removed chains.
    fn table_section(
        &mut self,
        table: Table,
        wanted: &render::Chains,
        before: Option<&render::Chains>,
        kernel: &SavedTable,
    ) -> String {
        let (hook, entry) = table.hook();
        let rewrite: Vec<&String> = wanted
            .iter()
            .filter(|(name, rules)| {
                !kernel.chains.contains_key(*name)
                    || before.is_none_or(|before| before.get(*name) != Some(*rules))
            })
            .map(|(name, _)| name)
            .collect();
        let stale: Vec<&String> = kernel
            .ours()
            .map(|(name, _)| name)
            .filter(|name| !wanted.contains_key(*name))
            .collect();
        let jumps = kernel.jumps_to_ours(hook);
        let hook_ok = jumps.len() == 1 && jumps[0].0 == 0 && jumps[0].1 == format!("-j {entry}");
        if rewrite.is_empty() && stale.is_empty() && hook_ok {
            return String::new();
        }
        for name in rewrite.iter().chain(&stale) {
            for (count, rule) in kernel.chains.get(*name).into_iter().flatten() {
                if let Some(comment) = comment(rule) {
                    let carried = self.carried.entry(comment.to_owned()).or_default();
                    carried.packets += count.packets;
                    carried.bytes += count.bytes;
                }
            }
        }
        let mut text = format!("*{}\n", table.name());
        for name in &rewrite {
            text.push_str(&format!(":{name} - [0:0]\n"));
        }
        for name in &rewrite {
            for rule in &wanted[*name] {
                text.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        if !hook_ok {
            // Ours only: rules of the built-in chain that jump to one of our chains.
            for (_, rule) in &jumps {
                text.push_str(&format!("-D {hook} {rule}\n"));
            }
            text.push_str(&format!("-I {hook} 1 -j {entry}\n"));
        }
        for name in &stale {
            text.push_str(&format!("-F {name}\n"));
        }
        for name in &stale {
            text.push_str(&format!("-X {name}\n"));
        }
        text.push_str("COMMIT\n");
        text
    }

    /// Counters from the kernel plus those carried over from rewritten chains, by comment.
    fn counts(&self) -> Result<BTreeMap<String, Count>, IptablesError> {
        let mut counts = self.carried.clone();
        for family in Family::BOTH {
            for table in tools::save(self.flavour, family)?.values() {
                for (_, rules) in table.ours() {
                    for (count, rule) in rules {
                        if let Some(comment) = comment(rule) {
                            let total = counts.entry(comment.to_owned()).or_default();
                            total.packets += count.packets;
                            total.bytes += count.bytes;
                        }
                    }
                }
            }
        }
        Ok(counts)
    }
}

/// Our ipsets.
fn list_sets() -> Result<BTreeSet<String>, IptablesError> {
    Ok(run("ipset", &["list", "-n"], None)?
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(SET_PREFIX))
        .map(str::to_owned)
        .collect())
}

impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn converge(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), BackendError> {
        self.state = state.clone();
        self.pod_addresses = pods.clone();
        Ok(self.sync(true)?)
    }

    fn apply(&mut self, delta: &Delta, pods: &PodInterfaces) -> Result<(), BackendError> {
        self.state.apply(delta);
        self.pod_addresses = pods.clone();
        let full = self.written.is_none();
        Ok(self.sync(full)?)
    }

    fn fail_closed(
        &mut self,
        endpoints: &BTreeMap<Addr, Endpoint>,
        pods: &PodInterfaces,
    ) -> Result<(), BackendError> {
        self.pod_addresses = pods.clone();
        // Their dispatch rules then jump to the empty set's chains, which drop everything new.
        self.state
            .endpoints
            .extend(crate::backend::not_programmed(endpoints));
        Ok(self.sync(true)?)
    }

    fn set_service_ranges(&mut self, ranges: &[(Addr, u8)]) -> Result<(), BackendError> {
        self.service_ranges = ranges.to_vec();
        if self.written.is_some() {
            self.sync(false)?;
        }
        Ok(())
    }

    fn set_enforcement(&mut self, enforce: bool) -> Result<(), BackendError> {
        self.enforce = enforce;
        if self.written.is_some() {
            self.sync(false)?;
        }
        Ok(())
    }

    fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        // The hooks are per node, and the spoofing check follows the pod interfaces every
        // converge and delta is given; only closing an unknown pod's interface, or opening it
        // to its policies, is written here.
        let changed = match role {
            InterfaceRole::UnknownPod => self.unknown_pods.insert(iface.to_owned()),
            InterfaceRole::Pod => self.unknown_pods.remove(iface),
            InterfaceRole::Uplink => false,
        };
        if changed {
            let full = self.written.is_none();
            self.sync(full)?;
        }
        Ok(())
    }

    fn detach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        if role == InterfaceRole::UnknownPod && self.unknown_pods.remove(iface) {
            let full = self.written.is_none();
            self.sync(full)?;
        }
        Ok(())
    }

    fn remove_orphans(&mut self) -> Result<usize, BackendError> {
        // Rules match addresses, not interfaces: nothing outlives an interface.
        Ok(0)
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        let counts = self.counts()?;
        let mut counters = Counters::default();
        for reason in DropReason::ALL {
            for direction in ["ingress", "egress"] {
                counters
                    .drops
                    .insert((reason.name(), direction), Count::default());
            }
        }
        for (comment, count) in counts {
            let key = if let Some(rule) = comment.strip_prefix("np-rule-") {
                match rule.parse::<u32>() {
                    Ok(rule) if self.state.rules.contains_key(&rule) => {
                        let total = counters.rules.entry(rule).or_default();
                        total.packets += count.packets;
                        total.bytes += count.bytes;
                    }
                    _ => {}
                }
                continue;
            } else if let Some(direction) = comment
                .strip_prefix("np-drop-")
                .or_else(|| comment.strip_prefix("np-audit-"))
            {
                (DropReason::Policy.name(), direction)
            } else if let Some(direction) = comment.strip_prefix("np-invalid-") {
                (DropReason::Malformed.name(), direction)
            } else if let Some(direction) = comment.strip_prefix("np-spoofed-") {
                (DropReason::Spoofed.name(), direction)
            } else if let Some(direction) = comment.strip_prefix("np-unknown-pod-") {
                (DropReason::UnknownPod.name(), direction)
            } else {
                continue;
            };
            let direction = if key.1 == "ingress" {
                "ingress"
            } else {
                "egress"
            };
            let total = counters.drops.entry((key.0, direction)).or_default();
            total.packets += count.packets;
            total.bytes += count.bytes;
        }
        for rule in self.state.rules.keys() {
            counters.rules.entry(*rule).or_default();
        }
        Ok(counters)
    }

    fn usage(&self) -> Result<Vec<MapUsage>, BackendError> {
        let ruleset = self.written.clone().unwrap_or_else(|| self.render());
        let set_capacity: u64 = ruleset
            .sets
            .values()
            .map(|set| set.entries.len().max(DEFAULT_MAXELEM) as u64)
            .sum();
        Ok(vec![
            MapUsage {
                name: "iptables_rules",
                entries: ruleset.rule_count() as u64,
                capacity: u64::MAX,
            },
            MapUsage {
                name: "ipset_entries",
                entries: ruleset.set_entry_count() as u64,
                capacity: set_capacity,
            },
        ])
    }
}

/// Removes our jumps, chains and sets, in both flavours and families (`netpol-agent cleanup`).
/// Flavours whose tools are missing are skipped; nothing is written where nothing of ours is.
pub fn cleanup() -> Result<usize, IptablesError> {
    let mut removed = 0;
    for flavour in Flavour::BOTH {
        for family in Family::BOTH {
            let Ok(saved) = tools::save(flavour, family) else {
                continue;
            };
            let mut text = String::new();
            for table in Table::BOTH {
                let Some(kernel) = saved.get(&table) else {
                    continue;
                };
                let (hook, _) = table.hook();
                let jumps = kernel.jumps_to_ours(hook);
                let ours: Vec<&String> = kernel.ours().map(|(name, _)| name).collect();
                if jumps.is_empty() && ours.is_empty() {
                    continue;
                }
                text.push_str(&format!("*{}\n", table.name()));
                for (_, rule) in &jumps {
                    text.push_str(&format!("-D {hook} {rule}\n"));
                }
                for name in &ours {
                    text.push_str(&format!("-F {name}\n"));
                }
                for name in &ours {
                    text.push_str(&format!("-X {name}\n"));
                }
                text.push_str("COMMIT\n");
                removed += jumps.len() + ours.len();
            }
            if !text.is_empty() {
                run(
                    &flavour.program(family, "restore"),
                    &["--noflush"],
                    Some(&text),
                )?;
            }
        }
    }
    if let Ok(sets) = list_sets() {
        for name in sets {
            run("ipset", &["destroy", &name], None)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Lets the runtime drive a backend chosen at run time (`--backend auto`).
impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn converge(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), BackendError> {
        (**self).converge(state, pods)
    }

    fn apply(&mut self, delta: &Delta, pods: &PodInterfaces) -> Result<(), BackendError> {
        (**self).apply(delta, pods)
    }

    fn set_service_ranges(&mut self, ranges: &[(Addr, u8)]) -> Result<(), BackendError> {
        (**self).set_service_ranges(ranges)
    }

    fn grow(&mut self, error: &BackendError) -> Result<bool, BackendError> {
        (**self).grow(error)
    }

    fn set_enforcement(&mut self, enforce: bool) -> Result<(), BackendError> {
        (**self).set_enforcement(enforce)
    }

    fn fail_closed(
        &mut self,
        endpoints: &BTreeMap<Addr, Endpoint>,
        pods: &PodInterfaces,
    ) -> Result<(), BackendError> {
        (**self).fail_closed(endpoints, pods)
    }

    fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        (**self).attach(iface, role)
    }

    fn detach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        (**self).detach(iface, role)
    }

    fn remove_orphans(&mut self) -> Result<usize, BackendError> {
        (**self).remove_orphans()
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        (**self).counters()
    }

    fn usage(&self) -> Result<Vec<MapUsage>, BackendError> {
        (**self).usage()
    }
}
