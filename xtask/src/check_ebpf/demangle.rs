//! Readable names for the Rust symbols of BPF-to-BPF callees in the table and in messages
//! (`_RNvNtCs..._9netpol_tc9fragments12first_passed` → `netpol_tc::fragments::first_passed`).
//!
//! Covers the plain paths rustc emits for free functions, in v0 and legacy mangling; anything
//! else (generics, impls, punycode) is shown as the raw symbol. Not a general demangler.

/// The demangled path of `symbol`, or `symbol` itself when it is not a plain Rust path.
pub fn demangle(symbol: &str) -> String {
    let parsed = if let Some(v0) = symbol.strip_prefix("_R") {
        let mut parser = Parser {
            rest: v0.as_bytes(),
            depth: 0,
        };
        parser
            .path()
            .filter(|_| parser.rest.iter().all(u8::is_ascii_alphanumeric))
    } else if let Some(legacy) = symbol.strip_prefix("_ZN") {
        legacy_path(legacy)
    } else {
        None
    };
    parsed.map_or_else(|| symbol.to_owned(), |parts| parts.join("::"))
}

struct Parser<'s> {
    rest: &'s [u8],
    /// Nesting so far: a hostile symbol must not overflow the stack.
    depth: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// `C <disambiguator>? <identifier>` or `N <namespace> <path> <disambiguator>? <identifier>`.
    fn path(&mut self) -> Option<Vec<String>> {
        self.depth += 1;
        if self.depth > 64 {
            return None;
        }
        match self.next()? {
            b'C' => Some(vec![self.identifier()?]),
            b'N' => {
                let namespace = self.next()?;
                let mut path = self.path()?;
                let name = self.identifier()?;
                path.push(match namespace {
                    b'C' => "{closure}".to_owned(),
                    b'S' => "{shim}".to_owned(),
                    _ => name,
                });
                Some(path)
            }
            _ => None,
        }
    }

    /// `s <base-62 number> _`, skipped.
    fn disambiguator(&mut self) -> Option<()> {
        if self.rest.first() == Some(&b's') {
            let end = self.rest.iter().position(|&b| b == b'_')?;
            self.rest = &self.rest[end + 1..];
        }
        Some(())
    }

    /// `<disambiguator>? <decimal length> _? <bytes>` (punycode `u` is not handled).
    fn identifier(&mut self) -> Option<String> {
        self.disambiguator()?;
        let digits = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let len: usize = std::str::from_utf8(&self.rest[..digits])
            .ok()?
            .parse()
            .ok()?;
        self.rest = &self.rest[digits..];
        if self.rest.first() == Some(&b'_') {
            self.rest = &self.rest[1..];
        }
        let name = self.rest.get(..len)?;
        self.rest = &self.rest[len..];
        String::from_utf8(name.to_vec()).ok()
    }
}

/// `(<decimal length> <bytes>)+ E`, without the trailing `h<16 hex digits>` hash.
fn legacy_path(mut rest: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    while !rest.starts_with('E') {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let len: usize = rest.get(..digits)?.parse().ok()?;
        let part = rest.get(digits..digits + len)?;
        parts.push(part.replace("..", "::"));
        rest = &rest[digits + len..];
    }
    let is_hash = |p: &String| {
        p.len() == 17 && p.starts_with('h') && p[1..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    if parts.last().is_some_and(is_hash) {
        parts.pop();
    }
    (!parts.is_empty()).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn v0_and_legacy_paths_demangle_and_the_rest_is_left_alone() {
        assert_eq!(
            demangle("_RNvNtCs2rPJN1HHpQD_9netpol_tc9fragments12first_passed"),
            "netpol_tc::fragments::first_passed"
        );
        assert_eq!(
            demangle("_ZN9netpol_tc6policy6lookup17h0123456789abcdefE"),
            "netpol_tc::policy::lookup"
        );
        assert_eq!(demangle("_RNCNvCs1_3foo3bar0"), "foo::bar::{closure}");
        // Not plain paths, or broken: shown raw, never a panic.
        for raw in [
            "memset",
            "_RNvXs_",
            "_RINvCs1_3foo3barpE",
            "_R",
            "_ZN99xE",
            "_ZN3f",
        ] {
            assert_eq!(demangle(raw), raw);
        }
        let deep = format!("_R{}C3foo", "Nv".repeat(10_000));
        assert_eq!(demangle(&deep), deep);
    }
}
