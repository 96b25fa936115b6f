//! The kernel's connection table, which the iptables backend relies on (its rules judge only
//! a connection's first packet), dumped over ctnetlink like `conntrack -L` does.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::backend::iptables::nfnetlink::{self, NFGENMSG_LENGTH, NLMSG_DONE, NLMSG_ERROR, Socket};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_TIMESTAMP: u16 = 20;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_TIMESTAMP_START: u16 = 1;

/// The `status` bits worth naming (`enum ip_conntrack_status`).
pub const STATUS_NAMES: [(u32, &str); 5] = [
    (1 << 1, "seen-reply"),
    (1 << 2, "assured"),
    (1 << 3, "confirmed"),
    (1 << 4, "snat"),
    (1 << 5, "dnat"),
];
const IPS_SEEN_REPLY: u32 = 1 << 1;

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub original: Tuple,
    /// The reply direction: its source is the original destination after DNAT.
    pub reply: Tuple,
    pub status: u32,
    /// `enum tcp_conntrack` for TCP.
    pub tcp_state: Option<u8>,
    /// Seconds until the entry expires.
    pub timeout_s: Option<u32>,
    /// Wall-clock nanoseconds of its creation (only with `nf_conntrack_timestamp` on).
    pub start_ns: Option<u64>,
}

impl Connection {
    /// `opening`, `established` or `closing`, the words of the eBPF table.
    pub fn state(&self) -> &'static str {
        match self.tcp_state {
            // ESTABLISHED
            Some(3) => "established",
            // FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE
            Some(4..=8) => "closing",
            Some(_) => "opening",
            None if self.status & IPS_SEEN_REPLY != 0 => "established",
            None => "opening",
        }
    }
}

/// Every connection the kernel tracks in this network namespace, both families.
pub fn dump() -> Result<Vec<Connection>> {
    let socket = Socket::open(Duration::from_secs(5)).context("opening a netfilter socket")?;
    let request = nfnetlink::request(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        libc::NLM_F_DUMP as u16,
        libc::AF_UNSPEC as u8,
        0,
        &[],
    );
    socket
        .send(&request)
        .context("asking for the connection table")?;
    let mut connections = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let length = socket
            .receive(&mut buffer)
            .context("the kernel did not finish the connection table dump in 5 s")?;
        for (kind, payload) in nfnetlink::messages(&buffer[..length]) {
            match kind {
                NLMSG_DONE => return Ok(connections),
                NLMSG_ERROR => {
                    nfnetlink::error_of(payload).context("dumping the connection table")?
                }
                kind if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    if let Some(connection) = payload.get(NFGENMSG_LENGTH..).and_then(parse) {
                        connections.push(connection);
                    }
                }
                kind => bail!("an unexpected message type {kind:#x} in the dump"),
            }
        }
    }
}

/// One connection's attributes; `None` without both tuples.
fn parse(attributes: &[u8]) -> Option<Connection> {
    let (mut original, mut reply) = (None, None);
    let mut connection = Connection {
        original: Tuple::unknown(),
        reply: Tuple::unknown(),
        status: 0,
        tcp_state: None,
        timeout_s: None,
        start_ns: None,
    };
    for (kind, value) in nfnetlink::attributes(attributes) {
        match kind {
            CTA_TUPLE_ORIG => original = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            CTA_STATUS => connection.status = be32(value)?,
            CTA_TIMEOUT => connection.timeout_s = be32(value),
            CTA_PROTOINFO => {
                connection.tcp_state = nested(value, CTA_PROTOINFO_TCP)
                    .and_then(|tcp| nested(tcp, CTA_PROTOINFO_TCP_STATE))
                    .and_then(|state| state.first().copied())
            }
            CTA_TIMESTAMP => {
                connection.start_ns = nested(value, CTA_TIMESTAMP_START)
                    .and_then(|start| Some(u64::from_be_bytes(start.try_into().ok()?)))
            }
            _ => {}
        }
    }
    connection.original = original?;
    connection.reply = reply?;
    Some(connection)
}

impl Tuple {
    fn unknown() -> Self {
        Self {
            src: Ipv4Addr::UNSPECIFIED.into(),
            dst: Ipv4Addr::UNSPECIFIED.into(),
            protocol: 0,
            sport: 0,
            dport: 0,
        }
    }
}

fn parse_tuple(value: &[u8]) -> Option<Tuple> {
    let mut tuple = Tuple::unknown();
    let ip = nested(value, CTA_TUPLE_IP)?;
    for (kind, address) in nfnetlink::attributes(ip) {
        let address: IpAddr = match address.len() {
            4 => Ipv4Addr::from(<[u8; 4]>::try_from(address).ok()?).into(),
            16 => Ipv6Addr::from(<[u8; 16]>::try_from(address).ok()?).into(),
            _ => continue,
        };
        match kind {
            CTA_IP_V4_SRC | CTA_IP_V6_SRC => tuple.src = address,
            CTA_IP_V4_DST | CTA_IP_V6_DST => tuple.dst = address,
            _ => {}
        }
    }
    for (kind, value) in nfnetlink::attributes(nested(value, CTA_TUPLE_PROTO)?) {
        match kind {
            CTA_PROTO_NUM => tuple.protocol = *value.first()?,
            CTA_PROTO_SRC_PORT => tuple.sport = u16::from_be_bytes(value.try_into().ok()?),
            CTA_PROTO_DST_PORT => tuple.dport = u16::from_be_bytes(value.try_into().ok()?),
            _ => {}
        }
    }
    Some(tuple)
}

/// The first attribute of type `kind` inside `value`.
fn nested(value: &[u8], kind: u16) -> Option<&[u8]> {
    nfnetlink::attributes(value)
        .find(|(found, _)| *found == kind)
        .map(|(_, inner)| inner)
}

fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [
            attribute(CTA_IP_V4_SRC, &src),
            attribute(CTA_IP_V4_DST, &dst),
        ]
        .concat();
        let proto = [
            attribute(CTA_PROTO_NUM, &[6]),
            attribute(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            attribute(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        // Nested attributes carry NLA_F_NESTED in the kernel's answers.
        [
            attribute(CTA_TUPLE_IP | 0x8000, &ip),
            attribute(CTA_TUPLE_PROTO | 0x8000, &proto),
        ]
        .concat()
    }

    #[test]
    fn a_dnat_connection_reads_with_both_tuples_state_and_timeout() {
        let tcp = attribute(CTA_PROTOINFO_TCP_STATE, &[3]);
        let message = [
            attribute(
                CTA_TUPLE_ORIG | 0x8000,
                &tuple([10, 244, 1, 12], [10, 96, 0, 10], 40000, 80),
            ),
            attribute(
                CTA_TUPLE_REPLY | 0x8000,
                &tuple([10, 244, 1, 10], [10, 244, 1, 12], 8080, 40000),
            ),
            attribute(CTA_STATUS, &(0b101110u32).to_be_bytes()),
            attribute(CTA_TIMEOUT, &431_999u32.to_be_bytes()),
            attribute(
                CTA_PROTOINFO | 0x8000,
                &attribute(CTA_PROTOINFO_TCP | 0x8000, &tcp),
            ),
        ]
        .concat();
        let connection = parse(&message).expect("a connection");
        assert_eq!(connection.original.dst, IpAddr::from([10, 96, 0, 10]));
        assert_eq!(connection.original.dport, 80);
        assert_eq!(connection.reply.src, IpAddr::from([10, 244, 1, 10]));
        assert_eq!(connection.reply.sport, 8080);
        assert_eq!(connection.timeout_s, Some(431_999));
        assert_eq!(connection.state(), "established");
        assert_eq!(connection.start_ns, None);
    }

    #[test]
    fn a_connection_without_its_reply_tuple_is_skipped() {
        let message = attribute(
            CTA_TUPLE_ORIG | 0x8000,
            &tuple([10, 0, 0, 1], [10, 0, 0, 2], 1, 2),
        );
        assert_eq!(parse(&message), None);
    }
}
