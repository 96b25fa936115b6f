//! Rule references and the rule table: every policy map entry carries a rule id that maps back
//! to the (policy, direction, rule, peer, port) it came from, for explain and per-rule counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use agent_common::policy::{DIR_EGRESS, DIR_INGRESS};

use crate::model::ObjectRef;

/// A traffic direction, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    /// The key byte ([`DIR_INGRESS`] or [`DIR_EGRESS`]).
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }

    /// The API's field names: `ingress`/`from` or `egress`/`to`.
    const fn fields(self) -> (&'static str, &'static str) {
        match self {
            Self::Ingress => ("ingress", "from"),
            Self::Egress => ("egress", "to"),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fields().0)
    }
}

/// Where an allow comes from. The derived order (policy, direction, rule, peer, port, with
/// "all" before any index) is the tie-break when several rules produce one map key: the
/// smallest wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: ObjectRef,
    pub direction: Direction,
    /// Index in `spec.ingress` or `spec.egress`.
    pub rule: u32,
    /// Index in `from`/`to`; `None` when the rule has no peers (all peers).
    pub peer: Option<u32>,
    /// Index in `ports`; `None` when the rule has no ports (all ports and protocols).
    pub port: Option<u32>,
}

impl fmt::Display for RuleRef {
    /// `x/allow-web ingress[0].from[1].ports[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rules, peers) = self.direction.fields();
        write!(f, "{} {rules}[{}]", self.policy, self.rule)?;
        match self.peer {
            Some(peer) => write!(f, ".{peers}[{peer}]")?,
            None => write!(f, ".{peers}[*]")?,
        }
        match self.port {
            Some(port) => write!(f, ".ports[{port}]"),
            None => write!(f, ".ports[*]"),
        }
    }
}

/// Rule ids, reference-counted by the sets whose entries use them. Ids start at 1 and are
/// handed out in increasing order (wrapping, skipping live ids), so a counter of a removed rule
/// is not silently inherited by a new one.
#[derive(Debug, Default)]
pub(crate) struct RuleTable {
    by_ref: BTreeMap<RuleRef, u32>,
    by_id: BTreeMap<u32, (RuleRef, u32)>,
    /// Ids with no reference, forgotten by [`RuleTable::sweep`].
    unused: BTreeSet<u32>,
    next: u32,
}

impl RuleTable {
    /// The id of `rule`, creating it with no references if needed.
    pub(crate) fn intern(&mut self, rule: &RuleRef) -> u32 {
        if let Some(id) = self.by_ref.get(rule) {
            return *id;
        }
        let id = loop {
            let candidate = self.next.max(1);
            self.next = candidate.wrapping_add(1);
            if !self.by_id.contains_key(&candidate) {
                break candidate;
            }
        };
        self.by_ref.insert(rule.clone(), id);
        self.by_id.insert(id, (rule.clone(), 0));
        self.unused.insert(id);
        id
    }

    /// Adds a reference; returns the rule when it just became used.
    pub(crate) fn acquire(&mut self, id: u32) -> Option<&RuleRef> {
        let (rule, refs) = self.by_id.get_mut(&id)?;
        *refs += 1;
        if *refs == 1 {
            self.unused.remove(&id);
            return Some(&*rule);
        }
        None
    }

    /// Drops a reference; returns true when the rule became unused.
    pub(crate) fn release(&mut self, id: u32) -> bool {
        match self.by_id.get_mut(&id) {
            Some((_, refs)) if *refs > 0 => {
                *refs -= 1;
                if *refs == 0 {
                    self.unused.insert(id);
                }
                *refs == 0
            }
            _ => false,
        }
    }

    /// Forgets every rule nothing uses.
    pub(crate) fn sweep(&mut self) {
        for id in std::mem::take(&mut self.unused) {
            if let Some((rule, _)) = self.by_id.remove(&id) {
                self.by_ref.remove(&rule);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(rule: u32, peer: Option<u32>, port: Option<u32>) -> RuleRef {
        RuleRef {
            policy: ObjectRef::new("x", "p"),
            direction: Direction::Ingress,
            rule,
            peer,
            port,
        }
    }

    #[test]
    fn rule_refs_print_like_the_api_fields() {
        assert_eq!(
            rule(0, Some(1), None).to_string(),
            "x/p ingress[0].from[1].ports[*]"
        );
        let egress = RuleRef {
            direction: Direction::Egress,
            ..rule(2, None, Some(0))
        };
        assert_eq!(egress.to_string(), "x/p egress[2].to[*].ports[0]");
    }

    #[test]
    fn all_peers_and_ports_order_before_indices() {
        assert!(rule(0, None, None) < rule(0, Some(0), None));
        assert!(rule(0, Some(0), None) < rule(0, Some(0), Some(0)));
        assert!(rule(0, Some(5), Some(5)) < rule(1, None, None));
    }

    #[test]
    fn rule_ids_are_never_zero_and_unused_ones_are_collected() {
        let mut table = RuleTable::default();
        let a = table.intern(&rule(0, None, None));
        assert_eq!(a, 1);
        assert_eq!(table.intern(&rule(0, None, None)), a);
        assert!(table.acquire(a).is_some());
        assert!(table.acquire(a).is_none());
        table.sweep();
        assert_eq!(table.len(), 1, "a used rule stays");
        assert!(!table.release(a));
        assert!(table.release(a));
        table.sweep();
        assert_eq!(table.len(), 0);
        assert_eq!(
            table.intern(&rule(0, None, None)),
            2,
            "ids are not reused at once"
        );
    }
}
