//! Vulnerability IDs, interned process-wide. The same few thousand CVEs recur across
//! every cached scan, so each ID's text is stored once and a finding holds 4 bytes. The
//! text is counted: when the last result (or policy) holding an ID is dropped, it is
//! freed, so the set of IDs kept follows the cache rather than every ID ever seen.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// An uppercase vulnerability ID (`CVE-2024-1`, `GHSA-…`). Cloning holds the text once
/// more; dropping the last holder frees it.
#[derive(PartialEq, Eq, Hash)]
pub struct VulnId(u32);

#[derive(Default)]
struct Interner {
    /// foldhash with a per-process random seed: every cached finding is interned once
    /// per start (ten million at a million results), where SipHash was 6 % of loading
    /// the cache. The IDs come from the configured scanners and the policies.
    by_name: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Slot {
    name: Option<Arc<str>>,
    holders: AtomicU32,
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
        {
            let interner = lock.read().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = interner.hold(&upper) {
                return id;
            }
        }
        let mut interner = lock.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = interner.hold(&upper) {
            return id;
        }
        let name: Arc<str> = Arc::from(upper.as_ref());
        let slot = Slot {
            name: Some(name.clone()),
            holders: AtomicU32::new(1),
        };
        // u32 indexes 4 billion distinct IDs; the databases hold well under a million.
        let index = match interner.free.pop() {
            Some(index) => {
                interner.slots[index as usize] = slot;
                index
            }
            None => {
                interner.slots.push(slot);
                u32::try_from(interner.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        interner.by_name.insert(name, index);
        VulnId(index)
    }

    /// The ID's text.
    pub fn as_str(&self) -> Arc<str> {
        let interner = interner().read().unwrap_or_else(|e| e.into_inner());
        interner
            .name(self)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }

    /// Appends the IDs' texts to `out`, `separator` between them: [`VulnId::as_str`]
    /// without taking a share of each text (an atomic count up and down per ID), under
    /// one hold of the interner's read lock for the copies only. `Display` takes a share
    /// instead, so no formatter's output is written under it.
    pub fn push_joined(out: &mut String, ids: &[&VulnId], separator: &str) {
        let interner = interner().read().unwrap_or_else(|e| e.into_inner());
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push_str(separator);
            }
            out.push_str(interner.name(id).map_or("?", |name| name));
        }
    }

    /// The ID's slot: equal for equal IDs while both are held.
    pub(crate) fn index(&self) -> u32 {
        self.0
    }

    /// How many distinct IDs are held (for tests and metrics).
    pub fn interned() -> usize {
        interner()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .len()
    }
}

impl Interner {
    /// `id`'s text, while `id` holds it.
    fn name(&self, id: &VulnId) -> Option<&Arc<str>> {
        self.slots
            .get(id.0 as usize)
            .and_then(|slot| slot.name.as_ref())
    }

    /// One more holder of `name`, if interned.
    fn hold(&self, name: &str) -> Option<VulnId> {
        let index = *self.by_name.get(name)?;
        self.slots[index as usize]
            .holders
            .fetch_add(1, Ordering::AcqRel);
        Some(VulnId(index))
    }
}

impl Clone for VulnId {
    fn clone(&self) -> Self {
        let interner = interner().read().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = interner.slots.get(self.0 as usize) {
            slot.holders.fetch_add(1, Ordering::AcqRel);
        }
        VulnId(self.0)
    }
}

impl Drop for VulnId {
    fn drop(&mut self) {
        let lock = interner();
        let last = {
            let interner = lock.read().unwrap_or_else(|e| e.into_inner());
            interner
                .slots
                .get(self.0 as usize)
                .is_some_and(|slot| slot.holders.fetch_sub(1, Ordering::AcqRel) == 1)
        };
        if !last {
            return;
        }
        // Free it, unless someone took it up again meanwhile (any slot with no holder
        // may be freed, whoever notices).
        let mut interner = lock.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = interner.slots.get_mut(self.0 as usize) else {
            return;
        };
        if *slot.holders.get_mut() != 0 {
            return;
        }
        if let Some(name) = slot.name.take() {
            interner.by_name.remove(&name);
            interner.free.push(self.0);
        }
    }
}

impl fmt::Display for VulnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
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
        assert_eq!(&*a.as_str(), "CVE-2099-1");
        assert_eq!(a.to_string(), "CVE-2099-1");
        let b = VulnId::new("GHSA-xxxx-yyyy");
        let mut text = String::from("ids: ");
        VulnId::push_joined(&mut text, &[&a, &b, &a], ", ");
        assert_eq!(text, "ids: CVE-2099-1, GHSA-XXXX-YYYY, CVE-2099-1");
    }

    #[test]
    fn an_id_is_freed_with_its_last_holder() {
        let held = |text: &str| interner().read().unwrap().by_name.contains_key(text);
        let first = VulnId::new("CVE-2098-77777");
        let copy = first.clone();
        drop(first);
        assert!(held("CVE-2098-77777"), "a clone still holds it");
        drop(copy);
        assert!(!held("CVE-2098-77777"), "freed with its last holder");
        let again = VulnId::new("cve-2098-77777");
        assert_eq!(&*again.as_str(), "CVE-2098-77777");
    }
}
