//! End-to-end tests live in `tests/`; they run against the cluster in `KUBECONFIG`
//! and are skipped with a message when none is given.
