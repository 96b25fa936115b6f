//! [`Addresses`]: a pod's addresses.

use std::{fmt, net::IpAddr};

/// A pod's addresses, sorted and distinct: one or two (dual stack) in an exact allocation.
/// Every node holds every pod's; as a `BTreeSet` each took a 200-byte node.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Addresses(Box<[IpAddr]>);

impl Addresses {
    pub fn iter(&self) -> std::slice::Iter<'_, IpAddr> {
        self.0.iter()
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.binary_search(ip).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<IpAddr> for Addresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(ips: I) -> Self {
        let mut ips: Vec<IpAddr> = ips.into_iter().collect();
        ips.sort_unstable();
        ips.dedup();
        Self(ips.into_boxed_slice())
    }
}

impl<const N: usize> From<[IpAddr; N]> for Addresses {
    fn from(ips: [IpAddr; N]) -> Self {
        ips.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_kept_sorted_and_distinct() {
        let ip = |text: &str| -> IpAddr { text.parse().expect("an address") };
        let addresses: Addresses = [ip("fd00::a"), ip("10.0.0.2"), ip("10.0.0.1"), ip("fd00::a")]
            .into_iter()
            .collect();
        assert_eq!(addresses.len(), 3);
        assert!(
            addresses
                .iter()
                .eq(&[ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::a")])
        );
        assert!(addresses.contains(&ip("fd00::a")) && !addresses.contains(&ip("10.0.0.3")));
        assert_eq!(
            addresses,
            Addresses::from([ip("10.0.0.2"), ip("fd00::a"), ip("10.0.0.1")])
        );
        assert!(Addresses::default().is_empty());
    }
}
