//! The iptables backend's drop and audit events: its drop chains log to NFLOG group
//! [`NFLOG_GROUP`] with a prefix naming the reason and direction (`np-drop-ingress`,
//! `np-audit-egress`, ...); a thread reads them over `NETLINK_NETFILTER` and hands them to the
//! same sink as the eBPF datapath's events, as [`PolicyEvent`]s.

use std::{io, sync::atomic::Ordering, time::Duration};

use agent_common::{
    addr::Addr,
    events::{EVENT_AUDIT, PolicyEvent},
    metrics::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS},
};

use super::{
    nfnetlink::{self, NFGENMSG_LENGTH, Socket},
    render::NFLOG_GROUP,
};
use crate::backend::ebpf::{EventSink, EventThread};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
/// Enough of each packet for the IP and transport headers.
const COPY_RANGE: u32 = 128;

/// Binds the group (in this network namespace) and reads it on a thread of its own.
pub fn spawn(sink: impl EventSink) -> io::Result<EventThread> {
    // Wake up every 200 ms to notice a stop.
    let socket = Socket::open(Duration::from_millis(200))?;
    bind_group(&socket, NFLOG_GROUP)?;
    EventThread::spawn("netpol-nflog", move |stop| {
        let mut buffer = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Some(length) = socket.receive(&mut buffer) else {
                continue;
            };
            let mut seen = 0;
            for event in parse_datagram(&buffer[..length]) {
                seen += 1;
                sink.event(&event);
            }
            if seen > 0 {
                sink.count(seen, 0);
            }
        }
    })
}

/// Subscribes the socket to `group`, copying enough of each packet for its headers.
fn bind_group(socket: &Socket, group: u16) -> io::Result<()> {
    socket.request_acknowledged(&config_message(
        group,
        NFULA_CFG_CMD,
        &[NFULNL_CFG_CMD_BIND],
    ))?;
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend([NFULNL_COPY_PACKET, 0]);
    socket.request_acknowledged(&config_message(group, NFULA_CFG_MODE, &mode))
}

/// A config request for `group` with one attribute, acknowledged.
fn config_message(group: u16, attribute: u16, value: &[u8]) -> Vec<u8> {
    nfnetlink::request(
        NFNL_SUBSYS_ULOG,
        NFULNL_MSG_CONFIG,
        libc::NLM_F_ACK as u16,
        libc::AF_UNSPEC as u8,
        group,
        &[(attribute, value)],
    )
}

/// Every logged packet of a datagram, as an event.
fn parse_datagram(datagram: &[u8]) -> Vec<PolicyEvent> {
    nfnetlink::messages(datagram)
        .filter(|(kind, _)| *kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
        .filter_map(|(_, payload)| parse_packet(payload.get(NFGENMSG_LENGTH..)?))
        .collect()
}

/// One NFLOG packet message's attributes: our prefix and the packet.
fn parse_packet(attributes: &[u8]) -> Option<PolicyEvent> {
    let (mut prefix, mut payload) = (None, None);
    for (kind, value) in nfnetlink::attributes(attributes) {
        match kind {
            NFULA_PREFIX => {
                prefix = std::str::from_utf8(value)
                    .ok()
                    .map(|text| text.trim_end_matches('\0'))
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
    }
    event(prefix?, payload?)
}

/// `np-<drop|audit|spoofed|unknown-pod>-<direction>` and the IP packet.
fn event(prefix: &str, packet: &[u8]) -> Option<PolicyEvent> {
    let rest = prefix.strip_prefix("np-")?;
    let (what, direction) = rest.rsplit_once('-')?;
    let direction = match direction {
        "ingress" => DIR_INGRESS,
        "egress" => DIR_EGRESS,
        _ => return None,
    };
    let (reason, flags) = match what {
        "drop" => (DropReason::Policy, 0),
        "audit" => (DropReason::Policy, EVENT_AUDIT),
        "spoofed" => (DropReason::Spoofed, 0),
        "unknown-pod" => (DropReason::UnknownPod, 0),
        _ => return None,
    };
    let (src, dst, protocol, transport) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                Addr::v4(src),
                Addr::v4(dst),
                *packet.get(9)?,
                packet.get(header..),
            )
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                Addr::v6(src),
                Addr::v6(dst),
                *packet.get(6)?,
                packet.get(40..),
            )
        }
        _ => return None,
    };
    let ports = match (protocol, transport) {
        (6 | 17 | 132, Some(header)) if header.len() >= 4 => (
            u16::from_be_bytes([header[0], header[1]]),
            u16::from_be_bytes([header[2], header[3]]),
        ),
        _ => (0, 0),
    };
    Some(PolicyEvent {
        src,
        dst,
        sport: ports.0,
        dport: ports.1,
        protocol: u32::from(protocol),
        direction: u32::from(direction),
        endpoint: 0,
        reason: reason as u32,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_syn_becomes_a_named_direction_and_reason() {
        let mut packet = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        packet.extend([10, 244, 1, 11, 10, 244, 1, 10]);
        packet.extend(34567u16.to_be_bytes());
        packet.extend(80u16.to_be_bytes());
        packet.resize(40, 0);
        let dropped = event("np-drop-ingress", &packet).expect("an event");
        assert_eq!(dropped.src, Addr::v4([10, 244, 1, 11]));
        assert_eq!(
            (dropped.sport, dropped.dport, dropped.protocol),
            (34567, 80, 6)
        );
        assert_eq!(dropped.direction, u32::from(DIR_INGRESS));
        assert_eq!(dropped.reason, DropReason::Policy as u32);
        let audit = event("np-audit-egress", &packet).expect("an event");
        assert_eq!(audit.flags, EVENT_AUDIT);
        assert!(event("not-ours", &packet).is_none());
        assert!(
            event("np-drop-ingress", &[0x45, 0]).is_none(),
            "a short packet"
        );
    }
}
