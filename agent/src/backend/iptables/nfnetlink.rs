//! A `NETLINK_NETFILTER` socket and the framing of its messages (netlink header, `nfgenmsg`,
//! attributes), shared by the NFLOG reader (`nflog.rs`) and the debug CLI's dump of the
//! kernel's connection table (`debug/kernel_conntrack.rs`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

const NETLINK_NETFILTER: libc::c_int = 12;
/// Netlink message types every family shares.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// The `nfgenmsg` before a netfilter message's attributes.
pub const NFGENMSG_LENGTH: usize = 4;

pub struct Socket(OwnedFd);

impl Socket {
    /// A socket bound in this network namespace; a receive waits at most `timeout`.
    pub fn open(timeout: Duration) -> io::Result<Self> {
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
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
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
        let timeout = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: `message` is a valid buffer of its length.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram; `None` when the timeout passed (or the read failed).
    pub fn receive(&self, buffer: &mut [u8]) -> Option<usize> {
        // SAFETY: `buffer` is valid for writes of its length.
        let length = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        usize::try_from(length).ok().filter(|length| *length > 0)
    }

    /// Sends `message` (which asks for an acknowledgement) and waits for it.
    pub fn request_acknowledged(&self, message: &[u8]) -> io::Result<()> {
        self.send(message)?;
        let mut buffer = [0u8; 4096];
        let length = self
            .receive(&mut buffer)
            .ok_or_else(|| io::Error::other("no answer from netfilter"))?;
        for (kind, payload) in messages(&buffer[..length]) {
            if kind == NLMSG_ERROR {
                error_of(payload)?;
            }
        }
        Ok(())
    }
}

/// A request to `subsystem`'s message `kind`: header, `nfgenmsg` (`family`, `resource`,
/// e.g. an NFLOG group) and the attributes.
pub fn request(
    subsystem: u16,
    kind: u16,
    flags: u16,
    family: u8,
    resource: u16,
    attributes: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend(0u32.to_ne_bytes());
    message.extend(((subsystem << 8) | kind).to_ne_bytes());
    message.extend((libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    message.extend(1u32.to_ne_bytes());
    message.extend(0u32.to_ne_bytes());
    message.extend([family, 0]);
    message.extend(resource.to_be_bytes());
    for (attribute, value) in attributes {
        let length = 4 + value.len();
        message.extend((length as u16).to_ne_bytes());
        message.extend(attribute.to_ne_bytes());
        message.extend(*value);
        message.resize(align(message.len()), 0);
    }
    let length = message.len() as u32;
    message[..4].copy_from_slice(&length.to_ne_bytes());
    message
}

/// The messages of a datagram: (type, everything after the netlink header).
pub fn messages(mut datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if datagram.len() < 16 {
            return None;
        }
        let length = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]);
        let length = length as usize;
        if length < 16 || length > datagram.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let payload = &datagram[16..length];
        datagram = &datagram[align(length).min(datagram.len())..];
        Some((kind, payload))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 is an acknowledgement).
pub fn error_of(payload: &[u8]) -> io::Result<()> {
    let errno = payload
        .get(..4)
        .map(|bytes| i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        .ok_or_else(|| io::Error::other("a short netlink error message"))?;
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok(())
}

/// The attributes of a message or of a nested attribute: (type without the nested and
/// byte-order flags, value).
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let length = u16::from_ne_bytes([data[0], data[1]]) as usize;
        if length < 4 || length > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        let value = &data[4..length];
        data = &data[align(length).min(data.len())..];
        Some((kind, value))
    })
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_one_message_with_its_attributes() {
        let message = request(4, 1, libc::NLM_F_ACK as u16, 0, 1990, &[(1, &[1])]);
        assert_eq!(
            message.len(),
            28,
            "16 header + 4 nfgenmsg + an aligned 5-byte attribute"
        );
        assert_eq!(&message[18..20], &1990u16.to_be_bytes());
        let read: Vec<_> = messages(&message).collect();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, (4 << 8) | 1);
        let attributes: Vec<_> = attributes(&read[0].1[4..]).collect();
        assert_eq!(attributes, vec![(1, &[1u8][..])]);
    }

    #[test]
    fn a_truncated_datagram_ends_the_iteration() {
        let mut message = request(1, 1, 0, 0, 0, &[(3, &[0, 0, 0, 1])]);
        message.truncate(20);
        assert_eq!(messages(&message).count(), 0);
        assert_eq!(attributes(&[8, 0, 1, 0, 0]).count(), 0);
    }
}
