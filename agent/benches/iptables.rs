//! `cargo xtask bench iptables`: the iptables and ipset backend against the eBPF backend on the
//! synthetic cluster of `benches/synthetic` (10,000 dual-stack pods in 500 namespaces, 110 on
//! the node) with 100, 1,000 and 10,000 policies. Needs root.
//!
//! For each state, both families (IPv4 and IPv6, as the backends write them):
//! - iptables: the rules in our `NP-` chains and the entries of our `np-` sets as the kernel
//!   holds them after a full sync (`*-save`, `ipset save`), the time of a full sync
//!   (`converge` into an empty namespace), and of one incremental update (`apply` of the delta
//!   of one policy update: the measured policy's port, 80 <-> 81), with what that update
//!   rewrote (rules of the chains that changed, entries of the sets that are new) and the
//!   two parts of every update that depend on the whole state: rendering it, and reading both
//!   families back with `*-save`;
//! - eBPF: the map entries a full sync writes (endpoints, ipcache, policy), the time of
//!   `converge` into emptied maps, and of `apply` of the same delta, with its map operations.
//!
//! The iptables backend runs in a network namespace of its own (`np-bench-<pid>`, deleted at
//! the end, also on failure): a thread `setns`es into it and the tools it spawns inherit it,
//! so the host's iptables and ipsets are never touched. The eBPF maps are private to this
//! process (not pinned, not attached). Figures only; recorded in `docs/IPTABLES-BENCH.md`.

mod synthetic;

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Command,
    time::{Duration, Instant},
};

use netpol_agent::{
    backend::{
        Backend, PodInterfaces,
        ebpf::{Datapath, EbpfBackend, MapSizes},
        iptables::{
            self, IptablesBackend,
            render::{self, Family, Ruleset},
            tools,
        },
    },
    model::Change,
    policy::{Delta, Engine, NodeState, Op},
};
use synthetic::{NODE, cluster, measured_policy};

/// Full syncs per state and backend (the median is printed); at 10,000 policies an iptables
/// sync takes seconds, so few.
const FULL_RUNS: usize = 3;
/// Incremental updates per state and backend (the median is printed).
const UPDATE_RUNS: usize = 5;

/// A network namespace of our own, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        let name = format!("np-bench-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map_err(|error| format!("cannot run ip: {error}"))?;
        if !status.success() {
            return Err(format!("ip netns add {name} failed ({status})"));
        }
        Ok(Self { name })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Moves the calling thread (and every process it spawns from now on) into the namespace,
    /// and checks that it is there.
    fn enter(&self) -> Result<(), String> {
        let file = File::open(self.path()).map_err(|error| format!("{}: {error}", self.path()))?;
        // SAFETY: a valid namespace file descriptor; only this thread's namespace changes.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let inode = |path: &str| std::fs::metadata(path).map(|meta| meta.ino()).ok();
        let here = inode("/proc/thread-self/ns/net");
        if here.is_none() || here != inode(&self.path()) {
            return Err("the thread is not in the benchmark namespace after setns".to_owned());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status()
        {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "bench iptables: deleting namespace {} failed ({other:?}); remove it with \
                 `ip netns delete {}`",
                self.name, self.name
            ),
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Rules in our chains as the kernel holds them, both families and tables.
fn kernel_rules(flavour: tools::Flavour) -> usize {
    Family::BOTH
        .into_iter()
        .map(|family| {
            tools::save(flavour, family)
                .expect("iptables-save runs")
                .values()
                .flat_map(|table| table.ours())
                .map(|(_, rules)| rules.len())
                .sum::<usize>()
        })
        .sum()
}

/// Our sets and their entries as the kernel holds them.
fn kernel_sets() -> (usize, usize) {
    let text = tools::run("ipset", &["save"], None).expect("ipset save runs");
    let ours = |verb: &str| {
        text.lines()
            .filter(|line| line.starts_with(&format!("{verb} {}", render::SET_PREFIX)))
            .count()
    };
    (ours("create"), ours("add"))
}

/// What an incremental write from `before` to `after` rewrites: the rules of the chains that
/// are new or changed, and the entries of the sets that are new.
fn rewritten(before: &Ruleset, after: &Ruleset) -> (usize, usize) {
    let rules = after
        .chains
        .iter()
        .flat_map(|(place, chains)| chains.iter().map(move |chain| (place, chain)))
        .filter(|(place, (name, rules))| {
            before
                .chains
                .get(*place)
                .and_then(|chains| chains.get(*name))
                != Some(*rules)
        })
        .map(|(_, (_, rules))| rules.len())
        .sum();
    let entries = after
        .sets
        .iter()
        .filter(|(name, _)| !before.sets.contains_key(*name))
        .map(|(_, set)| set.entries.len())
        .sum();
    (rules, entries)
}

/// Map operations of a delta (rule table bookkeeping left out).
fn map_ops(delta: &Delta) -> usize {
    delta
        .ops()
        .filter(|op| !matches!(op, Op::AddRule(..) | Op::RemoveRule(_)))
        .count()
}

struct Figures {
    policies: usize,
    policy_entries: usize,
    ipt_rules: usize,
    ipt_sets: usize,
    ipt_entries: usize,
    ipt_full: Duration,
    ipt_update: Duration,
    ipt_update_rules: usize,
    ipt_update_entries: usize,
    /// Parts of every iptables update: rendering the whole state, reading both families back.
    ipt_render: Duration,
    ipt_save: Duration,
    ebpf_entries: usize,
    ebpf_full: Duration,
    ebpf_update: Duration,
    ebpf_update_ops: usize,
}

/// Times `apply` of the two deltas alternately (every run a real change), starting from the
/// state the backend holds; returns the median.
fn time_updates(backend: &mut dyn Backend, deltas: &[Delta; 2], runs: usize) -> Duration {
    let pods = PodInterfaces::new();
    let samples = (0..runs)
        .map(|run| {
            let start = Instant::now();
            backend
                .apply(&deltas[run % 2], &pods)
                .expect("update applies");
            start.elapsed()
        })
        .collect();
    median(samples)
}

fn measure(
    policies: usize,
    flavour: tools::Flavour,
    ebpf: &mut EbpfBackend,
) -> Result<Figures, String> {
    let (mut engine, _) = Engine::with_snapshot(NODE, cluster(policies));
    let state: NodeState = engine.state().clone();
    let deltas = [
        engine.apply([Change::ApplyPolicy(measured_policy(81))]),
        engine.apply([Change::ApplyPolicy(measured_policy(80))]),
    ];
    if deltas.iter().any(Delta::is_empty) {
        return Err("the policy update changed nothing".to_owned());
    }
    let mut updated = state.clone();
    updated.apply(&deltas[0]);
    let before = render::render(
        &state,
        &[],
        true,
        &render::PodSources::new(),
        &Default::default(),
    );
    let ipt_render = median(
        (0..UPDATE_RUNS)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(render::render(
                    &state,
                    &[],
                    true,
                    &render::PodSources::new(),
                    &Default::default(),
                ));
                start.elapsed()
            })
            .collect(),
    );
    let (ipt_update_rules, ipt_update_entries) = rewritten(
        &before,
        &render::render(
            &updated,
            &[],
            true,
            &render::PodSources::new(),
            &Default::default(),
        ),
    );
    let pods = PodInterfaces::new();

    // iptables: each full sync into an empty namespace (our chains and sets removed).
    let mut samples = Vec::new();
    let mut backend = None;
    for _ in 0..FULL_RUNS {
        drop(backend.take());
        iptables::cleanup().map_err(|error| format!("cleanup: {error}"))?;
        let mut fresh = IptablesBackend::with_flavour(flavour).map_err(|e| e.to_string())?;
        let start = Instant::now();
        fresh
            .converge(&state, &pods)
            .map_err(|error| format!("iptables converge: {error}"))?;
        samples.push(start.elapsed());
        backend = Some(fresh);
    }
    let ipt_full = median(samples);
    let mut backend = backend.ok_or("no full sync ran")?;
    let ipt_rules = kernel_rules(flavour);
    let (ipt_sets, ipt_entries) = kernel_sets();
    let mut samples = Vec::new();
    for _ in 0..UPDATE_RUNS {
        let start = Instant::now();
        for family in Family::BOTH {
            tools::save(flavour, family).map_err(|error| format!("save: {error}"))?;
        }
        samples.push(start.elapsed());
    }
    let ipt_save = median(samples);
    let ipt_update = time_updates(&mut backend, &deltas, UPDATE_RUNS);
    drop(backend);
    iptables::cleanup().map_err(|error| format!("cleanup: {error}"))?;

    // eBPF: each full sync into emptied maps.
    let mut samples = Vec::new();
    for _ in 0..FULL_RUNS {
        ebpf.datapath_mut()
            .clear()
            .map_err(|error| format!("clearing the maps: {error}"))?;
        let start = Instant::now();
        ebpf.converge(&state, &pods)
            .map_err(|error| format!("ebpf converge: {error}"))?;
        samples.push(start.elapsed());
    }
    let ebpf_full = median(samples);
    let ebpf_update = time_updates(ebpf, &deltas, UPDATE_RUNS);

    Ok(Figures {
        policies,
        policy_entries: state.policy.len(),
        ipt_rules,
        ipt_sets,
        ipt_entries,
        ipt_full,
        ipt_update,
        ipt_update_rules,
        ipt_update_entries,
        ipt_render,
        ipt_save,
        ebpf_entries: state.endpoints.len() + state.ipcache.len() + state.policy.len(),
        ebpf_full,
        ebpf_update,
        ebpf_update_ops: map_ops(&deltas[0]),
    })
}

fn run(netns: &Netns) -> Result<(tools::Flavour, Vec<Figures>), String> {
    netns.enter()?;
    let backend = IptablesBackend::detect().map_err(|error| error.to_string())?;
    let flavour = backend.flavour();
    drop(backend);
    let datapath =
        Datapath::load(MapSizes::default()).map_err(|error| format!("datapath: {error}"))?;
    let mut ebpf = EbpfBackend::new(datapath).map_err(|error| format!("backend: {error}"))?;
    let mut figures = Vec::new();
    for policies in [100, 1_000, 10_000] {
        eprintln!("bench iptables: {policies} policies ...");
        figures.push(measure(policies, flavour, &mut ebpf)?);
    }
    Ok((flavour, figures))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "bench iptables: needs root (a network namespace of its own, iptables, ipset, eBPF \
             maps)"
        );
        std::process::exit(2);
    }
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(error) => {
            eprintln!("bench iptables: {error}");
            std::process::exit(1);
        }
    };
    // The worker is the only thread that enters the namespace; the guard outlives it.
    let result = std::thread::scope(|scope| scope.spawn(|| run(&netns)).join());
    let (flavour, figures) = match result {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            eprintln!("bench iptables: {error}");
            drop(netns);
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("bench iptables: the measuring thread panicked");
            drop(netns);
            std::process::exit(1);
        }
    };
    drop(netns);

    println!("iptables backend against eBPF backend (agent/benches/iptables.rs)");
    println!(
        "machine: {} ({} logical CPUs); iptables flavour: {} (in namespace np-bench-<pid>)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
        flavour.name()
    );
    println!(
        "cluster: 10,000 dual-stack pods in 500 namespaces, {NODE} runs 110; IPv4 + IPv6; \
         update = the measured policy's port 80 <-> 81"
    );
    println!(
        "times: medians of {FULL_RUNS} full syncs and {UPDATE_RUNS} updates per state and backend \
         (every update a real change)"
    );
    println!();
    println!(
        "| policies | policy entries | iptables rules (NP- chains) | ipsets | set entries | eBPF \
         map entries | update writes: iptables rules / set entries | update writes: eBPF map \
         ops |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            f.policies,
            f.policy_entries,
            f.ipt_rules,
            f.ipt_sets,
            f.ipt_entries,
            f.ebpf_entries,
            f.ipt_update_rules,
            f.ipt_update_entries,
            f.ebpf_update_ops,
        );
    }
    println!();
    println!(
        "| policies | iptables full sync | eBPF full sync | iptables update | of which render + save | eBPF update |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {} + {} | {} |",
            f.policies,
            millis(f.ipt_full),
            millis(f.ebpf_full),
            millis(f.ipt_update),
            millis(f.ipt_render),
            millis(f.ipt_save),
            millis(f.ebpf_update),
        );
    }
}
