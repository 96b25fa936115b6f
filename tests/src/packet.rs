//! A builder for the frames the datapath sees on a veth: Ethernet, IPv4 or IPv6 (with optional
//! extension headers and fragmentation), and a transport header.
//!
//! Checksums are left zero: the programs never verify them, and test runs do not deliver.

use std::net::IpAddr;

/// Transport header of a crafted packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6), by the packet's family; `id` is the echo identifier
    /// (bytes 4..6 of the header).
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
    /// Any other protocol number, with a few bytes of payload.
    Other {
        protocol: u8,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

impl Transport {
    /// The IP protocol number (ICMP depends on the family).
    pub fn protocol(&self, ipv6: bool) -> u8 {
        match self {
            Self::Tcp { .. } => 6,
            Self::Udp { .. } => 17,
            Self::Sctp { .. } => 132,
            Self::Icmp { .. } if ipv6 => 58,
            Self::Icmp { .. } => 1,
            Self::Other { protocol } => *protocol,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match *self {
            Self::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut header = vec![0u8; 20];
                header[0..2].copy_from_slice(&sport.to_be_bytes());
                header[2..4].copy_from_slice(&dport.to_be_bytes());
                header[12] = 5 << 4;
                header[13] = flags;
                header
            }
            Self::Udp { sport, dport } => {
                let mut header = vec![0u8; 8];
                header[0..2].copy_from_slice(&sport.to_be_bytes());
                header[2..4].copy_from_slice(&dport.to_be_bytes());
                header[4..6].copy_from_slice(&8u16.to_be_bytes());
                header
            }
            Self::Sctp { sport, dport } => {
                let mut header = vec![0u8; 12];
                header[0..2].copy_from_slice(&sport.to_be_bytes());
                header[2..4].copy_from_slice(&dport.to_be_bytes());
                header
            }
            Self::Icmp { kind, code, id } => {
                let id = id.to_be_bytes();
                vec![kind, code, 0, 0, id[0], id[1], 0, 0]
            }
            Self::Other { .. } => vec![0u8; 8],
        }
    }
}

/// IPv6 extension headers the builder can insert before the transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    HopByHop,
    DestinationOptions,
    Routing,
}

/// Fragmentation of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset in 8-byte units; 0 is the first fragment.
    pub offset: u16,
    pub more: bool,
}

/// A packet to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    pub fragment: Option<Fragment>,
    /// IPv4 identification (low 16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Ignored for IPv4.
    pub ipv6_ext: Vec<Ipv6Ext>,
    /// Bytes after the transport header (an ICMP error's quoted packet, say).
    pub payload: Vec<u8>,
}

impl PacketSpec {
    pub fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Self {
        Self {
            src,
            dst,
            transport,
            fragment: None,
            id: 0,
            ipv6_ext: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// An ICMP (or ICMPv6) error of `kind` from `src` to `dst` quoting `quoted`'s IP packet.
    pub fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, quoted: &PacketSpec) -> Self {
        let mut spec = Self::new(
            src,
            dst,
            Transport::Icmp {
                kind,
                code: 0,
                id: 0,
            },
        );
        spec.payload = quoted.build()[14..].to_vec();
        spec
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let transport = match self.fragment {
            // A later fragment carries payload, not a transport header.
            Some(Fragment { offset, .. }) if offset != 0 => vec![0xab; 16],
            _ => {
                let mut bytes = self.transport.bytes();
                bytes.extend_from_slice(&self.payload);
                bytes
            }
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = 20 + transport.len();
                let mut ip = vec![0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&(self.id as u16).to_be_bytes());
                if let Some(Fragment { offset, more }) = self.fragment {
                    let field = (offset & 0x1fff) | if more { 0x2000 } else { 0 };
                    ip[6..8].copy_from_slice(&field.to_be_bytes());
                }
                ip[8] = 64;
                ip[9] = self.transport.protocol(false);
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                // Chain: extension headers, then a fragment header, then the transport.
                let mut chain: Vec<(u8, Vec<u8>)> = self
                    .ipv6_ext
                    .iter()
                    .map(|ext| {
                        let kind = match ext {
                            Ipv6Ext::HopByHop => 0,
                            Ipv6Ext::DestinationOptions => 60,
                            Ipv6Ext::Routing => 43,
                        };
                        // 8 bytes: next header, length 0 (= 8 bytes), padding.
                        (kind, vec![0u8; 8])
                    })
                    .collect();
                if let Some(Fragment { offset, more }) = self.fragment {
                    let mut header = vec![0u8; 8];
                    let field = (offset << 3) | u16::from(more);
                    header[2..4].copy_from_slice(&field.to_be_bytes());
                    header[4..8].copy_from_slice(&self.id.to_be_bytes());
                    chain.push((44, header));
                }
                let protocol = self.transport.protocol(true);
                let first = chain.first().map_or(protocol, |(kind, _)| *kind);
                let mut payload = Vec::new();
                for i in 0..chain.len() {
                    let next = chain.get(i + 1).map_or(protocol, |(kind, _)| *kind);
                    let mut header = chain[i].1.clone();
                    header[0] = next;
                    payload.extend_from_slice(&header);
                }
                payload.extend_from_slice(&transport);
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                ip[6] = first;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
                frame.extend_from_slice(&payload);
                return frame;
            }
            _ => panic!("packet spec mixes address families: {self:?}"),
        }
        frame.extend_from_slice(&transport);
        frame
    }
}

/// An ARP request frame (not IP: outside policy).
pub fn arp_request() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0u8; 28]);
    frame
}
