//! `fill`: a policy directory with N ContainerPolicies and one RegistryIntegration, and a
//! scan cache with M results, for the memory benchmark and loads with cached results.
//! The load bodies' images (`ghcr.io/acme/svc-{n}:1.{n}.0`, up to 20 containers)
//! resolve to cached digests, so a run against it decides from the cache without any
//! backend.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use portcullis_crds::Severity;
use portcullis_webhook::scan::cache::Budget;
use portcullis_webhook::scan::{Finding, ScanReport, ScanService, ScanSettings, VulnId};

/// The integration the cached results belong to.
const INTEGRATION: &str = "bench-scans";
/// Distinct vulnerability IDs findings are drawn from.
const CVE_POOL: usize = 3000;

#[derive(clap::Args)]
pub struct FillArgs {
    /// Output directory: `policies/` and `cache/` are written under it.
    #[arg(long)]
    out: PathBuf,
    /// ContainerPolicies to write.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Scan results to cache (0–20 findings each, 10 on average).
    #[arg(long, default_value_t = 100_000)]
    scans: usize,
}

/// Writes the policies and fills the cache.
pub fn fill(args: &FillArgs) -> anyhow::Result<()> {
    let policies = args.out.join("policies");
    std::fs::create_dir_all(&policies).context("creating the policy directory")?;
    std::fs::write(policies.join("policies.yaml"), policy_yaml(args.policies))
        .context("writing policies.yaml")?;
    let service = ScanService::new(&ScanSettings {
        cache_dir: Some(args.out.join("cache")),
        budget: Budget {
            entries: args.scans * 2,
            bytes: u64::MAX / 2,
        },
        ..ScanSettings::default()
    })?;
    let scanned_at = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..args.scans {
        let repository = format!("ghcr.io/acme/svc-{}", i % 5000);
        let digest = format!("sha256:{i:064x}");
        let findings = (0..i % 21).map(|k| Finding {
            id: VulnId::new(&format!("CVE-2024-{}", (i * 7 + k * 13) % CVE_POOL)),
            severity: Severity::DESCENDING[(i + k) % 5],
            fixable: (i + k) % 3 == 0,
        });
        let report = ScanReport::new(Some(scanned_at), findings);
        service.remember_scan(INTEGRATION, &repository, &digest, report);
        if i < 20 {
            service.remember_digest(INTEGRATION, &repository, &format!("1.{i}.0"), &digest);
        }
    }
    // A million results take longer to commit than a stop's grace period.
    anyhow::ensure!(
        service.cache().close_within(Duration::from_secs(600)),
        "the scan cache was not written within 10 minutes"
    );
    println!(
        "wrote {} policies to {} and {} scan results to {}",
        args.policies,
        policies.display(),
        args.scans,
        args.out.join("cache").display()
    );
    Ok(())
}

/// A multi-tenant cluster: ten cluster-wide policies (registries, tags, workload
/// security, two vulnerability policies on `ghcr.io/acme/**`), and the rest scoped to
/// one team's namespaces each (`team-N-*`), with the same mix of rules on that team's
/// images. A Pod in `team-a` is checked against all of them and matched by the ten.
fn policy_yaml(count: usize) -> String {
    let mut yaml = format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: RegistryIntegration\nmetadata: {{name: {INTEGRATION}}}\n\
         spec: {{registries: [\"ghcr.io/acme/**\"], scanner: {{http: {{url: \"https://scans.bench.invalid/reports\"}}}}}}\n"
    );
    for i in 0..count {
        let (scope, images) = if i < 10 {
            (String::new(), "ghcr.io/acme/**".to_owned())
        } else {
            (
                format!("namespaces: [\"team-{i}-*\"], "),
                format!("ghcr.io/team-{i}/**"),
            )
        };
        let rules = match i % 5 {
            0 => "vulnerabilities: {maxCount: {critical: 0, high: 10}, maxScanAge: 168h, unscanned: Warn}".to_owned(),
            1 => format!("registries: {{allow: [\"{images}\", \"registry.k8s.io/**\"]}}"),
            2 => "tags: {denyLatest: true}".to_owned(),
            3 => "workload: {denyPrivileged: true, denyPrivilegeEscalation: true}".to_owned(),
            _ => "vulnerabilities: {maxSeverity: Critical, deny: [\"CVE-2021-44228\"], unscanned: Warn}".to_owned(),
        };
        let action = if i % 5 == 0 { "Warn" } else { "Block" };
        let _ = write!(
            yaml,
            "---\napiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {{name: policy-{i:04}}}\n\
             spec: {{action: {action}, match: {{{scope}images: [\"{images}\"]}}, rules: {{{rules}}}}}\n"
        );
    }
    yaml
}
