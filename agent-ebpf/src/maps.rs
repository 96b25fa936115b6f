//! Every map of the programs. Sizes here are defaults; the loader sets the real ones.

use agent_common::{
    addr::Addr,
    clock::{self, Clock},
    config::{self, Config},
    conntrack::{self, CtEntry, CtKey},
    endpoint::{self, Endpoint, IF_SOURCES_SLOTS, IfSources},
    events::{self, PolicyEvent},
    fragments::{self, FragEntry, FragKey},
    ipcache::{self, PeerClass},
    metrics::{self, Counter},
    policy::{self, PolicyKey, PolicyValue},
    services::{self, ServiceRange},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerfEventArray},
};

#[map(name = "NP_ENDPOINTS")]
pub static NP_ENDPOINTS: HashMap<Addr, Endpoint> = HashMap::with_max_entries(1024, 0);

#[map(name = "NP_IF_SOURCES")]
pub static NP_IF_SOURCES: Array<IfSources> = Array::with_max_entries(IF_SOURCES_SLOTS, 0);

#[map(name = "NP_IPCACHE")]
pub static NP_IPCACHE: LpmTrie<Addr, PeerClass> = LpmTrie::with_max_entries(65536, 0);

#[map(name = "NP_IPCACHE1")]
pub static NP_IPCACHE1: LpmTrie<Addr, PeerClass> = LpmTrie::with_max_entries(65536, 0);

#[map(name = "NP_POLICY")]
pub static NP_POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(65536, 0);

#[map(name = "NP_SERVICES")]
pub static NP_SERVICES: LpmTrie<Addr, ServiceRange> = LpmTrie::with_max_entries(64, 0);

#[map(name = "NP_CT")]
pub static NP_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(262_144, 0);

#[map(name = "NP_FRAGS")]
pub static NP_FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(8192, 0);

#[map(name = "NP_CLOCK")]
pub static NP_CLOCK: Array<Clock> = Array::with_max_entries(1, 0);

#[map(name = "NP_CONFIG")]
pub static NP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "NP_DROPS")]
pub static NP_DROPS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(metrics::DROPS_ENTRIES, 0);

#[map(name = "NP_RULE_HITS")]
pub static NP_RULE_HITS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(65536, 0);

#[map(name = "NP_EVENTS")]
pub static NP_EVENTS: PerfEventArray<PolicyEvent> = PerfEventArray::new(0);

// The names above must be the ones userspace opens.
const _: () = {
    assert!(eq(endpoint::MAP_NAME, "NP_ENDPOINTS"));
    assert!(eq(endpoint::IF_SOURCES_MAP_NAME, "NP_IF_SOURCES"));
    assert!(eq(ipcache::MAP_NAMES[0], "NP_IPCACHE"));
    assert!(eq(ipcache::MAP_NAMES[1], "NP_IPCACHE1"));
    assert!(eq(policy::MAP_NAME, "NP_POLICY"));
    assert!(eq(services::MAP_NAME, "NP_SERVICES"));
    assert!(eq(conntrack::MAP_NAME, "NP_CT"));
    assert!(eq(fragments::MAP_NAME, "NP_FRAGS"));
    assert!(eq(config::MAP_NAME, "NP_CONFIG"));
    assert!(eq(clock::MAP_NAME, "NP_CLOCK"));
    assert!(eq(metrics::DROPS_MAP_NAME, "NP_DROPS"));
    assert!(eq(metrics::RULE_HITS_MAP_NAME, "NP_RULE_HITS"));
    assert!(eq(events::MAP_NAME, "NP_EVENTS"));
};

const fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
