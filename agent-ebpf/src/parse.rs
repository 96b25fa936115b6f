//! Packet parsing: the only code that reads packet bytes.
//!
//! The fast path's headers (the ethertype with an IPv4 header, the IPv6 fixed header, TCP and
//! UDP ports) are read in place when the skb's linear data holds them, the common case: one
//! bounds check the verifier proves instead of a helper call ([`read_hot_bytes`]). Everything
//! else, and those headers when they are not linear, goes through `bpf_skb_load_bytes`
//! (`TcContext::load`) with fixed sizes: it bounds-checks at run time and needs no zeroed
//! buffer (which would pull in a `memset` loop). Every loop is unrolled by hand (4.19 has no
//! bounded loops).

use core::{mem::MaybeUninit, ptr::write_volatile};

use agent_common::{
    addr::{Addr, FAMILY_V4, FAMILY_V6},
    conntrack::CtKey,
    metrics::DropReason,
};
use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};

const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// The network-layer fields of an IP packet.
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// The transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
    pub fragment: Fragment,
}

/// Where the packet stands in a fragmented datagram.
pub struct Fragment {
    /// Not the first fragment: no transport header.
    pub later: bool,
    /// The first fragment of several: later ones will follow.
    pub first_of_many: bool,
    /// The datagram's identification (0 when not fragmented).
    pub id: u32,
}

/// Parses an Ethernet frame up to the transport header. `Ok(None)` for anything that is not IPv4
/// or IPv6 (ARP, LLDP...), which policy does not cover. Transport fields are read later, only
/// for packets of isolated endpoints ([`load_transport`]), so a short packet of a pod we do not
/// enforce for is never dropped for its transport header.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, DropReason> {
    // The ethertype and an IPv4 header in one read, the common case; a frame too short for
    // that is classified by its ethertype alone.
    let packet = match read_hot_bytes::<22>(ctx, 12) {
        Ok(head) => match u16::from_be_bytes([head[0], head[1]]) {
            ETH_P_IP => ipv4_from_header(&head)?,
            ETH_P_IPV6 => parse_ipv6(ctx)?,
            _ => return Ok(None),
        },
        Err(_) => {
            let ethertype: [u8; 2] = read_bytes(ctx, 12)?;
            match u16::from_be_bytes(ethertype) {
                ETH_P_IP | ETH_P_IPV6 => return Err(DropReason::Malformed),
                _ => return Ok(None),
            }
        }
    };
    Ok(Some(launder(ctx, packet)))
}

/// The packet's scalar fields as values the verifier cannot know. Each way through the parse
/// (IPv4 or IPv6, each extension header, fragment or not) leaves them as constants or ranges
/// of its own, and every such state would walk the whole decision separately (4.19's
/// verifier stops at 131,072 processed instructions). Written to the skb's control buffer,
/// which is scratch space for tc programs, and read back, they are plain unknowns, so the
/// states meet and are pruned. `cb[2..5]` here; `verdict::launder` uses `cb[0..2]`.
#[inline(always)]
fn launder(ctx: &TcContext, mut packet: Packet) -> Packet {
    let skb = ctx.skb.skb;
    let flags = (u32::from(packet.fragment.later) << 9)
        | (u32::from(packet.fragment.first_of_many) << 8)
        | u32::from(packet.protocol);
    // SAFETY: `skb` is the context the kernel passed in; `cb` is writable by tc programs.
    let (id, offset, flags) = unsafe {
        write_volatile(&mut (*skb).cb[2], packet.fragment.id);
        write_volatile(&mut (*skb).cb[3], packet.l4_offset as u32);
        write_volatile(&mut (*skb).cb[4], flags);
        (
            core::ptr::read_volatile(&(*skb).cb[2]),
            core::ptr::read_volatile(&(*skb).cb[3]),
            core::ptr::read_volatile(&(*skb).cb[4]),
        )
    };
    packet.fragment.id = id;
    // Exact: the furthest transport header is four IPv6 extension headers of 2 KiB past the
    // fixed headers (8,246 bytes). The bound lets the verifier accept packet pointers at this
    // offset plus a header (it wants them within 64 KiB).
    packet.l4_offset = (offset & MAX_L4_OFFSET) as usize;
    packet.protocol = flags as u8;
    packet.fragment.first_of_many = flags & (1 << 8) != 0;
    packet.fragment.later = flags & (1 << 9) != 0;
    packet
}

/// An IPv4 packet from `head`: the ethertype (two bytes) and the IPv4 header.
#[inline(always)]
fn ipv4_from_header(head: &[u8; 22]) -> Result<Packet, DropReason> {
    let header_len = usize::from(head[2] & 0x0f) * 4;
    if head[2] >> 4 != 4 || header_len < 20 {
        return Err(DropReason::Malformed);
    }
    let frag = u16::from_be_bytes([head[8], head[9]]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    Ok(Packet {
        src: addr_v4([head[14], head[15], head[16], head[17]]),
        dst: addr_v4([head[18], head[19], head[20], head[21]]),
        protocol: head[11],
        l4_offset: ETH_HLEN + header_len,
        fragment: Fragment {
            later: offset != 0,
            first_of_many: offset == 0 && more,
            id: u32::from(u16::from_be_bytes([head[6], head[7]])),
        },
    })
}

/// A bound on the transport header's offset (see `launder`).
const MAX_L4_OFFSET: u32 = 0x3fff;

/// The `N` bytes at `offset`, by `bpf_skb_load_bytes`.
#[inline(always)]
fn read_bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], DropReason> {
    let mut bytes = MaybeUninit::<[u8; N]>::uninit();
    load_into(ctx, offset, bytes.as_mut_ptr())?;
    // SAFETY: `load_into` wrote all `N` bytes.
    Ok(unsafe { bytes.assume_init() })
}

/// The `N` bytes at `offset` of a header every packet of a connection has: copied straight
/// from the skb's linear data when it holds them (the common case; one bounds check the
/// verifier proves instead of a helper call), else read by `bpf_skb_load_bytes`, which also
/// reaches paged data. `Err` when the frame is too short.
///
/// Only for the fast path's headers: each use doubles the verifier's paths until the next
/// `launder`, which 5.10's verifier does not prune well.
#[inline(always)]
fn read_hot_bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], DropReason> {
    // The offset is bounded for the verifier by construction (a constant, or `launder`'s
    // mask): a comparison here would leave 5.10's verifier walking impossible paths that LLVM
    // merged.
    let start = ctx.data() + offset;
    if start + N <= ctx.data_end() {
        // SAFETY: `start..start + N` lies within the linear packet data, checked just above
        // (and by the verifier); packet bytes are plain data of alignment 1.
        return Ok(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) });
    }
    read_bytes(ctx, offset)
}

/// Reads `size_of::<T>()` bytes at `offset` straight into `dst` (no temporary on the
/// 512-byte stack).
#[inline(always)]
fn load_into<T>(ctx: &TcContext, offset: usize, dst: *mut T) -> Result<(), DropReason> {
    // SAFETY: callers pass a valid pointer to a `T` of plain bytes (addresses), and the helper
    // writes exactly `size_of::<T>()` bytes or fails.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            dst.cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(DropReason::Malformed)
    }
}

/// An IPv4 address in map form, written word by word.
///
/// Volatile stores because LLVM would merge plain zero stores into a `memset` call, which
/// bpf-linker resolves to a loop (rejected before 5.3).
#[inline(always)]
fn addr_v4(octets: [u8; 4]) -> Addr {
    let mut addr = MaybeUninit::<Addr>::uninit();
    let words = addr.as_mut_ptr().cast::<u32>();
    // SAFETY: `Addr` is five aligned `u32`-sized words of plain data (asserted in
    // agent-common); all five are written before `assume_init`.
    unsafe {
        write_volatile(words, FAMILY_V4);
        write_volatile(words.add(1), u32::from_ne_bytes(octets));
        write_volatile(words.add(2), 0);
        write_volatile(words.add(3), 0);
        write_volatile(words.add(4), 0);
        addr.assume_init()
    }
}

/// An IPv6 address in map form, copied from the packet's linear data at `at`.
///
/// # Safety
/// `at..at + 16` must lie within the packet's linear data, checked against `data_end`.
#[inline(always)]
unsafe fn addr_v6_at(at: usize) -> Addr {
    let mut addr = MaybeUninit::<Addr>::uninit();
    // SAFETY: the family word is written here and the sixteen bytes copied from the packet,
    // which the caller vouches for.
    unsafe {
        write_volatile(addr.as_mut_ptr().cast::<u32>(), FAMILY_V6);
        core::ptr::copy_nonoverlapping(
            at as *const u8,
            (*addr.as_mut_ptr()).bytes.as_mut_ptr(),
            16,
        );
        addr.assume_init()
    }
}

/// An IPv6 address in map form, read from the packet at `offset` straight into place.
#[inline(always)]
fn load_addr_v6(ctx: &TcContext, offset: usize) -> Result<Addr, DropReason> {
    let mut addr = MaybeUninit::<Addr>::uninit();
    // SAFETY: the family word is written here and the sixteen bytes by the helper, which
    // fails (and the value is dropped unread) unless it wrote all of them.
    unsafe {
        write_volatile(addr.as_mut_ptr().cast::<u32>(), FAMILY_V6);
        load_into(ctx, offset, &mut (*addr.as_mut_ptr()).bytes)?;
        Ok(addr.assume_init())
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext) -> Result<Packet, DropReason> {
    // The fixed header in place when the linear data holds it, as in `read_hot_bytes`: one
    // bounds check instead of three helper calls.
    let header = ctx.data() + ETH_HLEN;
    let (next, src, dst) = if header + IPV6_HLEN <= ctx.data_end() {
        // SAFETY: `header..header + 40` lies within the linear packet data, checked just above.
        unsafe {
            (
                *((header + 6) as *const u8),
                addr_v6_at(header + 8),
                addr_v6_at(header + 24),
            )
        }
    } else {
        let [next] = read_bytes(ctx, ETH_HLEN + 6)?;
        (
            next,
            load_addr_v6(ctx, ETH_HLEN + 8)?,
            load_addr_v6(ctx, ETH_HLEN + 24)?,
        )
    };
    let mut packet = Packet {
        src,
        dst,
        protocol: next,
        l4_offset: ETH_HLEN + IPV6_HLEN,
        fragment: Fragment {
            later: false,
            first_of_many: false,
            id: 0,
        },
    };
    // At most four extension headers, unrolled; a packet with more is malformed for us.
    skip_ipv6_ext(ctx, &mut packet)?;
    skip_ipv6_ext(ctx, &mut packet)?;
    skip_ipv6_ext(ctx, &mut packet)?;
    skip_ipv6_ext(ctx, &mut packet)?;
    if is_ipv6_ext(packet.protocol) && !packet.fragment.later {
        return Err(DropReason::Malformed);
    }
    Ok(packet)
}

#[inline(always)]
fn is_ipv6_ext(protocol: u8) -> bool {
    matches!(
        protocol,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS
    )
}

/// Steps over one extension header if the packet points at one. After a later fragment's
/// header nothing more can be read.
#[inline(always)]
fn skip_ipv6_ext(ctx: &TcContext, packet: &mut Packet) -> Result<(), DropReason> {
    if !is_ipv6_ext(packet.protocol) || packet.fragment.later {
        return Ok(());
    }
    let header: [u8; 8] = read_bytes(ctx, packet.l4_offset)?;
    let len = match packet.protocol {
        IPV6_FRAGMENT => {
            let field = u16::from_be_bytes([header[2], header[3]]);
            let offset = field >> 3;
            packet.fragment = Fragment {
                later: offset != 0,
                first_of_many: offset == 0 && field & 1 != 0,
                id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            };
            8
        }
        IPV6_AH => (usize::from(header[1]) + 2) * 4,
        _ => (usize::from(header[1]) + 1) * 8,
    };
    packet.protocol = header[0];
    packet.l4_offset += len;
    Ok(())
}

/// What the transport header says, as far as policy and connection tracking care.
pub struct Transport {
    /// Ports of the connection-tracking key: the ports of TCP, UDP and SCTP, the identifier
    /// (twice, so the reply's swapped key matches) for ICMP echo, 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    /// The port policy matches: the destination port of TCP, UDP and SCTP, 0 otherwise.
    pub policy_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    pub icmp: Icmp,
}

/// ICMP messages with a meaning of their own.
#[derive(PartialEq, Eq)]
pub enum Icmp {
    /// Not ICMP, or an ICMP message without special treatment (echo included).
    None,
    /// An error about another packet: it belongs to that packet's connection.
    Error,
    /// IPv6 neighbour discovery (router/neighbour solicitation and advertisement, redirect):
    /// the link cannot work without it.
    NeighbourDiscovery,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Reads the transport header of a packet that is not a later fragment.
#[inline(always)]
pub fn load_transport(ctx: &TcContext, packet: &Packet) -> Result<Transport, DropReason> {
    let offset = packet.l4_offset;
    let mut transport = Transport {
        sport: 0,
        dport: 0,
        policy_port: 0,
        tcp_flags: 0,
        icmp: Icmp::None,
    };
    match packet.protocol {
        IPPROTO_TCP => {
            // Ports through flags in one read.
            let header: [u8; 14] = read_hot_bytes(ctx, offset)?;
            transport.sport = u16::from_be_bytes([header[0], header[1]]);
            transport.dport = u16::from_be_bytes([header[2], header[3]]);
            transport.policy_port = transport.dport;
            transport.tcp_flags = header[13];
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u8; 4] = read_hot_bytes(ctx, offset)?;
            transport.sport = u16::from_be_bytes([ports[0], ports[1]]);
            transport.dport = u16::from_be_bytes([ports[2], ports[3]]);
            transport.policy_port = transport.dport;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let header: [u8; 8] = read_bytes(ctx, offset)?;
            let v6 = packet.protocol == IPPROTO_ICMPV6;
            match (v6, header[0]) {
                // Echo request and reply: tracked like a connection keyed by the identifier.
                (false, 0 | 8) | (true, 128 | 129) => {
                    let id = u16::from_be_bytes([header[4], header[5]]);
                    transport.sport = id;
                    transport.dport = id;
                }
                // Destination unreachable, time exceeded, parameter problem (and IPv6's
                // packet too big).
                (false, 3 | 11 | 12) | (true, 1..=4) => transport.icmp = Icmp::Error,
                (true, 133..=137) => transport.icmp = Icmp::NeighbourDiscovery,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(transport)
}

/// The connection an ICMP error is about: the packet quoted after the ICMP header, as it was
/// sent. `Err` when the quote is too short to tell.
#[inline(always)]
pub fn load_icmp_error_subject(ctx: &TcContext, packet: &Packet) -> Result<CtKey, DropReason> {
    let inner = packet.l4_offset + 8;
    let (src, dst, protocol, inner_l4) = if packet.protocol == IPPROTO_ICMP {
        let header: [u8; 20] = read_bytes(ctx, inner)?;
        let header_len = usize::from(header[0] & 0x0f) * 4;
        if header_len < 20 {
            return Err(DropReason::Malformed);
        }
        (
            addr_v4([header[12], header[13], header[14], header[15]]),
            addr_v4([header[16], header[17], header[18], header[19]]),
            header[9],
            inner + header_len,
        )
    } else {
        // The quoted IPv6 packet's extension headers are not followed: an error about a packet
        // that had some is judged as a plain ICMPv6 packet.
        let [next] = read_bytes(ctx, inner + 6)?;
        let src = load_addr_v6(ctx, inner + 8)?;
        let dst = load_addr_v6(ctx, inner + 24)?;
        (src, dst, next, inner + 40)
    };
    let quoted: [u8; 8] = read_bytes(ctx, inner_l4)?;
    let (sport, dport) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (
            u16::from_be_bytes([quoted[0], quoted[1]]),
            u16::from_be_bytes([quoted[2], quoted[3]]),
        ),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let id = u16::from_be_bytes([quoted[4], quoted[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Ok(CtKey {
        src,
        dst,
        sport,
        dport,
        protocol: u32::from(protocol),
    })
}

/// Whether `protocol` is TCP.
#[inline(always)]
pub fn is_tcp(protocol: u8) -> bool {
    protocol == IPPROTO_TCP
}

/// Whether `protocol` has ports (TCP, UDP, SCTP).
#[inline(always)]
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}
