//! Hand-made IP packets sent through raw sockets from inside a pod (forged sources, fragment
//! trains), and a packet counter on a pod's interface that sees what is delivered, whether or
//! not a socket would accept it.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_FRAGMENT: u8 = 44;

/// A TCP SYN from `src` (any address) to `dst:port`, as raw IP bytes.
pub fn tcp_syn(src: IpAddr, dst: IpAddr, port: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let checksum = transport_checksum(src, dst, IPPROTO_TCP, &tcp);
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    ip_packet(src, dst, IPPROTO_TCP, None, &tcp)
}

/// A UDP datagram of `len` payload bytes from `src:sport` to `dst:port`, cut into fragments
/// of `chunk` bytes (a multiple of 8) with IP id `id`, as raw IP packets in order.
pub fn udp_fragments(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    port: u16,
    id: u32,
    len: usize,
    chunk: usize,
) -> Vec<Vec<u8>> {
    let mut datagram = vec![0u8; 8 + len];
    datagram[0..2].copy_from_slice(&sport.to_be_bytes());
    datagram[2..4].copy_from_slice(&port.to_be_bytes());
    datagram[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    for (index, byte) in datagram[8..].iter_mut().enumerate() {
        *byte = index as u8;
    }
    let checksum = transport_checksum(src, dst, IPPROTO_UDP, &datagram);
    datagram[6..8].copy_from_slice(&checksum.to_be_bytes());
    datagram
        .chunks(chunk)
        .enumerate()
        .map(|(index, piece)| {
            let offset = index * chunk;
            let more = offset + piece.len() < datagram.len();
            ip_packet(src, dst, IPPROTO_UDP, Some((id, offset, more)), piece)
        })
        .collect()
}

/// An IPv4 or IPv6 header (with a fragment header or fields when `fragment` is
/// `(id, byte offset, more)`) in front of `payload`.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    fragment: Option<(u32, usize, bool)>,
    payload: &[u8],
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut header = vec![0u8; 20];
            header[0] = 0x45;
            header[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            if let Some((id, offset, more)) = fragment {
                header[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                let field = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
                header[6..8].copy_from_slice(&field.to_be_bytes());
            } else {
                header[4..6].copy_from_slice(&1u16.to_be_bytes());
            }
            header[8] = 64;
            header[9] = protocol;
            header[12..16].copy_from_slice(&src.octets());
            header[16..20].copy_from_slice(&dst.octets());
            let checksum = fold(sum_words(&header));
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            header.extend_from_slice(payload);
            header
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut extension = Vec::new();
            let mut next = protocol;
            if let Some((id, offset, more)) = fragment {
                extension = vec![0u8; 8];
                extension[0] = protocol;
                let field = (offset as u16) | u16::from(more);
                extension[2..4].copy_from_slice(&field.to_be_bytes());
                extension[4..8].copy_from_slice(&id.to_be_bytes());
                next = IPPROTO_FRAGMENT;
            }
            let mut header = vec![0u8; 40];
            header[0] = 0x60;
            header[4..6].copy_from_slice(&((extension.len() + payload.len()) as u16).to_be_bytes());
            header[6] = next;
            header[7] = 64;
            header[8..24].copy_from_slice(&src.octets());
            header[24..40].copy_from_slice(&dst.octets());
            header.extend_from_slice(&extension);
            header.extend_from_slice(payload);
            header
        }
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP checksum over the pseudo-header and `segment`.
fn transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => panic!("mixed address families"),
    }
    let sum = sum_words(&pseudo) + sum_words(segment);
    match fold(sum) {
        0 => 0xffff,
        checksum => checksum,
    }
}

/// Sends raw IP `packets` (headers included) from inside `netns`, routed as the pod routes.
pub fn send(netns: &Netns, packets: &[Vec<u8>]) {
    netns.run(|| {
        for packet in packets {
            let (domain, dst) = if packet[0] >> 4 == 6 {
                let dst: [u8; 16] = packet[24..40].try_into().expect("IPv6 header");
                (Domain::IPV6, IpAddr::from(dst))
            } else {
                let dst: [u8; 4] = packet[16..20].try_into().expect("IPv4 header");
                (Domain::IPV4, IpAddr::from(dst))
            };
            // IPPROTO_RAW: the packet carries its own IP header, any source included.
            let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
                .expect("raw socket");
            let sent = socket
                .send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0)))
                .expect("raw send");
            assert_eq!(sent, packet.len(), "raw send");
        }
    });
}

/// Counts IP packets arriving on an interface of a namespace (an AF_PACKET socket).
pub struct Counter {
    socket: Socket,
}

/// What a delivered packet is, as far as the tests ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    /// IPv4 identification or IPv6 fragment id; `None` when not a fragment.
    pub fragment_id: Option<u32>,
}

impl Counter {
    /// Starts counting on `iface` of `netns` (everything from now on is queued).
    pub fn open(netns: &Netns, iface: &str) -> Self {
        let iface = iface.to_owned();
        let socket = netns.run(move || {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            let socket = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(protocol))),
            )
            .expect("packet socket");
            let name = std::ffi::CString::new(iface).expect("interface name");
            // SAFETY: NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(index != 0, "no interface {name:?}");
            // Only this interface's packets: socket2 has no sockaddr_ll, so bind(2) itself.
            // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain data.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = index as i32;
            // SAFETY: the address is valid for its size.
            let bound = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert!(bound == 0, "bind: {}", std::io::Error::last_os_error());
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("receive timeout");
            socket
        });
        Self { socket }
    }

    /// Every IP packet received for `wait`, parsed.
    pub fn collect(&self, wait: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        let mut frame = [0u8; 2048];
        let mut reader = &self.socket;
        while Instant::now() < deadline {
            if let Ok(len) = reader.read(&mut frame)
                && let Some(packet) = parse(&frame[..len])
            {
                seen.push(packet);
            }
        }
        seen
    }
}

fn parse(frame: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 if ip.len() >= 20 => {
            let src: [u8; 4] = ip[12..16].try_into().ok()?;
            let field = u16::from_be_bytes([ip[6], ip[7]]);
            let fragmented = field & 0x3fff != 0;
            Some(Seen {
                src: IpAddr::from(src),
                fragment_id: fragmented.then(|| u32::from(u16::from_be_bytes([ip[4], ip[5]]))),
            })
        }
        0x86dd if ip.len() >= 40 => {
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let fragment_id = (ip[6] == IPPROTO_FRAGMENT && ip.len() >= 48)
                .then(|| u32::from_be_bytes([ip[44], ip[45], ip[46], ip[47]]));
            Some(Seen {
                src: IpAddr::from(src),
                fragment_id,
            })
        }
        _ => None,
    }
}
