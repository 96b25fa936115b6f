//! Endpoint discovery: which host-side interface leads to each local pod, and which interfaces
//! are the node's uplinks, read from the kernel over `NETLINK_ROUTE`.
//!
//! In the routed model of Terway (veth mode) and Calico, every local pod has a /32 (or /128)
//! route in the node's main table through the host side of its veth (`cali` + 11 hex characters
//! on ACK, see handbook/semantics.md trap 9). So the pod's interface is the output interface of
//! the most specific main-table route to its address, unless that interface is an uplink (the
//! pod is not local) or loopback. Uplinks are the interfaces holding a default route, unless
//! the operator names them.
//!
//! - [`snapshot`] dumps links and main-table routes (IPv4 and IPv6) of the calling thread's
//!   network namespace into a [`NodeInterfaces`], a plain value queried in userspace
//!   (longest-prefix match over the dumped routes: one dump serves every pod).
//! - [`watch`] subscribes to link and route notifications on a thread of its own and reports
//!   debounced changes; the caller then takes a new snapshot.
//!
//! This module does not know pods: the caller gives the addresses it got from the cluster. It
//! holds no state between snapshots and has no async runtime in it: both functions block, so a
//! tokio caller runs [`snapshot`] in `spawn_blocking` and turns [`watch`]'s callback into a
//! wake-up (see [`watch`]).
//!
//! Network namespaces are per thread: [`snapshot`] reads the namespace of the thread that calls
//! it, and [`watch`] opens its socket on the calling thread before spawning its own thread, so
//! both follow the caller (the agent runs in the node's namespace; tests call them inside
//! `Netns::run`).

mod netlink;
mod watch;

use std::{collections::BTreeMap, net::IpAddr};

use netlink_packet_core::DecodeError;

pub use self::watch::{WatchEvent, Watcher, watch};

/// A network interface of the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link {
    /// The interface name, e.g. `cali0123456789a` or `eth0`.
    pub name: String,
    /// The kernel's interface index (stable while the interface exists).
    pub index: u32,
}

/// A snapshot of one network namespace's links and main-table routes, with the uplink choice.
///
/// Built by [`snapshot`]; compare two snapshots with `==` to see whether anything changed. The
/// default is an empty namespace: no links, no routes, no uplinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInterfaces {
    /// Every link, by index.
    links: BTreeMap<u32, LinkEntry>,
    /// The IPv4 and IPv6 routes of the main table, in dump order.
    routes: Vec<Route>,
    /// Uplinks named by the operator; `None` picks the interfaces holding a default route.
    configured_uplinks: Option<Vec<String>>,
}

/// A link and what the snapshot needs to know about it beyond [`Link`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkEntry {
    link: Link,
    loopback: bool,
}

/// A main-table route, reduced to what the lookups need.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    destination: Prefix,
    /// Only unicast routes lead out through an interface; blackhole, unreachable, prohibit,
    /// throw and the rest still win a longest-prefix match, with no interface.
    unicast: bool,
    /// The metric (`RTA_PRIORITY`): among equally specific routes the lowest wins.
    priority: u32,
    /// The output interfaces: one, or one per next hop of a multipath route. Empty for reject
    /// routes and for routes through nexthop objects (`nhid`), which the routed pod model does
    /// not use.
    interfaces: Vec<u32>,
}

/// An address prefix, with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    address: IpAddr,
    length: u8,
}

impl Prefix {
    /// The prefix `address/length`, or `None` if `length` is longer than the address.
    fn new(address: IpAddr, length: u8) -> Option<Self> {
        let address = match address {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask_v4(length.into())?).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask_v6(length.into())?).into()),
        };
        Some(Self { address, length })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // `new` checked the length, so the masks exist.
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(self.length.into())
                .is_some_and(|mask| u32::from(ip) & mask == u32::from(net)),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(self.length.into())
                .is_some_and(|mask| u128::from(ip) & mask == u128::from(net)),
            _ => false,
        }
    }
}

/// The netmask of a /`length` IPv4 prefix, `None` above 32.
fn mask_v4(length: u32) -> Option<u32> {
    let host_bits = 32u32.checked_sub(length)?;
    Some(u32::MAX.checked_shl(host_bits).unwrap_or(0))
}

/// The netmask of a /`length` IPv6 prefix, `None` above 128.
fn mask_v6(length: u32) -> Option<u128> {
    let host_bits = 128u32.checked_sub(length)?;
    Some(u128::MAX.checked_shl(host_bits).unwrap_or(0))
}

impl NodeInterfaces {
    fn new(links: BTreeMap<u32, LinkEntry>, routes: Vec<Route>) -> Self {
        Self {
            links,
            routes,
            configured_uplinks: None,
        }
    }

    /// Uses the interfaces named in `names` as the uplinks instead of those holding a default
    /// route; an empty list keeps the default-route choice. A named interface that does not
    /// exist is logged and left out (see [`Self::missing_uplinks`]), so the agent keeps working
    /// with the others.
    pub fn with_uplinks(mut self, names: &[String]) -> Self {
        if names.is_empty() {
            self.configured_uplinks = None;
            return self;
        }
        self.configured_uplinks = Some(names.to_vec());
        for name in self.missing_uplinks() {
            tracing::warn!(
                uplink = name,
                "configured uplink does not exist on this node"
            );
        }
        self
    }

    /// Every link of the namespace, by index.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values().map(|entry| &entry.link)
    }

    /// The link named `name`.
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links().find(|link| link.name == name)
    }

    /// The link with interface index `index`.
    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.get(&index).map(|entry| &entry.link)
    }

    /// The uplinks: the configured ones that exist, in the configured order, or else every
    /// non-loopback interface holding a main-table default route (IPv4 or IPv6, every next hop
    /// of a multipath one), by index.
    pub fn uplinks(&self) -> Vec<&Link> {
        if let Some(names) = &self.configured_uplinks {
            let mut uplinks: Vec<&Link> = Vec::new();
            for link in names.iter().filter_map(|name| self.link_by_name(name)) {
                if !uplinks.contains(&link) {
                    uplinks.push(link);
                }
            }
            return uplinks;
        }
        self.default_route_interfaces()
            .into_iter()
            .filter_map(|index| self.links.get(&index))
            .filter(|entry| !entry.loopback)
            .map(|entry| &entry.link)
            .collect()
    }

    /// The indexes of the interfaces holding a main-table unicast default route, sorted.
    fn default_route_interfaces(&self) -> Vec<u32> {
        let mut indexes: Vec<u32> = self
            .routes
            .iter()
            .filter(|route| route.unicast && route.destination.length == 0)
            .flat_map(|route| route.interfaces.iter().copied())
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
    }

    /// The configured uplinks that do not exist in this snapshot (empty when none are
    /// configured). A human must fix the configuration or the node.
    pub fn missing_uplinks(&self) -> Vec<&str> {
        self.configured_uplinks
            .iter()
            .flatten()
            .filter(|name| self.link_by_name(name).is_none())
            .map(String::as_str)
            .collect()
    }

    /// The host-side interface of the local pod with address `ip`: the output interface of the
    /// most specific main-table route to `ip` (lowest metric among equals), if that route is a
    /// single-interface unicast route and its interface is not loopback, not an uplink and holds
    /// no default route (which matters when the uplinks are configured). `None` means the pod is not
    /// reachable through a local interface (not on this node, not set up yet, or behind a reject
    /// route). Host-network pods share the node's addresses and have no interface of their own:
    /// do not ask for them.
    pub fn pod_interface(&self, ip: IpAddr) -> Option<&Link> {
        let route = self.lookup(ip)?;
        if !route.unicast {
            return None;
        }
        let [index] = route.interfaces[..] else {
            return None;
        };
        let entry = self.links.get(&index)?;
        if entry.loopback
            || self.default_route_interfaces().contains(&index)
            || self.uplinks().contains(&&entry.link)
        {
            return None;
        }
        Some(&entry.link)
    }

    /// The main-table route the kernel would pick for `ip`: longest prefix, then lowest metric,
    /// then the first dumped.
    fn lookup(&self, ip: IpAddr) -> Option<&Route> {
        let mut best: Option<&Route> = None;
        for route in self
            .routes
            .iter()
            .filter(|route| route.destination.contains(ip))
        {
            let better = best.is_none_or(|best| {
                (route.destination.length, std::cmp::Reverse(route.priority))
                    > (best.destination.length, std::cmp::Reverse(best.priority))
            });
            if better {
                best = Some(route);
            }
        }
        best
    }
}

/// Takes a snapshot of the links and the main-table IPv4 and IPv6 routes of the calling
/// thread's network namespace. Blocks for one link dump and one route dump (a few milliseconds
/// on a node with 110 pods), retried when the kernel reports that a change interrupted them.
pub fn snapshot() -> Result<NodeInterfaces, DiscoveryError> {
    netlink::snapshot()
}

/// What a dump asked the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// `RTM_GETLINK`: every interface.
    Links,
    /// `RTM_GETROUTE`: every route of every family (filtered to main, IPv4 and IPv6 here).
    Routes,
}

impl std::fmt::Display for Dump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Links => "link",
            Self::Routes => "route",
        })
    }
}

/// Errors of [`snapshot`] and [`watch`]. Every one is worth a retry after a backoff: they come
/// from the kernel or from resources, not from the caller's input.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot open a NETLINK_ROUTE socket")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot subscribe to rtnetlink group {group}")]
    Subscribe {
        group: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send the {dump} dump request")]
    Send {
        dump: Dump,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot receive the {dump} dump")]
    Receive {
        dump: Dump,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel failed the {dump} dump")]
    Kernel {
        dump: Dump,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink message in the {dump} dump")]
    Decode {
        dump: Dump,
        #[source]
        source: DecodeError,
    },
    #[error("links or routes kept changing during {attempts} snapshot attempts")]
    Inconsistent { attempts: u32 },
    #[error("cannot start the link and route watcher thread")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("the link and route watcher cannot read its socket")]
    Watch {
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn link(index: u32, name: &str) -> (u32, LinkEntry) {
        let link = Link {
            name: name.to_owned(),
            index,
        };
        let loopback = name == "lo";
        (index, LinkEntry { link, loopback })
    }

    fn route(destination: &str, interfaces: &[u32]) -> Route {
        let (address, length) = destination.split_once('/').expect("prefix in test");
        Route {
            destination: Prefix::new(
                address.parse().expect("address in test"),
                length.parse().expect("length in test"),
            )
            .expect("valid prefix in test"),
            unicast: true,
            priority: 0,
            interfaces: interfaces.to_vec(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address in test")
    }

    const LO: u32 = 1;
    const ETH0: u32 = 2;
    const ETH1: u32 = 3;
    const POD_A: u32 = 10;
    const POD_B: u32 = 11;

    /// A node like the simulated one: uplink eth0 with a default route and its subnet, two
    /// pods on /32 and /128 routes, a Calico-style blackhole for the pod block.
    fn node() -> NodeInterfaces {
        let links = BTreeMap::from([
            link(LO, "lo"),
            link(ETH0, "eth0"),
            link(ETH1, "eth1"),
            link(POD_A, "cali00000000001"),
            link(POD_B, "cali00000000002"),
        ]);
        let blackhole = Route {
            unicast: false,
            interfaces: Vec::new(),
            ..route("10.244.1.0/24", &[])
        };
        let routes = vec![
            route("0.0.0.0/0", &[ETH0]),
            route("192.0.2.0/24", &[ETH0]),
            blackhole,
            route("10.244.1.10/32", &[POD_A]),
            route("10.244.1.11/32", &[POD_B]),
            route("fd00:10:244:1::/64", &[ETH1]),
            route("fd00:10:244:1::10/128", &[POD_A]),
            route("fe80::/64", &[POD_A]),
            route("fe80::/64", &[POD_B]),
        ];
        NodeInterfaces::new(links, routes)
    }

    #[test]
    fn pod_interface_follows_the_most_specific_route() {
        let node = node();
        let a = node.pod_interface(ip("10.244.1.10")).expect("pod a");
        assert_eq!((a.name.as_str(), a.index), ("cali00000000001", POD_A));
        let b = node.pod_interface(ip("10.244.1.11")).expect("pod b");
        assert_eq!(b.index, POD_B);
        let v6 = node
            .pod_interface(ip("fd00:10:244:1::10"))
            .expect("ipv6 pod");
        assert_eq!(v6.index, POD_A);
        assert_eq!(
            node.pod_interface(ip("fd00:10:244:1::11"))
                .map(|link| link.index),
            Some(ETH1),
            "a /64 through a non-uplink interface counts, as the kernel would route it",
        );
    }

    #[test]
    fn pod_interface_is_none_through_an_uplink_a_reject_route_or_no_route() {
        let node = node();
        assert_eq!(
            node.pod_interface(ip("10.244.2.10")),
            None,
            "via default route"
        );
        assert_eq!(node.pod_interface(ip("192.0.2.7")), None, "uplink subnet");
        assert_eq!(node.pod_interface(ip("10.244.1.99")), None, "blackhole");
        assert_eq!(
            node.pod_interface(ip("2001:db8::1")),
            None,
            "no IPv6 default"
        );
    }

    #[test]
    fn pod_interface_prefers_the_lowest_metric_among_equal_prefixes() {
        let mut node = node();
        node.routes.push(Route {
            priority: 100,
            ..route("10.244.1.12/32", &[POD_A])
        });
        node.routes.push(Route {
            priority: 50,
            ..route("10.244.1.12/32", &[POD_B])
        });
        node.routes.push(Route {
            priority: 50,
            ..route("10.244.1.12/32", &[ETH1])
        });
        let chosen = node.pod_interface(ip("10.244.1.12")).expect("pod");
        assert_eq!(chosen.index, POD_B, "lowest metric, then first dumped");
    }

    #[test]
    fn pod_interface_is_none_for_loopback_multipath_and_unknown_interfaces() {
        let mut node = node();
        node.routes.push(route("10.244.1.20/32", &[LO]));
        node.routes.push(route("10.244.1.21/32", &[POD_A, POD_B]));
        node.routes.push(route("10.244.1.22/32", &[99]));
        node.routes.push(route("10.244.1.23/32", &[]));
        for address in ["10.244.1.20", "10.244.1.21", "10.244.1.22", "10.244.1.23"] {
            assert_eq!(node.pod_interface(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn uplinks_are_the_interfaces_holding_a_default_route() {
        let mut node = node();
        let names = |node: &NodeInterfaces| -> Vec<String> {
            node.uplinks()
                .into_iter()
                .map(|link| link.name.clone())
                .collect()
        };
        assert_eq!(names(&node), ["eth0"]);
        node.routes.push(route("::/0", &[ETH1]));
        node.routes.push(route("::/0", &[LO]));
        assert_eq!(
            names(&node),
            ["eth0", "eth1"],
            "IPv6 default counts, loopback not"
        );
        assert_eq!(
            node.pod_interface(ip("fd00:10:244:1::11")),
            None,
            "an uplink is never a pod's interface"
        );
        node.routes.retain(|route| route.destination.length != 0);
        assert!(names(&node).is_empty());
        node.routes.push(Route {
            unicast: false,
            ..route("0.0.0.0/0", &[])
        });
        assert!(names(&node).is_empty(), "unreachable default is no uplink");
        node.routes.push(route("0.0.0.0/0", &[ETH1, ETH0, ETH1]));
        assert_eq!(names(&node), ["eth0", "eth1"], "every multipath next hop");
    }

    #[test]
    fn configured_uplinks_replace_the_default_route_choice_and_missing_ones_are_reported() {
        let node = node().with_uplinks(&["eth1".to_owned(), "bond9".to_owned(), "eth1".to_owned()]);
        let uplinks: Vec<&str> = node
            .uplinks()
            .iter()
            .map(|link| link.name.as_str())
            .collect();
        assert_eq!(uplinks, ["eth1"]);
        assert_eq!(node.missing_uplinks(), ["bond9"]);
        assert_eq!(
            node.pod_interface(ip("10.244.2.10")),
            None,
            "an interface holding a default route is no pod interface, configured uplink or not",
        );
        assert_eq!(
            node.pod_interface(ip("fd00:10:244:1::11")),
            None,
            "eth1 is an uplink now"
        );
    }

    #[test]
    fn an_empty_uplink_list_keeps_the_default_route_choice() {
        let node = node().with_uplinks(&[]);
        assert_eq!(node.uplinks().len(), 1);
        assert!(node.missing_uplinks().is_empty());
    }

    #[test]
    fn links_are_found_by_name_and_index() {
        let node = node();
        assert_eq!(node.link_by_name("eth1").map(|link| link.index), Some(ETH1));
        assert_eq!(
            node.link_by_index(POD_B).map(|link| link.name.as_str()),
            Some("cali00000000002")
        );
        assert_eq!(node.link_by_name("nope"), None);
        assert_eq!(node.links().count(), 5);
    }

    #[test]
    fn prefixes_clear_host_bits_and_reject_impossible_lengths() {
        let prefix = Prefix::new(ip("10.244.1.77"), 24).expect("valid");
        assert_eq!(prefix.address, IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)));
        assert!(prefix.contains(ip("10.244.1.1")));
        assert!(!prefix.contains(ip("10.244.2.1")));
        assert!(
            !prefix.contains(ip("::ffff:10.244.1.1")),
            "families never mix"
        );
        assert!(
            Prefix::new(ip("0.0.0.0"), 0)
                .expect("default")
                .contains(ip("1.2.3.4"))
        );
        assert!(
            Prefix::new(ip("10.0.0.1"), 32)
                .expect("host")
                .contains(ip("10.0.0.1"))
        );
        assert_eq!(Prefix::new(ip("10.0.0.1"), 33), None);
        assert_eq!(Prefix::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 129), None);
        assert!(
            Prefix::new(ip("::"), 0)
                .expect("default")
                .contains(ip("2001:db8::1"))
        );
        assert!(
            Prefix::new(ip("fd00::1"), 128)
                .expect("host")
                .contains(ip("fd00::1"))
        );
    }
}
