//! The datapath as the kernel holds it: the pinned eBPF maps read back into the engine's
//! [`NodeState`] shape, so that `explain` runs the very lookup the programs run
//! ([`crate::policy::lookup`]) over what is really programmed, and `maps dump` shows it.

use std::path::Path;

use agent_common::{
    addr::Addr,
    config::{CONFIG_ENFORCEMENT_OFF, Config},
    conntrack::{CtEntry, CtKey},
    endpoint::Endpoint,
    ipcache::PeerClass,
    metrics::{Counter, DropReason},
    policy::{DIR_EGRESS, DIR_INGRESS, PolicyValue},
};
use anyhow::{Context as _, Result};

use crate::{
    backend::ebpf::{MapSizes, Maps},
    policy::{IpPrefix, NodeState, PolicyEntryKey},
};

/// Everything the pinned maps hold that the debug commands show.
pub struct KernelState {
    /// Endpoints, the active generation's ipcache and the policy entries (no rule table: the
    /// kernel holds rule ids only).
    pub state: NodeState,
    pub services: Vec<(Addr, u32)>,
    pub config: Config,
    pub sizes: MapSizes,
    maps: Maps,
}

impl KernelState {
    /// Reads the maps an agent pinned in `pin_dir` (it need not run).
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let maps = Maps::open_pinned(pin_dir).with_context(|| {
            format!(
                "reading the eBPF maps pinned in {} (is the eBPF backend in use on this node?)",
                pin_dir.display()
            )
        })?;
        let config = maps.config()?;
        let mut state = NodeState::default();
        for (addr, endpoint) in maps.endpoints()? {
            state.endpoints.insert(addr, endpoint);
        }
        for (addr, len, class) in maps.prefixes(config.generation)? {
            let len = u8::try_from(len).context("an ipcache prefix longer than 128 bits")?;
            state
                .ipcache
                .insert(IpPrefix::new(addr, len), PeerClass { id: class });
        }
        for (prefix_len, key, rule) in maps.policies()? {
            state
                .policy
                .insert(PolicyEntryKey::new(key, prefix_len), PolicyValue { rule });
        }
        Ok(Self {
            state,
            services: maps.service_ranges()?,
            config,
            sizes: maps.sizes(),
            maps,
        })
    }

    /// Whether the switch turned enforcement off (the programs then pass everything).
    pub fn enforcement_off(&self) -> bool {
        self.config.flags & CONFIG_ENFORCEMENT_OFF != 0
    }

    /// Whether `addr` falls in a Service range (egress to it is judged after DNAT).
    pub fn is_service(&self, addr: Addr) -> bool {
        self.services.iter().any(|(range, len)| {
            u8::try_from(*len)
                .is_ok_and(|len| IpPrefix::new(*range, len).contains(&IpPrefix::host(addr)))
        })
    }

    pub fn connections(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        Ok(self.maps.connections()?)
    }

    /// Drop counters by (reason, direction name), zero rows left out.
    pub fn drops(&self) -> Result<Vec<(DropReason, &'static str, Counter)>> {
        let mut rows = Vec::new();
        for reason in DropReason::ALL {
            for (direction, name) in [(DIR_INGRESS, "ingress"), (DIR_EGRESS, "egress")] {
                let count = self.maps.drops(reason, direction)?;
                if count.packets > 0 {
                    rows.push((reason, name, count));
                }
            }
        }
        Ok(rows)
    }

    /// Allowed traffic per rule id, for the rules the policy map names.
    pub fn rule_hits(&self) -> Result<Vec<(u32, Counter)>> {
        let mut rules: Vec<u32> = self.state.policy.values().map(|value| value.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        let mut rows = Vec::new();
        for rule in rules {
            rows.push((rule, self.maps.rule_hits(rule)?));
        }
        Ok(rows)
    }

    /// Every endpoint entry.
    pub fn endpoints(&self) -> impl Iterator<Item = (&Addr, &Endpoint)> {
        self.state.endpoints.iter()
    }
}
