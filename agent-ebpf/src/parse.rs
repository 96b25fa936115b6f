//! Packet parsing: the only code that reads packet bytes.
//!
//! Reads go through `bpf_skb_load_bytes` (`TcContext::load`), which bounds-checks at run time,
//! so no packet pointer has to be revalidated. Every loop is unrolled by hand (4.19 has no
//! bounded loops).

use agent_common::{addr::Addr, metrics::DropReason};
use aya_ebpf::programs::TcContext;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// The fields of an IP packet that policy looks at.
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// The transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
}

/// Parses an Ethernet frame up to the transport header. `Ok(None)` for anything that is not IPv4
/// or IPv6 (ARP, LLDP...), which policy does not cover. Transport fields are read later, only
/// for packets of isolated endpoints ([`load_dport`]), so a short packet of a pod we do not
/// enforce for is never dropped for its transport header.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, DropReason> {
    let ethertype: [u8; 2] = ctx.load(12).map_err(|_| DropReason::Malformed)?;
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_ipv4(ctx).map(Some),
        ETH_P_IPV6 => parse_ipv6(ctx).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext) -> Result<Packet, DropReason> {
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return Err(DropReason::Malformed);
    }
    let frag: [u8; 2] = ctx.load(ETH_HLEN + 6).map_err(|_| DropReason::Malformed)?;
    let later_fragment = u16::from_be_bytes(frag) & 0x1fff != 0;
    let protocol: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| DropReason::Malformed)?;
    let src: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(|_| DropReason::Malformed)?;
    let dst: [u8; 4] = ctx.load(ETH_HLEN + 16).map_err(|_| DropReason::Malformed)?;
    Ok(Packet {
        src: Addr::v4(src),
        dst: Addr::v4(dst),
        protocol,
        l4_offset: ETH_HLEN + header_len,
        later_fragment,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext) -> Result<Packet, DropReason> {
    // Fixed-size loads: `load_bytes` into a zeroed buffer would pull in a `memset` loop and
    // a length the 4.19 verifier cannot bound.
    let src: [u8; 16] = ctx.load(ETH_HLEN + 8).map_err(|_| DropReason::Malformed)?;
    let dst: [u8; 16] = ctx.load(ETH_HLEN + 24).map_err(|_| DropReason::Malformed)?;
    let next: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| DropReason::Malformed)?;
    let mut l4 = L4 {
        protocol: next,
        offset: ETH_HLEN + 40,
        later_fragment: false,
    };
    // At most four extension headers, unrolled; a packet with more is malformed for us.
    skip_ipv6_ext(ctx, &mut l4)?;
    skip_ipv6_ext(ctx, &mut l4)?;
    skip_ipv6_ext(ctx, &mut l4)?;
    skip_ipv6_ext(ctx, &mut l4)?;
    if is_ipv6_ext(l4.protocol) {
        return Err(DropReason::Malformed);
    }
    Ok(Packet {
        src: Addr::v6(src),
        dst: Addr::v6(dst),
        protocol: l4.protocol,
        l4_offset: l4.offset,
        later_fragment: l4.later_fragment,
    })
}

struct L4 {
    protocol: u8,
    offset: usize,
    later_fragment: bool,
}

#[inline(always)]
fn is_ipv6_ext(protocol: u8) -> bool {
    matches!(
        protocol,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS
    )
}

/// Steps over one extension header if `l4` points at one.
#[inline(always)]
fn skip_ipv6_ext(ctx: &TcContext, l4: &mut L4) -> Result<(), DropReason> {
    if !is_ipv6_ext(l4.protocol) || l4.later_fragment {
        return Ok(());
    }
    let header: [u8; 4] = ctx.load(l4.offset).map_err(|_| DropReason::Malformed)?;
    let len = match l4.protocol {
        IPV6_FRAGMENT => {
            // Fragment offset is the top 13 bits of bytes 2..4.
            let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
            l4.later_fragment = offset != 0;
            8
        }
        IPV6_AH => (usize::from(header[1]) + 2) * 4,
        _ => (usize::from(header[1]) + 1) * 8,
    };
    l4.protocol = header[0];
    l4.offset += len;
    Ok(())
}

/// The destination port of TCP, UDP and SCTP; 0 for protocols without ports. Not for later
/// fragments, which carry no transport header.
#[inline(always)]
pub fn load_dport(ctx: &TcContext, packet: &Packet) -> Result<u16, DropReason> {
    let (protocol, l4_offset) = (packet.protocol, packet.l4_offset);
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let port: [u8; 2] = ctx.load(l4_offset + 2).map_err(|_| DropReason::Malformed)?;
            Ok(u16::from_be_bytes(port))
        }
        _ => Ok(0),
    }
}
