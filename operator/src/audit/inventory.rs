//! The running-image inventory (`GET /inventory` on the metrics port, `portcullis
//! inventory`): every image the live objects use, with its digest, what the cache says
//! of its scan, and the objects and namespaces using it.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_webhook::image::ImageRef;
use portcullis_webhook::policy::PolicySet;
use portcullis_webhook::scan::{ScanResults, ScanService, ScanStatus};
use serde::{Deserialize, Serialize};

use super::Ledger;

/// Most objects listed per image (the count says how many there are).
const MAX_OBJECTS: usize = 100;

/// The inventory.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Live objects audited.
    pub objects: usize,
    /// Every image in use, by reference.
    pub images: Vec<InUse>,
}

/// One image in use.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InUse {
    /// The normalized reference (`docker.io/library/nginx:1.25`), or as written when it
    /// does not parse.
    pub image: String,
    /// The digest it runs at, when known (pinned, reported by the kubelet, or resolved).
    pub digest: Option<String>,
    /// Findings by severity, critical first, when a scan result is cached.
    pub vulnerabilities: Option<Severities>,
    /// Why there is no scan result, when there is none.
    pub unscanned: Option<String>,
    /// Objects using it (`Pod team-a/api`), at most 100.
    pub objects: Vec<String>,
    /// How many objects use it.
    pub object_count: usize,
    /// Namespaces it runs in.
    pub namespaces: BTreeSet<String>,
}

/// Counts of findings by severity.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Severities {
    /// Critical.
    pub critical: usize,
    /// High.
    pub high: usize,
    /// Medium.
    pub medium: usize,
    /// Low.
    pub low: usize,
    /// Unknown.
    pub unknown: usize,
}

/// Builds the inventory from the ledger and what the scan cache holds (no calls).
pub fn build(ledger: &Ledger, set: &PolicySet, scans: &ScanService) -> Inventory {
    let mut by_image: BTreeMap<String, (Option<ImageRef>, Option<String>, InUse)> = BTreeMap::new();
    for (key, entry) in ledger.entries() {
        for used in entry.running.spec.images() {
            let parsed = ImageRef::parse(used.image).ok();
            let name = parsed
                .as_ref()
                .map_or_else(|| used.image.to_owned(), ToString::to_string);
            let running = entry
                .running
                .digests
                .iter()
                .find(|(container, _)| container == used.name)
                .map(|(_, digest)| digest.clone());
            let (_, digest, in_use) = by_image.entry(name.clone()).or_insert_with(|| {
                (
                    parsed,
                    None,
                    InUse {
                        image: name,
                        digest: None,
                        vulnerabilities: None,
                        unscanned: None,
                        objects: Vec::new(),
                        object_count: 0,
                        namespaces: BTreeSet::new(),
                    },
                )
            });
            if digest.is_none() {
                *digest = running;
            }
            let object = key.to_string();
            if in_use.objects.last() != Some(&object) {
                in_use.object_count += 1;
                if in_use.objects.len() < MAX_OBJECTS {
                    in_use.objects.push(object);
                }
            }
            in_use.namespaces.insert(key.namespace.clone());
        }
    }
    let images = by_image
        .into_values()
        .map(|(parsed, running, mut in_use)| {
            if let Some(image) = parsed {
                in_use.digest = running.or_else(|| scans.remembered_digest(set, &image));
                let (answers, _) = scans.remembered(set, &[&image]);
                match answers.lookup(&image) {
                    ScanStatus::Found(report) => {
                        let [critical, high, medium, low, unknown] = report.severity_profile();
                        in_use.vulnerabilities = Some(Severities {
                            critical,
                            high,
                            medium,
                            low,
                            unknown,
                        });
                    }
                    ScanStatus::Unavailable(reason) => in_use.unscanned = Some(reason.into_owned()),
                }
            } else {
                in_use.unscanned = Some("the reference does not parse".to_owned());
            }
            in_use
        })
        .collect();
    Inventory {
        objects: ledger.len(),
        images,
    }
}

/// The inventory as a table, one image per line.
pub fn table(inventory: &Inventory) -> String {
    let mut rows = vec![[
        "IMAGE".to_owned(),
        "DIGEST".to_owned(),
        "CRIT/HIGH/MED/LOW/UNK".to_owned(),
        "OBJECTS".to_owned(),
        "NAMESPACES".to_owned(),
    ]];
    for i in &inventory.images {
        let digest = i
            .digest
            .as_deref()
            .map_or("-".to_owned(), |d| d.chars().take(19).collect());
        let scan = match &i.vulnerabilities {
            Some(s) => format!(
                "{}/{}/{}/{}/{}",
                s.critical, s.high, s.medium, s.low, s.unknown
            ),
            None => "unscanned".to_owned(),
        };
        let namespaces: Vec<&str> = i.namespaces.iter().map(String::as_str).collect();
        rows.push([
            i.image.clone(),
            digest,
            scan,
            i.object_count.to_string(),
            namespaces.join(","),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ledger::tests::{no_latest, pod, set};

    #[test]
    fn images_are_listed_once_with_their_objects_namespaces_and_why_unscanned() {
        let scans = ScanService::in_memory();
        let policies = set(&[("no-latest", no_latest("Warn"))]);
        let mut ledger = Ledger::default();
        for (ns, name, image) in [
            ("a", "p1", "nginx"),
            ("b", "p2", "docker.io/library/nginx:latest"),
            ("a", "p3", "redis:7"),
        ] {
            let (key, running) = pod(ns, name, image);
            ledger.upsert(key, running, &policies, &scans);
        }
        let inventory = build(&ledger, &policies, &scans);
        assert_eq!(inventory.objects, 3);
        let images: Vec<&str> = inventory.images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(
            images,
            [
                "docker.io/library/nginx:latest",
                "docker.io/library/redis:7"
            ]
        );
        let nginx = &inventory.images[0];
        assert_eq!(nginx.objects, ["Pod a/p1", "Pod b/p2"]);
        assert_eq!(nginx.object_count, 2);
        assert_eq!(
            nginx.namespaces,
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        assert!(
            nginx
                .unscanned
                .as_deref()
                .unwrap()
                .contains("no RegistryIntegration"),
            "{nginx:?}"
        );
        let table = table(&inventory);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("IMAGE"), "{table}");
        assert!(
            lines[1].starts_with("docker.io/library/nginx:latest") && lines[1].ends_with("a,b"),
            "{table}"
        );
    }
}
