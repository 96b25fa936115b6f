//! The iptables backend as the kernel holds it: our `NP-` chains (`*-save`) and `np-` sets
//! (`ipset save`) read back and walked the way netfilter walks them for a new connection, so
//! that `explain` gives the verdict of the rules really installed. Only the rule shapes the
//! backend writes (`backend/iptables/render.rs`) are understood; anything else in our chains
//! is reported as not understood rather than guessed.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};

use crate::{
    backend::iptables::{
        render::{Family, SET_PREFIX, Table},
        tools::{self, Flavour, SavedTable},
    },
    policy::{Flow, IpPrefix},
};

/// Our chains of both families and our sets.
pub struct IptablesState {
    pub flavour: Flavour,
    pub tables: BTreeMap<(Family, Table), SavedTable>,
    /// Set name -> entries (prefix, `nomatch`).
    pub sets: BTreeMap<String, Vec<(IpPrefix, bool)>>,
}

/// The verdict of one direction as the installed rules decide it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    /// No dispatch rule for the address: not isolated here (or not a local pod).
    NotIsolated,
    /// Enforcement is switched off (the entry chain returns first).
    EnforcementOff,
    /// The destination is a Service range: egress is judged after DNAT.
    AfterDnat,
    Allowed {
        chain: String,
        rule: Option<u32>,
    },
    Denied {
        chain: String,
    },
    /// A rule of ours this reader does not understand.
    NotUnderstood {
        chain: String,
        rule: String,
    },
}

impl RuleVerdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }
}

impl IptablesState {
    /// Reads our chains and sets in the flavour the agent would pick.
    pub fn read() -> Result<Self> {
        let (flavour, _) = Flavour::detect().context("finding iptables")?;
        let mut tables = BTreeMap::new();
        for family in Family::BOTH {
            for (table, saved) in tools::save(flavour, family)
                .with_context(|| format!("reading the {family:?} rules"))?
            {
                tables.insert((family, table), saved);
            }
        }
        let saved = tools::run("ipset", &["save"], None).context("reading the ipsets")?;
        Ok(Self {
            flavour,
            tables,
            sets: parse_ipset_save(&saved),
        })
    }

    /// Whether any chain of ours is installed.
    pub fn installed(&self) -> bool {
        self.tables
            .values()
            .any(|table| table.ours().next().is_some())
    }

    /// How many rules our chains hold.
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|table| table.ours())
            .map(|(_, rules)| rules.len())
            .sum()
    }

    /// Whether the switch is off: an entry chain returns first.
    pub fn enforcement_off(&self) -> bool {
        self.tables
            .values()
            .flat_map(|table| table.ours())
            .flat_map(|(_, rules)| rules)
            .any(|(_, rule)| rule.contains("np-enforcement-off"))
    }

    /// The egress verdict at the source (mangle `NP-PREROUTING`) and the ingress verdict at
    /// the destination (filter `NP-FORWARD`) for a new connection.
    pub fn verdicts(&self, flow: &Flow) -> (RuleVerdict, RuleVerdict) {
        let family = if flow.dst.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        };
        let egress = self.judge(family, Table::Mangle, flow, true);
        let ingress = self.judge(family, Table::Filter, flow, false);
        (egress, ingress)
    }

    fn judge(&self, family: Family, table: Table, flow: &Flow, egress: bool) -> RuleVerdict {
        let Some(saved) = self.tables.get(&(family, table)) else {
            return RuleVerdict::NotIsolated;
        };
        let (_, entry) = table.hook();
        let local = if egress { flow.src } else { flow.dst };
        for (_, rule) in saved.chains.get(entry).into_iter().flatten() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if rule.contains("np-enforcement-off") {
                return RuleVerdict::EnforcementOff;
            }
            if egress
                && rule.contains("np-service-after-dnat")
                && option(&words, "-d").is_some_and(|range| contains(range, flow.dst))
            {
                return RuleVerdict::AfterDnat;
            }
            let (side, target) = if egress { ("-s", "-g") } else { ("-d", "-g") };
            if let (Some(address), Some(chain)) = (option(&words, side), option(&words, target))
                && contains(address, local)
            {
                return self.walk(saved, chain, flow, egress);
            }
        }
        RuleVerdict::NotIsolated
    }

    /// The first rule of a set chain that a new connection of `flow` matches.
    fn walk(&self, saved: &SavedTable, chain: &str, flow: &Flow, egress: bool) -> RuleVerdict {
        let peer = if egress { flow.dst } else { flow.src };
        for (_, rule) in saved.chains.get(chain).into_iter().flatten() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if rule.contains("--ctstate INVALID") {
                continue;
            }
            let target = option(&words, "-j").unwrap_or_default();
            if target.starts_with("NP-DROP-") {
                return RuleVerdict::Denied {
                    chain: chain.to_owned(),
                };
            }
            if target.starts_with("NP-AUDIT-") {
                return RuleVerdict::Allowed {
                    chain: chain.to_owned(),
                    rule: None,
                };
            }
            if target != "RETURN" {
                return RuleVerdict::NotUnderstood {
                    chain: chain.to_owned(),
                    rule: rule.clone(),
                };
            }
            let set_matches = match option(&words, "--match-set") {
                Some(name) => self.member(name, peer),
                None => true,
            };
            let protocol_matches = match option(&words, "-p") {
                Some(protocol) => protocol_number(protocol) == Some(flow.protocol),
                None => true,
            };
            let port_matches = match option(&words, "--dport") {
                Some(ports) => in_ports(ports, flow.port),
                None => {
                    option(&words, "-p").is_none() || has_ports(flow.protocol) || flow.port == 0
                }
            };
            if set_matches && protocol_matches && port_matches {
                let rule = tools::comment(rule)
                    .and_then(|comment| comment.strip_prefix("np-rule-"))
                    .and_then(|id| id.parse().ok());
                return RuleVerdict::Allowed {
                    chain: chain.to_owned(),
                    rule,
                };
            }
        }
        RuleVerdict::NotUnderstood {
            chain: chain.to_owned(),
            rule: "(the chain ends without a verdict)".to_owned(),
        }
    }

    /// `hash:net` membership: the longest entry holding `ip` decides; `nomatch` is a miss.
    pub fn member(&self, set: &str, ip: IpAddr) -> bool {
        let host = IpPrefix::host(ip.into());
        self.sets
            .get(set)
            .into_iter()
            .flatten()
            .filter(|(prefix, _)| prefix.contains(&host))
            .max_by_key(|(prefix, _)| prefix.len)
            .is_some_and(|(_, nomatch)| !nomatch)
    }
}

/// The value after `flag` in a rule's words.
fn option<'a>(words: &[&'a str], flag: &str) -> Option<&'a str> {
    words
        .windows(2)
        .find(|pair| pair[0] == flag)
        .map(|pair| pair[1])
}

/// Whether `ip` is inside `cidr` (`10.0.0.0/8`, or a bare address).
fn contains(cidr: &str, ip: IpAddr) -> bool {
    parse_prefix(cidr).is_some_and(|prefix| prefix.contains(&IpPrefix::host(ip.into())))
}

fn parse_prefix(text: &str) -> Option<IpPrefix> {
    let (address, len) = match text.split_once('/') {
        Some((address, len)) => (address, Some(len.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let ip: IpAddr = address.parse().ok()?;
    let len = len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
    Some(IpPrefix::from_ip(ip, len))
}

fn protocol_number(text: &str) -> Option<u8> {
    match text {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        "icmp" => Some(1),
        "ipv6-icmp" | "icmpv6" => Some(58),
        number => number.parse().ok(),
    }
}

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

/// `80` or `80:81`.
fn in_ports(ports: &str, port: u16) -> bool {
    let (low, high) = ports.split_once(':').unwrap_or((ports, ports));
    match (low.parse::<u16>(), high.parse::<u16>()) {
        (Ok(low), Ok(high)) => (low..=high).contains(&port),
        _ => false,
    }
}

/// Our sets from `ipset save`: `add <set> <entry> [nomatch]` lines.
pub fn parse_ipset_save(text: &str) -> BTreeMap<String, Vec<(IpPrefix, bool)>> {
    let mut sets: BTreeMap<String, Vec<(IpPrefix, bool)>> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, ..] if name.starts_with(SET_PREFIX) => {
                sets.entry((*name).to_owned()).or_default();
            }
            ["add", name, entry, rest @ ..] if name.starts_with(SET_PREFIX) => {
                if let Some(prefix) = parse_prefix(entry) {
                    sets.entry((*name).to_owned())
                        .or_default()
                        .push((prefix, rest.contains(&"nomatch")));
                }
            }
            _ => {}
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn state() -> IptablesState {
        let save = "*mangle\n:NP-PREROUTING - [0:0]\n:NP-E-6 - [0:0]\n\
            -A NP-PREROUTING -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
            -A NP-PREROUTING -d 10.96.0.0/16 -m comment --comment np-service-after-dnat -j RETURN\n\
            -A NP-PREROUTING -s 10.244.1.11/32 -g NP-E-6\n\
            -A NP-E-6 -m conntrack --ctstate INVALID -m comment --comment np-invalid-egress -j DROP\n\
            -A NP-E-6 -m set --match-set np-4a-1 dst -p tcp -m tcp --dport 443 -m comment --comment np-rule-3 -j RETURN\n\
            -A NP-E-6 -p udp -m udp --dport 53 -m comment --comment np-rule-4 -j RETURN\n\
            -A NP-E-6 -j NP-DROP-E\nCOMMIT\n";
        let mut tables = BTreeMap::new();
        let mut parsed = tools::parse_save(save);
        tables.insert(
            (Family::V4, Table::Mangle),
            parsed.remove("mangle").unwrap_or_default(),
        );
        IptablesState {
            flavour: Flavour::Nft,
            tables,
            sets: parse_ipset_save(
                "create np-4a-1 hash:net family inet\nadd np-4a-1 198.51.100.0/24\nadd np-4a-1 198.51.100.9 nomatch\n",
            ),
        }
    }

    #[test]
    fn a_new_connection_walks_dispatch_and_the_set_chain_as_netfilter_does() {
        let state = state();
        let verdict = |dst: &str, protocol: u8, port: u16| {
            state
                .verdicts(&Flow::new(ip("10.244.1.11"), ip(dst), protocol, port))
                .0
        };
        assert_eq!(
            verdict("198.51.100.7", 6, 443),
            RuleVerdict::Allowed {
                chain: "NP-E-6".to_owned(),
                rule: Some(3)
            }
        );
        // The nomatch carve-out, another port, another protocol: denied.
        assert!(!verdict("198.51.100.9", 6, 443).allowed());
        assert!(!verdict("198.51.100.7", 6, 80).allowed());
        assert_eq!(
            verdict("203.0.113.1", 17, 53),
            RuleVerdict::Allowed {
                chain: "NP-E-6".to_owned(),
                rule: Some(4)
            }
        );
        assert_eq!(verdict("10.96.0.10", 6, 80), RuleVerdict::AfterDnat);
        let other = state.verdicts(&Flow::new(ip("10.244.1.12"), ip("203.0.113.1"), 6, 80));
        assert_eq!(other.0, RuleVerdict::NotIsolated);
    }
}
