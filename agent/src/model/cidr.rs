//! [`Cidr`]: an address prefix as ipBlock writes it, parsed and validated at the edge.
//!
//! Only parsing and the validation the API does (except must be a strict subset of cidr) live
//! here; matching addresses against prefixes is done by the compiler and the evaluator, each in
//! its own way.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Why a CIDR did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CIDR: {problem}")]
pub struct CidrError {
    pub text: String,
    pub problem: &'static str,
}

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `addr/len` with the host bits of `addr` cleared (as Go's `net.ParseCIDR`, which accepts
    /// `10.1.2.3/8`); `None` when `len` exceeds the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(v4) => {
                if len > 32 {
                    return None;
                }
                let bits = u32::from(v4);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                if len > 128 {
                    return None;
                }
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        };
        Some(Self { addr, len })
    }

    /// The prefix holding exactly `addr`.
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    /// Parses `address/length`.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let error = |problem: &'static str| CidrError {
            text: text.to_owned(),
            problem,
        };
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| error("not address/length"))?;
        let addr: IpAddr = addr.parse().map_err(|_| error("not an IP address"))?;
        let len: u8 = len.parse().map_err(|_| error("not a prefix length"))?;
        Self::new(addr, len).ok_or_else(|| error("prefix length too long for the family"))
    }

    /// The network address (host bits clear).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a collection size"
    )]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether `other` is a strict subset of `self` (what the API demands of an except).
    pub fn strictly_contains(&self, other: &Cidr) -> bool {
        other.len > self.len
            && Cidr::new(other.addr, self.len).is_some_and(|truncated| truncated == *self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_clears_host_bits_like_the_api_server() {
        let cidr = Cidr::parse("10.1.2.3/8").expect("valid");
        assert_eq!(cidr.to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("fd00::1/0").expect("valid").to_string(), "::/0");
        assert_eq!(Cidr::parse("10.0.0.1/32").expect("valid").len(), 32);
    }

    #[test]
    fn parsing_rejects_what_is_not_a_cidr() {
        for text in [
            "10.0.0.1",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(Cidr::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn an_except_must_be_a_strict_subset_of_the_same_family() {
        let cidr = Cidr::parse("10.0.0.0/8").expect("valid");
        let inside = Cidr::parse("10.1.0.0/16").expect("valid");
        let same = Cidr::parse("10.0.0.0/8").expect("valid");
        let outside = Cidr::parse("11.0.0.0/16").expect("valid");
        let v6 = Cidr::parse("::/16").expect("valid");
        assert!(cidr.strictly_contains(&inside));
        assert!(!cidr.strictly_contains(&same));
        assert!(!cidr.strictly_contains(&outside));
        assert!(!cidr.strictly_contains(&v6));
    }
}
