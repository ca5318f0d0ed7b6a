//! Vulnerability IDs, interned process-wide. The same few thousand CVEs recur across
//! every cached scan, so each ID's text is stored once and a finding holds 4 bytes.
//! Interned text is never freed: the set of IDs is bounded by the vulnerability
//! databases (a few hundred thousand IDs, a few MiB at most).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{OnceLock, RwLock};

/// An uppercase vulnerability ID (`CVE-2024-1`, `GHSA-…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VulnId(u32);

#[derive(Default)]
struct Interner {
    by_name: HashMap<&'static str, u32>,
    names: Vec<&'static str>,
}

fn interner() -> &'static RwLock<Interner> {
    static INTERNER: OnceLock<RwLock<Interner>> = OnceLock::new();
    INTERNER.get_or_init(RwLock::default)
}

impl VulnId {
    /// The ID for `text`, uppercased.
    pub fn new(text: &str) -> VulnId {
        let upper: Cow<'_, str> = if text.bytes().any(|b| b.is_ascii_lowercase()) {
            Cow::Owned(text.to_ascii_uppercase())
        } else {
            Cow::Borrowed(text)
        };
        let lock = interner();
        if let Some(&index) = lock
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(upper.as_ref())
        {
            return VulnId(index);
        }
        let mut interner = lock.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&index) = interner.by_name.get(upper.as_ref()) {
            return VulnId(index);
        }
        // u32 indexes 4 billion distinct IDs; the databases hold well under a million.
        let index = u32::try_from(interner.names.len()).unwrap_or(u32::MAX);
        let name: &'static str = Box::leak(upper.into_owned().into_boxed_str());
        interner.names.push(name);
        interner.by_name.insert(name, index);
        VulnId(index)
    }

    /// The ID's text.
    pub fn as_str(self) -> &'static str {
        let interner = interner().read().unwrap_or_else(|e| e.into_inner());
        interner.names.get(self.0 as usize).copied().unwrap_or("?")
    }
}

impl fmt::Display for VulnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for VulnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VulnId({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_per_text_case_insensitively() {
        let a = VulnId::new("cve-2099-1");
        assert_eq!(a, VulnId::new("CVE-2099-1"));
        assert_ne!(a, VulnId::new("CVE-2099-2"));
        assert_eq!(a.as_str(), "CVE-2099-1");
        assert_eq!(a.to_string(), "CVE-2099-1");
    }
}
