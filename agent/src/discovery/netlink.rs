//! The `NETLINK_ROUTE` side of discovery: the socket, the link and route dumps, and tolerant
//! parsers of link and route messages.
//!
//! Requests are built with `netlink-packet-route`; replies are split into messages with
//! `netlink-packet-core`'s checked buffers, and only the attributes discovery needs are decoded
//! (the interface name; a route's destination, table, metric, output interface and next hops).
//! Decoding whole messages would make one attribute the crate does not know how to read (a new
//! kernel, an odd device) cost us the link or route it belongs to. A message that is still
//! malformed is skipped with a warning; the rest of the dump is kept.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    ParseableParametrized,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{DiscoveryError, Dump, Link, LinkEntry, NodeInterfaces, Prefix, Route};

/// `sizeof(struct ifinfomsg)`: the link header before the attributes.
const LINK_HEADER_LEN: usize = 16;
/// `sizeof(struct rtmsg)`: the route header before the attributes.
const ROUTE_HEADER_LEN: usize = 12;
/// `sizeof(struct rtnexthop)`: one next hop of `RTA_MULTIPATH`, before its attributes.
const NEXT_HOP_HEADER_LEN: usize = 8;
/// `IFLA_IFNAME` (include/uapi/linux/if_link.h); the libc crate has it only for Android.
const IFLA_IFNAME: u16 = 3;

/// How often a snapshot is retried when a change interrupts a dump (`NLM_F_DUMP_INTR`).
const ATTEMPTS: u32 = 5;
/// How long one dump may take before the snapshot gives up; the kernel answers in
/// milliseconds, this only bounds the loop.
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The receive buffer a datagram is read into first; larger ones are peeked and grown to.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// Dumps the links and main-table routes of the calling thread's network namespace.
pub(super) fn snapshot() -> Result<NodeInterfaces, DiscoveryError> {
    let mut socket = DumpSocket::open()?;
    for attempt in 1..=ATTEMPTS {
        let mut links = BTreeMap::new();
        let links_consistent = socket.dump(Dump::Links, |kind, payload| {
            if kind != libc::RTM_NEWLINK {
                return;
            }
            match parse_link(payload) {
                Ok(Some(entry)) => {
                    links.insert(entry.link.index, entry);
                }
                Ok(None) => tracing::debug!("skipping a link without a name"),
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "skipping a link message discovery cannot read"
                    )
                }
            }
        })?;
        let mut routes = Vec::new();
        let routes_consistent = socket.dump(Dump::Routes, |kind, payload| {
            if kind != libc::RTM_NEWROUTE {
                return;
            }
            match parse_route(payload) {
                Ok(Some(route)) => routes.push(route),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "skipping a route message discovery cannot read"
                    );
                }
            }
        })?;
        if links_consistent && routes_consistent {
            tracing::debug!(
                links = links.len(),
                routes = routes.len(),
                attempt,
                "took a link and route snapshot"
            );
            return Ok(NodeInterfaces::new(links, routes));
        }
        tracing::debug!(
            attempt,
            "a change interrupted the link or route dump, retrying"
        );
    }
    Err(DiscoveryError::Inconsistent { attempts: ATTEMPTS })
}

/// A `NETLINK_ROUTE` socket for request/dump exchanges.
struct DumpSocket {
    socket: Socket,
    port: u32,
    sequence: u32,
    buffer: Vec<u8>,
}

impl DumpSocket {
    fn open() -> Result<Self, DiscoveryError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|source| DiscoveryError::Socket { source })?;
        let address = socket
            .bind_auto()
            .map_err(|source| DiscoveryError::Socket { source })?;
        Ok(Self {
            socket,
            port: address.port_number(),
            sequence: 0,
            buffer: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    /// Runs one dump, calling `on_message` with the type and payload of every answer, and
    /// returns whether the dump was consistent (no `NLM_F_DUMP_INTR`).
    fn dump(
        &mut self,
        dump: Dump,
        mut on_message: impl FnMut(u16, &[u8]),
    ) -> Result<bool, DiscoveryError> {
        self.sequence = self.sequence.wrapping_add(1);
        let request = dump_request(dump, self.sequence);
        self.socket
            .send_to(&request, &SocketAddr::new(0, 0), 0)
            .map_err(|source| DiscoveryError::Send { dump, source })?;
        let deadline = Instant::now() + DUMP_TIMEOUT;
        let mut consistent = true;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let receive = |source| DiscoveryError::Receive { dump, source };
            if !wait_readable(&self.socket, remaining).map_err(receive)? {
                return Err(receive(io::ErrorKind::TimedOut.into()));
            }
            receive_datagram(&self.socket, &mut self.buffer).map_err(receive)?;
            for message in messages(&self.buffer) {
                let message = message.map_err(|source| DiscoveryError::Decode { dump, source })?;
                if message.sequence != self.sequence || message.port != self.port {
                    tracing::debug!(
                        sequence = message.sequence,
                        port = message.port,
                        "ignoring a netlink message of another exchange"
                    );
                    continue;
                }
                if message.flags & NLM_F_DUMP_INTR != 0 {
                    consistent = false;
                }
                match message.kind {
                    NLMSG_DONE => {
                        return match status(message.payload) {
                            Some(source) => Err(DiscoveryError::Kernel { dump, source }),
                            None => Ok(consistent),
                        };
                    }
                    NLMSG_ERROR => {
                        // A zero status is an acknowledgement, which a dump does not ask for.
                        if let Some(source) = status(message.payload) {
                            return Err(DiscoveryError::Kernel { dump, source });
                        }
                    }
                    NLMSG_OVERRUN => {
                        return Err(DiscoveryError::Kernel {
                            dump,
                            source: io::Error::from_raw_os_error(libc::ENOBUFS),
                        });
                    }
                    NLMSG_NOOP => {}
                    kind => on_message(kind, message.payload),
                }
            }
        }
    }
}

/// The bytes of an `RTM_GETLINK` or `RTM_GETROUTE` dump request for every address family.
fn dump_request(dump: Dump, sequence: u32) -> Vec<u8> {
    let inner = match dump {
        Dump::Links => RouteNetlinkMessage::GetLink(LinkMessage::default()),
        Dump::Routes => RouteNetlinkMessage::GetRoute(RouteMessage::default()),
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// The error in an `NLMSG_DONE` or `NLMSG_ERROR` payload: a negative errno in its first four
/// bytes; `None` for zero and for a payload too short to hold one (old kernels send an empty
/// `NLMSG_DONE`).
fn status(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(code.checked_neg().unwrap_or(libc::EIO)))
}

/// Waits until `socket` is readable or `timeout` passes; `Ok(false)` on timeout.
fn wait_readable(socket: &Socket, timeout: Duration) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        match poll(&mut fds, Some(timeout)) {
            Ok(ready) => return Ok(ready > 0),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

/// `poll(2)` over `fds`, waiting at most `timeout` (`None`: without limit). Returns how many
/// descriptors have events.
pub(super) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout_ms = match timeout {
        // Round up so a wait never ends just before its deadline and spins.
        Some(timeout) => i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    let count = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fds` is an exclusively borrowed slice of `count` initialized pollfd structs that
    // outlives the call; poll only writes their `revents`.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
    usize::try_from(ready).map_err(|_| io::Error::last_os_error())
}

/// Reads one datagram into `buffer` (replacing its contents), growing the buffer when the
/// datagram is larger, so no message is cut. On a non-blocking socket with nothing to read,
/// fails with `WouldBlock`.
pub(super) fn receive_datagram(socket: &Socket, buffer: &mut Vec<u8>) -> io::Result<()> {
    buffer.clear();
    let size = socket.recv(buffer, libc::MSG_PEEK | libc::MSG_TRUNC)?;
    buffer.clear();
    buffer.reserve(size.max(RECEIVE_BUFFER));
    // MSG_TRUNC makes recv return the datagram's real size, so a cut shows.
    let received = socket.recv(buffer, libc::MSG_TRUNC)?;
    if received > buffer.len() {
        // The peeked size was the size of this very datagram; this cannot happen, but a cut
        // datagram must not be read as whole.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "netlink datagram of {received} bytes cut to {}",
                buffer.len()
            ),
        ));
    }
    Ok(())
}

/// One netlink message of a datagram.
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) sequence: u32,
    pub(super) port: u32,
    pub(super) payload: &'a [u8],
}

/// The netlink messages of `datagram`, in order. After a malformed header the iterator yields
/// that error and ends.
pub(super) fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Message<'_>, DecodeError>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let buffer = match NetlinkBuffer::new_checked(rest) {
            Ok(buffer) => buffer,
            Err(error) => {
                rest = &[];
                return Some(Err(error));
            }
        };
        // new_checked verified that the header fits and that 16 <= length <= rest.len().
        let length = usize::try_from(buffer.length()).unwrap_or(usize::MAX);
        let message = Message {
            kind: buffer.message_type(),
            flags: buffer.flags(),
            sequence: buffer.sequence_number(),
            port: buffer.port_number(),
            payload: buffer.payload(),
        };
        // Messages are aligned to 4 bytes; the last one may lack its padding.
        let advance = length.next_multiple_of(4).min(rest.len());
        rest = rest.get(advance..).unwrap_or_default();
        Some(Ok(message))
    })
}

/// Reads a link message (`RTM_NEWLINK` or `RTM_DELLINK`): its index, name and loopback flag.
/// `None` when it has no name (the kernel always sends one).
fn parse_link(payload: &[u8]) -> Result<Option<LinkEntry>, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut name = None;
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..).unwrap_or_default()) {
        let nla = nla?;
        if nla.kind() != IFLA_IFNAME {
            continue;
        }
        if let LinkAttribute::IfName(value) =
            LinkAttribute::parse_with_param(&nla, header.interface_family)?
        {
            name = Some(value);
        }
    }
    Ok(name.map(|name| LinkEntry {
        link: Link {
            name,
            index: header.index,
        },
        loopback: header.flags.contains(LinkFlags::Loopback),
    }))
}

/// Reads a route message (`RTM_NEWROUTE` or `RTM_DELROUTE`). `None` for routes discovery does
/// not look at: other families than IPv4 and IPv6, other tables than main.
pub(super) fn parse_route(payload: &[u8]) -> Result<Option<Route>, DecodeError> {
    let header = RouteHeader::parse(payload)?;
    let family = header.address_family;
    let unspecified: IpAddr = match family {
        AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        _ => return Ok(None),
    };
    let mut table = u32::from(header.table);
    let mut destination = unspecified;
    let mut output = None;
    let mut priority = 0;
    let mut next_hops = Vec::new();
    for nla in NlasIterator::new(payload.get(ROUTE_HEADER_LEN..).unwrap_or_default()) {
        let nla = nla?;
        let kind = nla.kind();
        if kind == libc::RTA_MULTIPATH {
            next_hops = next_hop_interfaces(nla.value())?;
            continue;
        }
        if ![
            libc::RTA_DST,
            libc::RTA_OIF,
            libc::RTA_PRIORITY,
            libc::RTA_TABLE,
        ]
        .contains(&kind)
        {
            continue;
        }
        match RouteAttribute::parse_with_param(&nla, (family, header.kind, RouteLwEnCapType::None))?
        {
            RouteAttribute::Destination(RouteAddress::Inet(address))
                if family == AddressFamily::Inet =>
            {
                destination = address.into();
            }
            RouteAttribute::Destination(RouteAddress::Inet6(address))
                if family == AddressFamily::Inet6 =>
            {
                destination = address.into();
            }
            RouteAttribute::Destination(other) => {
                return Err(
                    format!("route destination {other:?} is not of family {family:?}").into(),
                );
            }
            RouteAttribute::Oif(index) => output = Some(index),
            RouteAttribute::Priority(value) => priority = value,
            RouteAttribute::Table(value) => table = value,
            _ => {}
        }
    }
    if table != u32::from(libc::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let length = header.destination_prefix_length;
    let destination = Prefix::new(destination, length)
        .ok_or_else(|| DecodeError::from(format!("route prefix length {length} is too long")))?;
    let interfaces = if next_hops.is_empty() {
        output.into_iter().collect()
    } else {
        next_hops
    };
    Ok(Some(Route {
        destination,
        unicast: header.kind == RouteType::Unicast,
        priority,
        interfaces,
    }))
}

/// The interface index of every `struct rtnexthop` in an `RTA_MULTIPATH` value.
fn next_hop_interfaces(mut value: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let mut interfaces = Vec::new();
    while !value.is_empty() {
        let header = value
            .get(..NEXT_HOP_HEADER_LEN)
            .ok_or_else(|| DecodeError::from("truncated RTA_MULTIPATH next hop"))?;
        let (length, index) = match header {
            [l0, l1, _flags, _hops, i0, i1, i2, i3] => (
                usize::from(u16::from_ne_bytes([*l0, *l1])),
                u32::from_ne_bytes([*i0, *i1, *i2, *i3]),
            ),
            _ => return Err("truncated RTA_MULTIPATH next hop".into()),
        };
        if length < NEXT_HOP_HEADER_LEN || length > value.len() {
            return Err(format!("RTA_MULTIPATH next hop of length {length}").into());
        }
        interfaces.push(index);
        let advance = length.next_multiple_of(4).min(value.len());
        value = value.get(advance..).unwrap_or_default();
    }
    Ok(interfaces)
}

/// Whether a datagram received on the watch socket can change a snapshot: any link message, a
/// main-table IPv4 or IPv6 route message, or anything that cannot be read (better one
/// snapshot too many than one too few).
pub(super) fn is_relevant(datagram: &[u8]) -> bool {
    messages(datagram).any(|message| {
        let Ok(message) = message else {
            return true;
        };
        match message.kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => true,
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => {
                !matches!(parse_route(message.payload), Ok(None))
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;
    use netlink_packet_route::route::RouteNextHop;
    use proptest::prelude::*;

    use super::*;

    /// A netlink message of `kind` around `payload`, as the kernel frames it.
    fn frame(kind: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(16 + payload.len()).expect("small test message");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&length.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    fn emit(message: &impl Emitable) -> Vec<u8> {
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        bytes
    }

    fn route_message(
        family: AddressFamily,
        length: u8,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        message.header.destination_prefix_length = length;
        message.header.table = libc::RT_TABLE_MAIN;
        message.header.kind = RouteType::Unicast;
        message.attributes = attributes;
        message
    }

    fn link_message(index: u32, name: &str, flags: LinkFlags) -> Vec<u8> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = flags;
        message.attributes = vec![
            LinkAttribute::Mtu(1500),
            LinkAttribute::IfName(name.to_owned()),
        ];
        emit(&message)
    }

    #[test]
    fn a_pod_route_reads_as_its_prefix_metric_and_interface() {
        let message = route_message(
            AddressFamily::Inet,
            32,
            vec![
                RouteAttribute::Table(u32::from(libc::RT_TABLE_MAIN)),
                RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 244, 1, 10))),
                RouteAttribute::Priority(20),
                RouteAttribute::Oif(42),
            ],
        );
        let route = parse_route(&emit(&message))
            .expect("valid")
            .expect("main table");
        assert_eq!(
            route.destination,
            Prefix::new("10.244.1.10".parse().expect("ip"), 32).expect("prefix")
        );
        assert_eq!(
            (route.unicast, route.priority, route.interfaces),
            (true, 20, vec![42])
        );
    }

    #[test]
    fn a_default_route_has_no_destination_attribute() {
        let message = route_message(AddressFamily::Inet6, 0, vec![RouteAttribute::Oif(3)]);
        let route = parse_route(&emit(&message))
            .expect("valid")
            .expect("main table");
        assert_eq!(
            route.destination.address,
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        );
        assert_eq!(route.destination.length, 0);
        assert_eq!(route.interfaces, [3]);
    }

    #[test]
    fn a_multipath_route_lists_every_next_hop_interface() {
        let hop = |index| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = index;
            hop.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                192, 0, 2, 254,
            )))];
            hop
        };
        let message = route_message(
            AddressFamily::Inet,
            0,
            vec![RouteAttribute::MultiPath(vec![hop(4), hop(5)])],
        );
        let route = parse_route(&emit(&message))
            .expect("valid")
            .expect("main table");
        assert_eq!(route.interfaces, [4, 5]);
    }

    #[test]
    fn routes_outside_the_main_table_or_of_other_families_are_left_out() {
        let mut local = route_message(AddressFamily::Inet, 32, vec![RouteAttribute::Oif(1)]);
        local.header.table = libc::RT_TABLE_LOCAL;
        assert!(parse_route(&emit(&local)).expect("valid").is_none());
        let big_table = route_message(AddressFamily::Inet, 32, vec![RouteAttribute::Table(1000)]);
        assert!(parse_route(&emit(&big_table)).expect("valid").is_none());
        let mpls = route_message(AddressFamily::Mpls, 20, vec![]);
        assert!(parse_route(&emit(&mpls)).expect("valid").is_none());
    }

    #[test]
    fn reject_routes_are_not_unicast() {
        let mut blackhole = route_message(AddressFamily::Inet, 26, vec![]);
        blackhole.header.kind = RouteType::BlackHole;
        let route = parse_route(&emit(&blackhole))
            .expect("valid")
            .expect("main table");
        assert!(!route.unicast);
        assert!(route.interfaces.is_empty());
    }

    #[test]
    fn impossible_prefix_lengths_and_mixed_families_are_errors() {
        let too_long = route_message(AddressFamily::Inet, 33, vec![]);
        assert!(parse_route(&emit(&too_long)).is_err());
        let mixed = route_message(
            AddressFamily::Inet,
            32,
            vec![RouteAttribute::Destination(RouteAddress::Inet6(
                Ipv6Addr::LOCALHOST,
            ))],
        );
        assert!(parse_route(&emit(&mixed)).is_err());
    }

    #[test]
    fn a_link_reads_as_its_index_name_and_loopback_flag() {
        let entry = parse_link(&link_message(7, "cali0123456789a", LinkFlags::Up))
            .expect("valid")
            .expect("named");
        assert_eq!(
            (entry.link.name.as_str(), entry.link.index, entry.loopback),
            ("cali0123456789a", 7, false)
        );
        let lo = parse_link(&link_message(1, "lo", LinkFlags::Up | LinkFlags::Loopback))
            .expect("valid")
            .expect("named");
        assert!(lo.loopback);
    }

    #[test]
    fn a_datagram_splits_into_its_messages_and_a_bad_header_ends_it() {
        let mut datagram = frame(
            libc::RTM_NEWLINK,
            2,
            9,
            &link_message(7, "eth0", LinkFlags::Up),
        );
        datagram.extend(frame(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()));
        datagram.extend_from_slice(&[0xff; 6]);
        let parsed: Vec<_> = messages(&datagram).collect();
        assert_eq!(parsed.len(), 3);
        let first = parsed[0].as_ref().expect("first message");
        assert_eq!(
            (first.kind, first.sequence, first.port),
            (libc::RTM_NEWLINK, 9, 7)
        );
        assert!(parse_link(first.payload).expect("valid").is_some());
        assert_eq!(
            parsed[1].as_ref().map(|message| message.kind).ok(),
            Some(NLMSG_DONE)
        );
        assert!(parsed[2].is_err());
    }

    #[test]
    fn a_status_is_a_negative_errno_or_nothing() {
        assert!(status(&0i32.to_ne_bytes()).is_none());
        assert!(status(&[]).is_none());
        let error = status(&(-libc::EPERM).to_ne_bytes()).expect("error");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        let odd = status(&i32::MIN.to_ne_bytes()).expect("error");
        assert_eq!(odd.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn link_changes_and_main_table_route_changes_are_relevant_others_not() {
        let link = frame(
            libc::RTM_DELLINK,
            0,
            0,
            &link_message(7, "eth0", LinkFlags::Up),
        );
        assert!(is_relevant(&link));
        let main = route_message(AddressFamily::Inet, 32, vec![RouteAttribute::Oif(7)]);
        assert!(is_relevant(&frame(libc::RTM_NEWROUTE, 0, 0, &emit(&main))));
        let mut local = main.clone();
        local.header.table = libc::RT_TABLE_LOCAL;
        assert!(!is_relevant(&frame(
            libc::RTM_DELROUTE,
            0,
            0,
            &emit(&local)
        )));
        assert!(!is_relevant(&frame(libc::RTM_NEWADDR, 0, 0, &[0; 8])));
        assert!(is_relevant(&[1, 2, 3]), "unreadable counts as a change");
        assert!(!is_relevant(&[]));
    }

    #[test]
    fn dump_requests_ask_for_a_dump() {
        let request = dump_request(Dump::Routes, 3);
        let message = messages(&request)
            .next()
            .expect("one message")
            .expect("valid");
        assert_eq!(message.kind, libc::RTM_GETROUTE);
        assert_eq!(message.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(message.sequence, 3);
    }

    proptest! {
        #[test]
        fn no_input_makes_the_parsers_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_link(&bytes);
            let _ = parse_route(&bytes);
            let _ = next_hop_interfaces(&bytes);
            let _ = status(&bytes);
            let _ = is_relevant(&bytes);
            for message in messages(&bytes).flatten() {
                let _ = parse_route(message.payload);
                let _ = parse_link(message.payload);
            }
        }

        #[test]
        fn corrupted_route_messages_never_panic(
            position in 0usize..64,
            value in any::<u8>(),
            cut in 0usize..64,
        ) {
            let message = route_message(
                AddressFamily::Inet,
                24,
                vec![
                    RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 0))),
                    RouteAttribute::Oif(3),
                    RouteAttribute::MultiPath(vec![RouteNextHop::default()]),
                ],
            );
            let mut bytes = emit(&message);
            if let Some(byte) = bytes.get_mut(position) {
                *byte = value;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            let _ = parse_route(&bytes);
        }
    }
}
