//! The pure half of the iptables backend: a [`NodeState`] (with the Service ranges and the
//! enforcement switch) rendered into the ipsets and iptables chains that decide exactly what
//! [`crate::policy::lookup`] decides. No I/O: [`super::IptablesBackend`] writes the result.
//!
//! Layout, per family (IPv4 through `iptables`, IPv6 through `ip6tables`):
//! - one `hash:net` ipset per peer class a policy entry names ([`class_sets`]): the class's
//!   prefixes, plus `nomatch` entries for every more specific prefix inside them that belongs
//!   to another class. ipset's `hash:net` looks up the longest of its own entries and a
//!   `nomatch` hit is a miss, so membership is exactly "the longest ipcache prefix of this
//!   address has this class". Set names carry a hash of their content, so a changed class is a
//!   new set and rules switch to it in the same atomic `iptables-restore` as everything else.
//! - mangle `NP-PREROUTING` (jumped to from `PREROUTING`, before kube-proxy's DNAT in nat
//!   `PREROUTING`): the egress of local pods to everything except the Service ranges, on the
//!   address the pod sent to, as the eBPF backend's `netpol_from_pod`.
//! - filter `NP-FORWARD` (jumped to from `FORWARD`, after DNAT): the egress of local pods whose
//!   connection was addressed to a Service range (`--ctorigdst`), judged on the backend, and
//!   the ingress of local pods.
//! - per set and direction a chain (`NP-E-<set>`, `NP-I-<set>`; `NP-EA-`/`NP-IA-` for audit
//!   endpoints) with one rule per policy entry, most specific first, each commented
//!   `np-rule-<id>` for the counters; it ends in the direction's drop (or audit) chain.
//!
//! Allowed traffic `RETURN`s to the built-in chain so other rules (kube-proxy's, the CNI's)
//! still see it, as allowed packets in the eBPF backend go on to the next tc filter.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use agent_common::{
    addr::{Addr, FAMILY_V4, FAMILY_V6},
    ipcache::{CLASS_ANY, CLASS_WORLD},
    policy::{DIR_EGRESS, DIR_INGRESS, PREFIX_ANY_PORT, PREFIX_ANY_PROTO},
};

use crate::policy::{IpPrefix, NodeState, PolicyEntryKey};

/// Every chain of ours starts with this.
pub const CHAIN_PREFIX: &str = "NP-";
/// Every ipset of ours starts with this.
pub const SET_PREFIX: &str = "np-";
/// The NFLOG group drop and audit logs go to.
pub const NFLOG_GROUP: u16 = 1990;
/// Log rate limit (per drop chain).
const LOG_LIMIT: &str = "-m limit --limit 10/sec --limit-burst 20";

/// An address family: IPv4 rules go to `iptables`, IPv6 rules to `ip6tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Self; 2] = [Self::V4, Self::V6];

    pub fn of(addr: &Addr) -> Option<Self> {
        match addr.family {
            FAMILY_V4 => Some(Self::V4),
            FAMILY_V6 => Some(Self::V6),
            _ => None,
        }
    }

    fn tag(self) -> char {
        match self {
            Self::V4 => '4',
            Self::V6 => '6',
        }
    }

    /// `ipset create ... family <this>`.
    pub fn ipset_family(self) -> &'static str {
        match self {
            Self::V4 => "inet",
            Self::V6 => "inet6",
        }
    }

    /// The two halves of the address space (`hash:net` cannot hold a /0).
    fn halves(self) -> [IpPrefix; 2] {
        let zero = match self {
            Self::V4 => Addr::v4([0; 4]),
            Self::V6 => Addr::v6([0; 16]),
        };
        let mut high = zero;
        high.bytes[0] = 0x80;
        [IpPrefix::new(zero, 1), IpPrefix::new(high, 1)]
    }
}

/// The tables we hook into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Mangle,
    Filter,
}

impl Table {
    pub const BOTH: [Self; 2] = [Self::Mangle, Self::Filter];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mangle => "mangle",
            Self::Filter => "filter",
        }
    }

    /// The built-in chain holding our one jump, and the chain it jumps to.
    pub fn hook(self) -> (&'static str, &'static str) {
        match self {
            Self::Mangle => ("PREROUTING", "NP-PREROUTING"),
            Self::Filter => ("FORWARD", "NP-FORWARD"),
        }
    }
}

/// One ipset: its family and entries (prefix, `nomatch`), sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec {
    pub family: Family,
    pub entries: Vec<(IpPrefix, bool)>,
}

/// Chain name -> rules (the arguments after `-A <chain>`).
pub type Chains = BTreeMap<String, Vec<String>>;

/// Everything the backend writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, SetSpec>,
    pub chains: BTreeMap<(Family, Table), Chains>,
}

impl Ruleset {
    /// Rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains
            .values()
            .flat_map(|chains| chains.values())
            .map(Vec::len)
            .sum()
    }

    /// Entries in all sets.
    pub fn set_entry_count(&self) -> usize {
        self.sets.values().map(|set| set.entries.len()).sum()
    }
}

/// Pod interfaces by name, each with the addresses of the pods behind it: anything else a pod
/// sends is forged.
pub type PodSources = BTreeMap<String, Vec<Addr>>;

/// Renders `state` for both families. `unknown_pods` are pod interfaces no known pod routes
/// through: closed both ways.
pub fn render(
    state: &NodeState,
    service_ranges: &[(Addr, u8)],
    enforce: bool,
    pod_sources: &PodSources,
    unknown_pods: &BTreeSet<String>,
) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for family in Family::BOTH {
        let sets = class_sets(state, family);
        let names: BTreeMap<u32, String> = sets
            .iter()
            .map(|(class, spec)| (*class, set_name(family, *class, spec)))
            .collect();
        let ranges: Vec<IpPrefix> = service_ranges
            .iter()
            .filter(|(addr, _)| Family::of(addr) == Some(family))
            .map(|(addr, len)| IpPrefix::new(*addr, *len))
            .collect();
        for table in Table::BOTH {
            let mut chains = render_table(state, family, table, &names, &ranges, enforce);
            if table == Table::Mangle {
                add_spoofing_check(&mut chains, family, pod_sources);
            }
            if enforce && !unknown_pods.is_empty() {
                add_unknown_pods(&mut chains, table, unknown_pods);
            }
            ruleset.chains.insert((family, table), chains);
        }
        for (class, spec) in sets {
            ruleset.sets.insert(names[&class].clone(), spec);
        }
    }
    ruleset
}

/// `NP-ANTISPOOF`, entered from `NP-PREROUTING` for packets of new connections: on a pod
/// interface, a source that is none of its pods' addresses is dropped as `spoofed` (link-
/// scoped ICMPv6 aside: neighbour discovery, DAD and MLD use no pod address), as
/// `netpol_from_pod` does.
fn add_spoofing_check(chains: &mut Chains, family: Family, pod_sources: &PodSources) {
    const CHECK: &str = "NP-ANTISPOOF";
    const DROP: &str = "NP-SPOOFED";
    let mut check = Vec::new();
    for (iface, addresses) in pod_sources {
        for addr in addresses
            .iter()
            .filter(|addr| Family::of(addr) == Some(family))
        {
            check.push(format!(
                "-i {iface} -s {} -j RETURN",
                cidr(&IpPrefix::host(*addr))
            ));
        }
        check.push(format!("-i {iface} -j {DROP}"));
    }
    let mut drop = Vec::new();
    if family == Family::V6 {
        for source in ["fe80::/10", "ff00::/8", "::/128"] {
            drop.push(format!("-s {source} -p ipv6-icmp -j RETURN"));
        }
    }
    drop.push(format!(
        "{LOG_LIMIT} -j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix np-spoofed-egress"
    ));
    drop.push("-m comment --comment np-spoofed-egress -j DROP".to_owned());
    let top = chains
        .entry(format!("{CHAIN_PREFIX}PREROUTING"))
        .or_default();
    // Right after replies and related packets return: every new connection is checked.
    let at = top
        .iter()
        .position(|rule| rule.contains("--ctstate RELATED,ESTABLISHED"))
        .map_or(0, |index| index + 1);
    top.insert(at, format!("-j {CHECK}"));
    chains.insert(CHECK.to_owned(), check);
    chains.insert(DROP.to_owned(), drop);
}

/// `NP-UNKNOWN-POD`, first in the table's top chain: everything from or to a pod interface the
/// agent knows no pod of yet is dropped (reason `unknown_pod`), established connections
/// included, as `netpol_unknown_pod` does. Mangle PREROUTING sees what the pod sends, filter
/// FORWARD what is forwarded to it.
fn add_unknown_pods(chains: &mut Chains, table: Table, unknown_pods: &BTreeSet<String>) {
    const CHAIN: &str = "NP-UNKNOWN-POD";
    let (rules, direction): (Vec<String>, &str) = match table {
        Table::Mangle => (
            unknown_pods
                .iter()
                .map(|iface| format!("-i {iface} -j {CHAIN}"))
                .collect(),
            "egress",
        ),
        Table::Filter => (
            unknown_pods
                .iter()
                .map(|iface| format!("-o {iface} -j {CHAIN}"))
                .collect(),
            "ingress",
        ),
    };
    let (_, entry) = table.hook();
    let top = chains.entry(entry.to_owned()).or_default();
    for (index, rule) in rules.into_iter().enumerate() {
        top.insert(index, rule);
    }
    chains.insert(
        CHAIN.to_owned(),
        vec![
            format!(
                "{LOG_LIMIT} -j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix np-unknown-pod-{direction}"
            ),
            format!("-m comment --comment np-unknown-pod-{direction} -j DROP"),
        ],
    );
}

/// The classes policy entries name (never [`CLASS_ANY`]), each with its set for `family`.
pub fn class_sets(state: &NodeState, family: Family) -> BTreeMap<u32, SetSpec> {
    let wanted: BTreeSet<u32> = state
        .policy
        .keys()
        .map(|key| key.key.class_id())
        .filter(|class| *class != CLASS_ANY)
        .collect();
    let mut prefixes: BTreeMap<IpPrefix, u32> = state
        .ipcache
        .iter()
        .filter(|(prefix, _)| Family::of(&prefix.addr) == Some(family))
        .map(|(prefix, class)| (*prefix, class.id))
        .collect();
    // hash:net has no /0: a /0 becomes its two halves, unless a half is a prefix itself (then
    // that half was the longer match anyway).
    let root = IpPrefix::new(family.halves()[0].addr, 0);
    if let Some(class) = prefixes.remove(&root) {
        for half in family.halves() {
            prefixes.entry(half).or_insert(class);
        }
    }
    let mut sets = BTreeMap::new();
    for class in wanted {
        let mut members = prefixes.clone();
        if class == CLASS_WORLD {
            // An address no prefix holds is of the world too: the halves nobody covers are
            // the world's (they are the shortest entries, so every real prefix beats them).
            for half in family.halves() {
                members.entry(half).or_insert(CLASS_WORLD);
            }
        }
        let mut entries = Vec::new();
        for (prefix, owner) in &members {
            if *owner == class {
                entries.push((*prefix, false));
            } else if (1..prefix.len)
                .any(|len| members.get(&IpPrefix::new(prefix.addr, len)) == Some(&class))
            {
                entries.push((*prefix, true));
            }
        }
        sets.insert(class, SetSpec { family, entries });
    }
    sets
}

/// `np-<family><class hex>-<content hash>`: at most 26 characters (ipset allows 31).
fn set_name(family: Family, class: u32, spec: &SetSpec) -> String {
    // FNV-1a over the entries; 48 bits are plenty for the handful of sets alive at once.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (prefix, nomatch) in &spec.entries {
        for byte in prefix
            .addr
            .bytes
            .iter()
            .chain([&prefix.len, &u8::from(*nomatch)])
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!(
        "{SET_PREFIX}{}{class:x}-{:012x}",
        family.tag(),
        hash & 0xffff_ffff_ffff
    )
}

/// `addr/len` as iptables and ipset write it.
pub fn cidr(prefix: &IpPrefix) -> String {
    match prefix.addr.to_ip() {
        Some(ip) => format!("{ip}/{}", prefix.len),
        None => String::from("0.0.0.0/32"),
    }
}

fn direction_name(direction: u8) -> &'static str {
    if direction == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// The chain judging `set` in `direction` (`audit`: the variant that logs and passes).
pub fn set_chain(set: u32, direction: u8, audit: bool) -> String {
    let letter = if direction == DIR_INGRESS { 'I' } else { 'E' };
    let audit = if audit { "A" } else { "" };
    format!("{CHAIN_PREFIX}{letter}{audit}-{set:x}")
}

fn drop_chain(direction: u8, audit: bool) -> String {
    let letter = if direction == DIR_INGRESS { 'I' } else { 'E' };
    let kind = if audit { "AUDIT" } else { "DROP" };
    format!("{CHAIN_PREFIX}{kind}-{letter}")
}

fn render_table(
    state: &NodeState,
    family: Family,
    table: Table,
    sets: &BTreeMap<u32, String>,
    service_ranges: &[IpPrefix],
    enforce: bool,
) -> Chains {
    let mut chains = Chains::new();
    let (_, entry) = table.hook();
    let mut top = Vec::new();
    if !enforce {
        top.push("-m comment --comment np-enforcement-off -j RETURN".to_owned());
    }
    top.push("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_owned());
    let endpoints = state
        .endpoints
        .iter()
        .filter(|(addr, _)| Family::of(addr) == Some(family));
    // (set, direction, audit) of every set chain the dispatch rules use.
    let mut used: BTreeSet<(u32, u8, bool)> = BTreeSet::new();
    let audit_of = |endpoint: &agent_common::endpoint::Endpoint| {
        endpoint.flags & agent_common::endpoint::FLAG_AUDIT != 0
    };
    match table {
        Table::Mangle => {
            if family == Family::V6 {
                // Router and neighbour discovery with the node always pass.
                for kind in 133..=137 {
                    top.push(format!(
                        "-p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN"
                    ));
                }
            }
            for range in service_ranges {
                top.push(format!(
                    "-d {} -m comment --comment np-service-after-dnat -j RETURN",
                    cidr(range)
                ));
            }
            for (addr, endpoint) in endpoints {
                if let Some(set) = endpoint.isolation(DIR_EGRESS) {
                    let audit = audit_of(endpoint);
                    used.insert((set, DIR_EGRESS, audit));
                    top.push(format!(
                        "-s {} -g {}",
                        cidr(&IpPrefix::host(*addr)),
                        set_chain(set, DIR_EGRESS, audit)
                    ));
                }
            }
        }
        Table::Filter => {
            let mut services = Vec::new();
            let mut ingress = Vec::new();
            for (addr, endpoint) in endpoints {
                let host = cidr(&IpPrefix::host(*addr));
                let audit = audit_of(endpoint);
                if let Some(set) = endpoint.isolation(DIR_EGRESS) {
                    used.insert((set, DIR_EGRESS, audit));
                    services.push(format!(
                        "-s {host} -j {}",
                        set_chain(set, DIR_EGRESS, audit)
                    ));
                }
                if let Some(set) = endpoint.isolation(DIR_INGRESS) {
                    used.insert((set, DIR_INGRESS, audit));
                    ingress.push(format!(
                        "-d {host} -g {}",
                        set_chain(set, DIR_INGRESS, audit)
                    ));
                }
            }
            let services_chain = format!("{CHAIN_PREFIX}SERVICES");
            for range in service_ranges {
                top.push(format!(
                    "-m conntrack --ctorigdst {} -j {services_chain}",
                    cidr(range)
                ));
            }
            top.extend(ingress);
            chains.insert(services_chain, services);
        }
    }
    chains.insert(entry.to_owned(), top);

    // Policy entries per (set, direction).
    let mut entries: BTreeMap<(u32, u8), Vec<&PolicyEntryKey>> = BTreeMap::new();
    for key in state.policy.keys() {
        entries
            .entry((key.key.set_id(), key.key.direction))
            .or_default()
            .push(key);
    }
    for (set, direction, audit) in used {
        let mut rules = Vec::new();
        if !audit {
            rules.push(format!(
                "-m conntrack --ctstate INVALID -m comment --comment np-invalid-{} -j DROP",
                direction_name(direction)
            ));
        }
        let mut keys: Vec<&PolicyEntryKey> =
            entries.get(&(set, direction)).cloned().unwrap_or_default();
        // The packet's own class before CLASS_ANY, most specific first: the first hit is the
        // entry `lookup` credits.
        keys.sort_by_key(|key| {
            (
                key.key.class_id() == CLASS_ANY,
                std::cmp::Reverse(key.prefix_len),
                **key,
            )
        });
        for key in keys {
            let Some(ports) = port_match(key) else {
                continue;
            };
            let mut rule = String::new();
            let class = key.key.class_id();
            if class != CLASS_ANY {
                let Some(name) = sets.get(&class) else {
                    continue;
                };
                let side = if direction == DIR_INGRESS {
                    "src"
                } else {
                    "dst"
                };
                let _ = write!(rule, "-m set --match-set {name} {side} ");
            }
            rule.push_str(&ports);
            let rule_id = state.policy[key].rule;
            let _ = write!(rule, "-m comment --comment np-rule-{rule_id} -j RETURN");
            rules.push(rule);
        }
        rules.push(format!("-j {}", drop_chain(direction, audit)));
        chains.insert(set_chain(set, direction, audit), rules);
    }
    let directions: &[u8] = match table {
        Table::Mangle => &[DIR_EGRESS],
        Table::Filter => &[DIR_EGRESS, DIR_INGRESS],
    };
    for direction in directions {
        let name = direction_name(*direction);
        chains.insert(
            drop_chain(*direction, false),
            vec![
                format!(
                    "{LOG_LIMIT} -j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix np-drop-{name}"
                ),
                format!("-m comment --comment np-drop-{name} -j DROP"),
            ],
        );
        chains.insert(
            drop_chain(*direction, true),
            vec![
                format!(
                    "{LOG_LIMIT} -j NFLOG --nflog-group {NFLOG_GROUP} --nflog-prefix np-audit-{name}"
                ),
                format!("-m comment --comment np-audit-{name} -j RETURN"),
            ],
        );
    }
    chains
}

/// The protocol and port match of an entry (ending in a space when not empty), or `None` if
/// no packet can match it.
fn port_match(key: &PolicyEntryKey) -> Option<String> {
    if key.prefix_len <= PREFIX_ANY_PROTO {
        return Some(String::new());
    }
    let protocol = key.key.protocol;
    if protocol == 0 {
        // `-p 0` would mean "every protocol"; a packet never has protocol 0 here.
        return None;
    }
    let name = match protocol {
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        _ => None,
    };
    if key.prefix_len <= PREFIX_ANY_PORT {
        return Some(format!("-p {protocol} "));
    }
    let bits = key.prefix_len - PREFIX_ANY_PORT;
    let mask: u16 = if bits >= 16 {
        0xffff
    } else {
        !(0xffffu16 >> bits)
    };
    let low = key.key.port_number() & mask;
    let high = low | !mask;
    match name {
        Some(name) => {
            let ports = if low == high {
                low.to_string()
            } else {
                format!("{low}:{high}")
            };
            Some(format!("-p {name} -m {name} --dport {ports} "))
        }
        // Protocols without ports are looked up with port 0.
        None if low == 0 => Some(format!("-p {protocol} ")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        endpoint::{Endpoint, FLAG_EGRESS_ISOLATED, FLAG_INGRESS_ISOLATED},
        ipcache::PeerClass,
        policy::{PREFIX_FULL, PolicyKey, PolicyValue},
    };
    use proptest::prelude::*;

    use super::*;

    /// ipset's `hash:net` lookup: the longest entry holding `addr`; a `nomatch` one is a miss.
    fn ipset_test(spec: &SetSpec, addr: Addr) -> bool {
        spec.entries
            .iter()
            .filter(|(prefix, _)| prefix.contains(&IpPrefix::host(addr)))
            .max_by_key(|(prefix, _)| prefix.len)
            .is_some_and(|(_, nomatch)| !nomatch)
    }

    fn lpm_class(state: &NodeState, addr: Addr) -> u32 {
        (0..=32u8)
            .rev()
            .find_map(|len| state.ipcache.get(&IpPrefix::new(addr, len)))
            .map_or(CLASS_WORLD, |class| class.id)
    }

    fn prefix_strategy() -> impl Strategy<Value = (IpPrefix, u32)> {
        // A small corner of the address space, so prefixes nest often.
        (0u8..4, 0u8..4, 0u8..=32, 1u32..5).prop_map(|(a, b, len, class)| {
            let len = if len < 24 { len / 8 * 8 } else { len };
            (IpPrefix::new(Addr::v4([10, a, 0, b]), len), class)
        })
    }

    proptest! {
        /// Membership of a class's set is exactly "the longest prefix is of this class", for
        /// every class (the world included) and every address near the prefixes.
        #[test]
        fn class_sets_encode_the_longest_prefix_match(
            prefixes in proptest::collection::vec(prefix_strategy(), 0..12),
            probes in proptest::collection::vec((0u8..4, 0u8..4, any::<u8>()), 1..24),
        ) {
            let mut state = NodeState::default();
            for (prefix, class) in &prefixes {
                state.ipcache.insert(*prefix, PeerClass { id: *class });
            }
            for class in 1..5 {
                let key = PolicyKey::new(7, class, DIR_INGRESS, 6, 80);
                state.policy.insert(PolicyEntryKey::new(key, PREFIX_FULL), PolicyValue { rule: 1 });
            }
            let sets = class_sets(&state, Family::V4);
            for (a, b, c) in probes {
                for addr in [Addr::v4([10, a, c, b]), Addr::v4([10, a, 0, b]), Addr::v4([c, a, b, 1])] {
                    let class = lpm_class(&state, addr);
                    for (id, spec) in &sets {
                        prop_assert_eq!(ipset_test(spec, addr), *id == class, "{:?} class {} set {}", addr, class, id);
                    }
                }
            }
        }
    }

    #[test]
    fn a_slash_zero_becomes_two_halves_and_keeps_its_carve_outs() {
        let mut state = NodeState::default();
        let any = IpPrefix::new(Addr::v4([0; 4]), 0);
        let except = IpPrefix::new(Addr::v4([10, 0, 0, 0]), 8);
        state.ipcache.insert(any, PeerClass { id: 2 });
        state.ipcache.insert(except, PeerClass { id: CLASS_WORLD });
        for class in [2, CLASS_WORLD] {
            let key = PolicyKey::new(7, class, DIR_EGRESS, 0, 0);
            state.policy.insert(
                PolicyEntryKey::new(key, PREFIX_ANY_PROTO),
                PolicyValue { rule: 1 },
            );
        }
        let sets = class_sets(&state, Family::V4);
        assert!(ipset_test(&sets[&2], Addr::v4([8, 8, 8, 8])));
        assert!(!ipset_test(&sets[&2], Addr::v4([10, 1, 1, 1])));
        assert!(ipset_test(&sets[&CLASS_WORLD], Addr::v4([10, 1, 1, 1])));
        assert!(!ipset_test(&sets[&CLASS_WORLD], Addr::v4([8, 8, 8, 8])));
        assert!(
            sets.values()
                .flat_map(|set| &set.entries)
                .all(|(p, _)| p.len > 0)
        );
    }

    #[test]
    fn port_ranges_and_wildcards_become_matches() {
        let key =
            |protocol, port, len| PolicyEntryKey::new(PolicyKey::new(1, 2, 0, protocol, port), len);
        assert_eq!(
            port_match(&key(6, 80, PREFIX_FULL)).as_deref(),
            Some("-p tcp -m tcp --dport 80 ")
        );
        assert_eq!(
            port_match(&key(17, 0x1200, PREFIX_ANY_PORT + 8)).as_deref(),
            Some("-p udp -m udp --dport 4608:4863 ")
        );
        assert_eq!(
            port_match(&key(132, 0, PREFIX_ANY_PORT)).as_deref(),
            Some("-p 132 ")
        );
        assert_eq!(
            port_match(&key(1, 0, PREFIX_FULL)).as_deref(),
            Some("-p 1 ")
        );
        assert_eq!(port_match(&key(1, 8, PREFIX_FULL)), None);
        assert_eq!(
            port_match(&key(0, 0, PREFIX_ANY_PROTO)).as_deref(),
            Some("")
        );
    }

    #[test]
    fn isolated_endpoints_dispatch_to_their_set_chains_and_allowed_traffic_returns() {
        let mut state = NodeState::default();
        let pod = Addr::v4([10, 244, 1, 10]);
        state.endpoints.insert(
            pod,
            Endpoint {
                id: 1,
                ifindex: 0,
                flags: FLAG_INGRESS_ISOLATED | FLAG_EGRESS_ISOLATED,
                ingress_set: 5,
                egress_set: 6,
            },
        );
        state.ipcache.insert(
            IpPrefix::host(Addr::v4([10, 244, 1, 11])),
            PeerClass { id: 3 },
        );
        state.policy.insert(
            PolicyEntryKey::new(PolicyKey::new(5, 3, DIR_INGRESS, 6, 80), PREFIX_FULL),
            PolicyValue { rule: 9 },
        );
        let sources = PodSources::from([(
            "cali1".to_owned(),
            vec![
                Addr::v4([10, 244, 1, 10]),
                Addr::from("fd00::a".parse::<std::net::IpAddr>().expect("v6")),
            ],
        )]);
        let ruleset = render(
            &state,
            &[(Addr::v4([10, 96, 0, 0]), 16)],
            true,
            &sources,
            &BTreeSet::new(),
        );
        let filter = &ruleset.chains[&(Family::V4, Table::Filter)];
        assert!(filter["NP-FORWARD"].contains(&"-d 10.244.1.10/32 -g NP-I-5".to_owned()));
        assert!(filter["NP-SERVICES"].contains(&"-s 10.244.1.10/32 -j NP-E-6".to_owned()));
        let rule = &filter["NP-I-5"][1];
        assert!(rule.starts_with("-m set --match-set np-43-"), "{rule}");
        assert!(
            rule.ends_with("src -p tcp -m tcp --dport 80 -m comment --comment np-rule-9 -j RETURN"),
            "{rule}"
        );
        assert_eq!(
            filter["NP-I-5"].last().map(String::as_str),
            Some("-j NP-DROP-I")
        );
        let mangle = &ruleset.chains[&(Family::V4, Table::Mangle)];
        assert!(mangle["NP-PREROUTING"].contains(&"-s 10.244.1.10/32 -g NP-E-6".to_owned()));
        assert_eq!(
            mangle["NP-E-6"].last().map(String::as_str),
            Some("-j NP-DROP-E")
        );
        assert!(ruleset.sets.keys().all(|name| name.len() <= 31));
        // Pods send from their own addresses only; new connections are checked first.
        assert_eq!(mangle["NP-PREROUTING"][1], "-j NP-ANTISPOOF");
        assert_eq!(
            mangle["NP-ANTISPOOF"],
            [
                "-i cali1 -s 10.244.1.10/32 -j RETURN",
                "-i cali1 -j NP-SPOOFED"
            ]
        );
        let mangle6 = &ruleset.chains[&(Family::V6, Table::Mangle)];
        assert_eq!(
            mangle6["NP-ANTISPOOF"][0],
            "-i cali1 -s fd00::a/128 -j RETURN"
        );
        assert!(mangle6["NP-SPOOFED"][0].starts_with("-s fe80::/10 -p ipv6-icmp"));
    }

    /// A pod interface no known pod routes through is closed both ways, first thing, with its
    /// own counted reason; with enforcement off nothing is closed.
    #[test]
    fn unknown_pod_interfaces_are_closed_both_ways() {
        let unknown = BTreeSet::from(["veth0badc0de".to_owned()]);
        let ruleset = render(
            &NodeState::default(),
            &[],
            true,
            &PodSources::new(),
            &unknown,
        );
        for family in Family::BOTH {
            let mangle = &ruleset.chains[&(family, Table::Mangle)];
            assert_eq!(
                mangle["NP-PREROUTING"][0],
                "-i veth0badc0de -j NP-UNKNOWN-POD"
            );
            assert_eq!(
                mangle["NP-UNKNOWN-POD"].last().map(String::as_str),
                Some("-m comment --comment np-unknown-pod-egress -j DROP")
            );
            let filter = &ruleset.chains[&(family, Table::Filter)];
            assert_eq!(filter["NP-FORWARD"][0], "-o veth0badc0de -j NP-UNKNOWN-POD");
            assert_eq!(
                filter["NP-UNKNOWN-POD"].last().map(String::as_str),
                Some("-m comment --comment np-unknown-pod-ingress -j DROP")
            );
        }
        let off = render(
            &NodeState::default(),
            &[],
            false,
            &PodSources::new(),
            &unknown,
        );
        assert!(
            !off.chains[&(Family::V4, Table::Filter)].contains_key("NP-UNKNOWN-POD"),
            "enforcement off closes nothing"
        );
    }
}
