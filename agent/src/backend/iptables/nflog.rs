//! The iptables backend's drop and audit events: its drop chains log to NFLOG group
//! [`NFLOG_GROUP`] with a prefix naming the reason and direction (`np-drop-ingress`,
//! `np-audit-egress`, ...); a thread reads them over `NETLINK_NETFILTER` and hands them to the
//! same sink as the eBPF datapath's events, as [`PolicyEvent`]s.

use std::{io, sync::atomic::Ordering};

use agent_common::{
    addr::Addr,
    events::{EVENT_AUDIT, PolicyEvent},
    metrics::DropReason,
    policy::{DIR_EGRESS, DIR_INGRESS},
};

use super::render::NFLOG_GROUP;
use crate::backend::ebpf::{EventSink, EventThread};

const NETLINK_NETFILTER: libc::c_int = 12;
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
    let socket = Socket::bind_group(NFLOG_GROUP)?;
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

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn bind_group(group: u16) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Self(fd);
        // SAFETY: a zeroed sockaddr_nl is valid; bind reads it.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `address` is a valid sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        // Wake up every 200 ms to notice a stop.
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        socket.configure(group, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND])?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend([NFULNL_COPY_PACKET, 0]);
        socket.configure(group, NFULA_CFG_MODE, &mode)?;
        Ok(socket)
    }

    /// Sends one config attribute for `group` and waits for the kernel's acknowledgement.
    fn configure(&self, group: u16, attribute: u16, value: &[u8]) -> io::Result<()> {
        let message = config_message(group, attribute, value);
        // SAFETY: `message` is a valid buffer of its length.
        let sent = unsafe { libc::send(self.0, message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buffer = [0u8; 4096];
        let length = self
            .receive(&mut buffer)
            .ok_or_else(|| io::Error::other("no answer to an NFLOG configuration message"))?;
        // NLMSG_ERROR (2): an i32 errno right after the header, 0 for the acknowledgement.
        if length >= 20 && u16::from_ne_bytes([buffer[4], buffer[5]]) == 2 {
            let errno = i32::from_ne_bytes([buffer[16], buffer[17], buffer[18], buffer[19]]);
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
        }
        Ok(())
    }

    fn receive(&self, buffer: &mut [u8]) -> Option<usize> {
        // SAFETY: `buffer` is valid for writes of its length.
        let length = unsafe { libc::recv(self.0, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        usize::try_from(length).ok().filter(|length| *length > 0)
    }
}

/// A config request: netlink header, nfgenmsg (family unspecified, group), one attribute.
fn config_message(group: u16, attribute: u16, value: &[u8]) -> Vec<u8> {
    let attribute_length = 4 + value.len();
    let length = 16 + 4 + align(attribute_length);
    let mut message = Vec::with_capacity(length);
    message.extend((length as u32).to_ne_bytes());
    message.extend(((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    message.extend(flags.to_ne_bytes());
    message.extend(1u32.to_ne_bytes());
    message.extend(0u32.to_ne_bytes());
    message.extend([libc::AF_UNSPEC as u8, 0]);
    message.extend(group.to_be_bytes());
    message.extend((attribute_length as u16).to_ne_bytes());
    message.extend(attribute.to_ne_bytes());
    message.extend(value);
    message.resize(length, 0);
    message
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// Every logged packet of a datagram, as an event.
fn parse_datagram(datagram: &[u8]) -> Vec<PolicyEvent> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let length = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length < 16 || length > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && length >= 20 {
            events.extend(parse_packet(&rest[20..length]));
        }
        rest = &rest[align(length).min(rest.len())..];
    }
    events
}

/// One NFLOG packet message's attributes: our prefix and the packet.
fn parse_packet(mut attributes: &[u8]) -> Option<PolicyEvent> {
    let (mut prefix, mut payload) = (None, None);
    while attributes.len() >= 4 {
        let length = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        if length < 4 || length > attributes.len() {
            break;
        }
        // The top bits are flags (nested, byte order).
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        let value = &attributes[4..length];
        match kind {
            NFULA_PREFIX => {
                prefix = std::str::from_utf8(value)
                    .ok()
                    .map(|text| text.trim_end_matches('\0'))
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
        attributes = &attributes[align(length).min(attributes.len())..];
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

    #[test]
    fn config_messages_carry_the_group_and_one_aligned_attribute() {
        let message = config_message(1990, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
        assert_eq!(message.len(), 28);
        assert_eq!(
            u32::from_ne_bytes([message[0], message[1], message[2], message[3]]),
            28
        );
        assert_eq!(&message[18..20], &1990u16.to_be_bytes());
    }
}
