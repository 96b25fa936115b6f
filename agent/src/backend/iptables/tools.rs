//! Running the iptables and ipset command-line tools: the flavour (legacy or nft) the host's
//! kube-proxy uses, `*-save -c` parsed into our chains and counters, and `*-restore`/`ipset
//! restore` fed from strings.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
};

use super::{
    IptablesError,
    render::{CHAIN_PREFIX, Family, Table},
};
use crate::backend::Count;

/// Which iptables implementation the node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Legacy,
    Nft,
}

impl Flavour {
    pub const BOTH: [Self; 2] = [Self::Nft, Self::Legacy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        }
    }

    /// `iptables-nft-save`, `ip6tables-legacy-restore`, ...
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}-{tool}", self.name())
    }

    /// The flavour to use here, and why. As kubernetes-sigs/iptables-wrappers decides: the
    /// one holding kube-proxy's or the kubelet's hint chains; else the one holding our own
    /// chains (a restart must not leave the old ones enforcing in the other flavour); else the
    /// one with more rules; nft when that is a tie (both empty included).
    pub fn detect() -> Result<(Self, String), IptablesError> {
        if let Ok(forced) = std::env::var("NETPOL_IPTABLES_FLAVOUR") {
            return match forced.as_str() {
                "legacy" => Ok((Self::Legacy, "NETPOL_IPTABLES_FLAVOUR=legacy".to_owned())),
                "nft" => Ok((Self::Nft, "NETPOL_IPTABLES_FLAVOUR=nft".to_owned())),
                _ => Err(IptablesError::NoTool {
                    reason: format!("NETPOL_IPTABLES_FLAVOUR={forced}: expected legacy or nft"),
                }),
            };
        }
        let dumps: Vec<(Self, Option<String>)> = Self::BOTH
            .iter()
            .map(|flavour| {
                let text = run(&flavour.program(Family::V4, "save"), &[], None).ok();
                (*flavour, text)
            })
            .collect();
        let available: Vec<Self> = dumps
            .iter()
            .filter(|(_, text)| text.is_some())
            .map(|(flavour, _)| *flavour)
            .collect();
        match available.as_slice() {
            [] => {
                return Err(IptablesError::NoTool {
                    reason: "neither iptables-nft-save nor iptables-legacy-save runs".to_owned(),
                });
            }
            [only] => return Ok((*only, format!("only {} is installed", only.name()))),
            _ => {}
        }
        let text = |flavour: Self| {
            dumps
                .iter()
                .find(|(f, _)| *f == flavour)
                .and_then(|(_, text)| text.clone())
                .unwrap_or_default()
        };
        let (nft, legacy) = (text(Self::Nft), text(Self::Legacy));
        for hint in ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"] {
            if nft.contains(hint) {
                return Ok((Self::Nft, format!("{hint} is in nft")));
            }
            if legacy.contains(hint) {
                return Ok((Self::Legacy, format!("{hint} is in legacy")));
            }
        }
        let ours = |text: &str| text.contains(&format!(":{CHAIN_PREFIX}"));
        if ours(&legacy) && !ours(&nft) {
            return Ok((Self::Legacy, "our chains are in legacy".to_owned()));
        }
        if ours(&nft) {
            return Ok((Self::Nft, "our chains are in nft".to_owned()));
        }
        let rules = |text: &str| text.lines().filter(|line| line.starts_with("-A ")).count();
        let (nft_rules, legacy_rules) = (rules(&nft), rules(&legacy));
        if legacy_rules > nft_rules {
            Ok((
                Self::Legacy,
                format!("legacy has more rules ({legacy_rules} against {nft_rules})"),
            ))
        } else {
            Ok((
                Self::Nft,
                format!("nft has as many rules or more ({nft_rules} against {legacy_rules})"),
            ))
        }
    }
}

/// Runs `program args` with `input` on stdin; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, IptablesError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| IptablesError::Spawn {
                program: program.to_owned(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(IptablesError::Failed {
            program: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One table as `*-save -c` shows it.
#[derive(Clone, Debug, Default)]
pub struct SavedTable {
    /// Every chain (built-in and user), with its rules: counters and the text after
    /// `-A <chain> `.
    pub chains: BTreeMap<String, Vec<(Count, String)>>,
}

impl SavedTable {
    /// Our chains (by prefix).
    pub fn ours(&self) -> impl Iterator<Item = (&String, &Vec<(Count, String)>)> {
        self.chains
            .iter()
            .filter(|(name, _)| name.starts_with(CHAIN_PREFIX))
    }

    /// Positions (0-based) of rules in `chain` that jump to one of our chains, with their text.
    pub fn jumps_to_ours(&self, chain: &str) -> Vec<(usize, String)> {
        self.chains
            .get(chain)
            .map(|rules| {
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, rule))| {
                        rule.split_whitespace()
                            .collect::<Vec<_>>()
                            .windows(2)
                            .any(|pair| {
                                matches!(pair[0], "-j" | "-g") && pair[1].starts_with(CHAIN_PREFIX)
                            })
                    })
                    .map(|(index, (_, rule))| (index, rule.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parses `*-save -c` output into tables by name.
pub fn parse_save(text: &str) -> BTreeMap<String, SavedTable> {
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, SavedTable)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some((name.trim().to_owned(), SavedTable::default()));
        } else if line.starts_with("COMMIT") {
            if let Some((name, table)) = current.take() {
                tables.insert(name, table);
            }
        } else if let Some((_, table)) = current.as_mut() {
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                table.chains.entry(name.to_owned()).or_default();
            } else {
                let (count, rule) = match line.strip_prefix('[') {
                    Some(rest) => match rest.split_once("] ") {
                        Some((numbers, rule)) => (parse_count(numbers), rule),
                        None => continue,
                    },
                    None => (Count::default(), line),
                };
                if let Some(rule) = rule.strip_prefix("-A ") {
                    let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                    table
                        .chains
                        .entry(chain.to_owned())
                        .or_default()
                        .push((count, spec.to_owned()));
                }
            }
        }
    }
    tables
}

fn parse_count(numbers: &str) -> Count {
    let mut parts = numbers.split(':').map(|n| n.parse::<u64>().unwrap_or(0));
    Count {
        packets: parts.next().unwrap_or(0),
        bytes: parts.next().unwrap_or(0),
    }
}

/// The tables of `family` in `flavour`, with counters.
pub fn save(
    flavour: Flavour,
    family: Family,
) -> Result<BTreeMap<Table, SavedTable>, IptablesError> {
    // No `-t`: naming a table makes legacy iptables create it, and a legacy table can never
    // be removed again. Without it, only tables that exist are shown.
    let text = run(&flavour.program(family, "save"), &["-c"], None)?;
    let mut parsed = parse_save(&text);
    Ok(Table::BOTH
        .into_iter()
        .map(|table| (table, parsed.remove(table.name()).unwrap_or_default()))
        .collect())
}

/// The comment of a rule (`--comment <text>`), unquoted.
pub fn comment(rule: &str) -> Option<&str> {
    let (_, rest) = rule.split_once("--comment ")?;
    let rest = rest.trim_start();
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_output_parses_into_chains_with_counters() {
        let text = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [5:300]\n:NP-FORWARD - [0:0]\n[7:420] -A FORWARD -j NP-FORWARD\n[1:60] -A FORWARD -j KUBE-FORWARD\n[3:180] -A NP-I-5 -p tcp -m tcp --dport 80 -m comment --comment np-rule-9 -j RETURN\nCOMMIT\n";
        let tables = parse_save(text);
        let filter = &tables["filter"];
        assert_eq!(
            filter.jumps_to_ours("FORWARD"),
            vec![(0, "-j NP-FORWARD".to_owned())]
        );
        let (count, rule) = &filter.chains["NP-I-5"][0];
        assert_eq!(count.packets, 3);
        assert_eq!(comment(rule), Some("np-rule-9"));
        assert_eq!(filter.ours().count(), 2);
        assert_eq!(comment("-m comment --comment \"a b\" -j X"), Some("a b"));
    }
}
