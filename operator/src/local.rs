//! Local mode: policies from a directory, reloaded on change, served by the webhook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use portcullis_webhook::decisions::Decisions;
use portcullis_webhook::policy::{PolicySet, ScannerKind};
use portcullis_webhook::scan::ScanService;
use portcullis_webhook::server::{self, AppState, Readiness};

use crate::cli::ServeArgs;
use crate::manifests::{self, Document, Loaded};
use crate::supervise::Essentials;
use crate::tls::serving_tls;

/// A policy directory and the documents last read from each file.
pub struct PolicyDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, CachedFile>,
}

struct CachedFile {
    stamp: (SystemTime, u64),
    documents: Vec<Document>,
}

impl PolicyDir {
    /// A directory (or single file) of manifests; nothing is read until [`Self::refresh`].
    pub fn new(root: PathBuf) -> Self {
        PolicyDir {
            root,
            files: BTreeMap::new(),
        }
    }

    /// Re-reads changed files. A file that no longer parses keeps its last good
    /// documents, so a half-saved edit never drops enforcement. Returns whether anything
    /// changed, and the files that failed to parse.
    pub fn refresh(&mut self) -> anyhow::Result<(bool, Vec<String>)> {
        let paths = manifests::find_files(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?;
        let mut changed =
            paths.len() != self.files.len() || !paths.iter().all(|p| self.files.contains_key(p));
        let mut errors = Vec::new();
        let mut files = BTreeMap::new();
        for path in paths {
            let stamp = stamp(&path);
            let cached = self.files.remove(&path);
            let file = match cached {
                Some(file) if stamp.is_some_and(|s| s == file.stamp) => file,
                cached => match manifests::read_file(&path) {
                    Ok(documents) => {
                        changed = true;
                        CachedFile {
                            stamp: stamp.unwrap_or((SystemTime::UNIX_EPOCH, 0)),
                            documents,
                        }
                    }
                    Err(error) => {
                        errors.push(error.to_string());
                        match cached {
                            Some(file) => file,
                            None => continue,
                        }
                    }
                },
            };
            files.insert(path, file);
        }
        self.files = files;
        Ok((changed, errors))
    }

    /// The first read: every file must parse, since none has good contents to keep
    /// (starting without a file's policies would enforce nothing it says, silently).
    pub fn read_all(&mut self) -> anyhow::Result<()> {
        let (_, errors) = self.refresh()?;
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// Compiles everything read; objects that do not validate are listed, and keep
    /// enforcing the version `previous` enforced, if any.
    pub fn build(&self, previous: Option<&PolicySet>) -> Loaded {
        manifests::build_set(self.files.values().flat_map(|f| &f.documents), previous)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn publish(
    dir: &PolicyDir,
    shared: &ArcSwap<PolicySet>,
    scans: &ScanService,
    parse_errors: &[String],
) {
    let loaded = dir.build(Some(&shared.load()));
    scans.credentials().replace(loaded.secrets);
    for error in parse_errors {
        tracing::error!("{error} (keeping its last good contents)");
    }
    for problem in &loaded.problems {
        tracing::error!("{problem}");
    }
    for integration in loaded.set.integrations() {
        if integration.scanner == ScannerKind::TrivyOperator {
            tracing::warn!(integration = %integration.name, "trivyOperator reads VulnerabilityReports from a cluster, which local mode has not: the images it covers count as unscanned");
        }
    }
    tracing::info!(
        policies = loaded.set.policies().len(),
        integrations = loaded.set.integrations().len(),
        secrets = scans.credentials().len(),
        left_out = loaded.problems.len(),
        "policy set loaded"
    );
    shared.store(Arc::new(loaded.set));
}

/// `portcullis serve`: runs until SIGTERM or Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut dir = PolicyDir::new(args.policies.clone());
    dir.read_all()?;
    let shared = Arc::new(ArcSwap::from_pointee(PolicySet::default()));
    let scans = ScanService::new(&args.scan.settings()).context("opening the scan cache")?;
    publish(&dir, &shared, &scans, &[]);

    // Bind before writing any generated certificate: a second instance that cannot
    // bind must not overwrite the CA of the one that is serving.
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "binding {} (is another instance serving there? see --listen)",
            args.listen
        )
    })?;
    let mut essentials = Essentials::default();
    let tls = serving_tls(&args.tls, args.listen, &mut essentials)?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(listen = %addr, policies = %args.policies.display(), "serving the admission webhook (local mode)");
    eprintln!("portcullis: serving https://{addr}/validate");

    let reload_shared = shared.clone();
    let reload_scans = scans.clone();
    essentials.spawn("the policy directory reload", async move {
        let mut tick = tokio::time::interval(args.reload_interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match dir.refresh() {
                Ok((true, errors)) => publish(&dir, &reload_shared, &reload_scans, &errors),
                Ok((false, _)) => {}
                Err(error) => tracing::error!("{error:#}; the current policies keep enforcing"),
            }
        }
    });
    let state = AppState {
        decisions: Decisions::new(args.decision_log),
        ..AppState::new(shared, scans.clone(), Readiness::ready_now())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(server::serve(listener, tls, server::router(state), async {
        let _ = stopped.await;
    }));
    let served = tokio::select! {
        () = crate::shutdown_signal() => {
            let _ = stop.send(());
            match server.await {
                Ok(result) => result.context("webhook server"),
                Err(error) => Err(error.into()),
            }
        }
        error = essentials.first_to_end() => {
            tracing::error!(%error, "an essential task ended: stopping");
            Err(error)
        }
        result = &mut server => match result {
            Ok(result) => result.context("webhook server"),
            Err(error) => Err(error.into()),
        },
    };
    essentials.abort();
    scans.cache().close();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: portcullis.dev/v1alpha1\nkind: ContainerPolicy\nmetadata: {name: NAME}\nspec: SPEC\n";

    fn policy(name: &str, spec: &str) -> String {
        POLICY.replace("NAME", name).replace("SPEC", spec)
    }

    fn names(dir: &PolicyDir) -> (Vec<String>, Vec<String>) {
        let loaded = dir.build(None);
        (
            loaded
                .set
                .policies()
                .iter()
                .map(|p| p.name.to_string())
                .collect(),
            loaded.problems,
        )
    }

    /// Writes with a distinct, increasing mtime, so (mtime, size) sees every edit even
    /// within one tick of a coarse filesystem clock.
    fn write(path: &Path, content: &str) {
        static TICK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        std::fs::write(path, content).unwrap();
        let tick = TICK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mtime = SystemTime::now() + Duration::from_secs(tick);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    #[test]
    fn invalid_policies_are_left_out_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            &tmp.path().join("a.yaml"),
            &policy("good", "{rules: {tags: {denyLatest: true}}}"),
        );
        write(
            &tmp.path().join("b.yml"),
            &policy(
                "bad",
                "{rules: {vulnerabilities: {maxCount: {critical: -1}}}}",
            ),
        );
        std::fs::create_dir(tmp.path().join("nested")).unwrap();
        write(
            &tmp.path().join("nested/c.json"),
            r#"{"apiVersion":"portcullis.dev/v1alpha1","kind":"ContainerPolicy","metadata":{"name":"good"},"spec":{}}"#,
        );
        write(&tmp.path().join("README.md"), "not a manifest");
        let mut dir = PolicyDir::new(tmp.path().to_owned());
        assert_eq!(dir.refresh().unwrap(), (true, vec![]));
        let (policies, problems) = names(&dir);
        assert_eq!(policies, ["good"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("b.yml#1: ContainerPolicy \"bad\": spec.rules.vulnerabilities.maxCount.critical: must be >= 0"), "{problems:?}");
        assert!(
            problems[1].contains("c.json#1: ContainerPolicy \"good\" is defined twice"),
            "{problems:?}"
        );
    }

    #[test]
    fn edits_reload_and_a_broken_file_keeps_its_last_good_contents() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("p.yaml");
        write(&file, &policy("one", "{}"));
        let mut dir = PolicyDir::new(tmp.path().to_owned());
        dir.refresh().unwrap();
        assert_eq!(dir.refresh().unwrap(), (false, vec![]), "nothing changed");

        write(
            &file,
            &format!("{}---\n{}", policy("one", "{}"), policy("two", "{}")),
        );
        assert!(dir.refresh().unwrap().0);
        assert_eq!(names(&dir).0, ["one", "two"]);

        write(&file, "apiVersion: [half-saved");
        let (_, errors) = dir.refresh().unwrap();
        assert!(errors[0].contains("p.yaml: invalid YAML"), "{errors:?}");
        assert_eq!(
            names(&dir).0,
            ["one", "two"],
            "the half-saved file still enforces what it held"
        );

        std::fs::remove_file(&file).unwrap();
        assert!(dir.refresh().unwrap().0);
        assert!(
            names(&dir).0.is_empty(),
            "a deleted file's policies are gone"
        );
    }

    /// At the start no file has good contents to keep: one that does not parse stops the
    /// start, naming it. A generated file of more than serde-saphyr's default budget of
    /// 1,024 documents reads whole (it once read as nothing, and the server served with
    /// no policies).
    #[test]
    fn the_first_read_needs_every_file_and_reads_large_ones_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let many: Vec<String> = (0..3000)
            .map(|i| policy(&format!("p{i}"), "{rules: {tags: {denyLatest: true}}}"))
            .collect();
        write(&tmp.path().join("many.yaml"), &many.join("---\n"));
        let mut dir = PolicyDir::new(tmp.path().to_owned());
        dir.read_all().unwrap();
        assert_eq!(dir.build(None).set.policies().len(), 3000);

        write(&tmp.path().join("broken.yaml"), "apiVersion: [half-saved");
        let mut dir = PolicyDir::new(tmp.path().to_owned());
        let error = dir.read_all().unwrap_err().to_string();
        assert!(error.contains("broken.yaml: invalid YAML"), "{error}");
    }

    /// As in a cluster: an object edited into something that does not compile keeps
    /// the version that enforced before; a new object that never compiled enforces
    /// nothing.
    #[test]
    fn an_invalid_edit_keeps_the_last_good_version() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("p.yaml");
        write(
            &file,
            &policy("guard", "{rules: {tags: {denyLatest: true}}}"),
        );
        let mut dir = PolicyDir::new(tmp.path().to_owned());
        dir.refresh().unwrap();
        let first = dir.build(None).set;
        assert_eq!(first.policies().len(), 1);

        write(
            &file,
            &format!(
                "{}---\n{}",
                policy(
                    "guard",
                    "{rules: {workload: {forbiddenCapabilities: [NET_RAWR]}}}"
                ),
                policy(
                    "fresh",
                    "{rules: {workload: {forbiddenCapabilities: [NET_RAWR]}}}"
                )
            ),
        );
        dir.refresh().unwrap();
        let loaded = dir.build(Some(&first));
        let names: Vec<&str> = loaded.set.policies().iter().map(|p| &*p.name).collect();
        assert_eq!(
            names,
            ["guard"],
            "the last good guard keeps enforcing; fresh never compiled"
        );
        assert!(
            loaded.problems[0].contains("ContainerPolicy \"guard\"")
                && loaded.problems[0].ends_with("its last good version keeps enforcing"),
            "{:?}",
            loaded.problems
        );
        assert!(
            loaded.problems[1].ends_with("nothing is enforced for it"),
            "{:?}",
            loaded.problems
        );
        assert!(Arc::ptr_eq(
            loaded.set.policy("guard").unwrap(),
            first.policy("guard").unwrap()
        ));
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let mut dir = PolicyDir::new(PathBuf::from("/nonexistent/portcullis-policies"));
        let error = format!("{:#}", dir.refresh().unwrap_err());
        assert!(
            error.contains("/nonexistent/portcullis-policies"),
            "{error}"
        );
    }
}
