//! A loopback TCP balancer that behaves like a Service's endpoints: new connections go
//! only to ready backends, round robin; a connection, once made, stays with its backend.
//! Readiness is probed as the kubelet does: `/readyz` every 200 ms, ready after one
//! answer of 200, unready after three probes in a row that got none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::replica::ready;

/// How often each backend's readiness is probed.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Failed probes in a row that make a ready backend unready (the kubelet's default).
const FAILURE_THRESHOLD: usize = 3;

struct Backend {
    addr: SocketAddr,
    ready: AtomicBool,
    connections: AtomicUsize,
}

/// A running balancer; stops when dropped.
pub struct Balancer {
    /// Where it listens.
    pub addr: SocketAddr,
    backends: Arc<Vec<Backend>>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Balancer {
    /// Listens on 127.0.0.1 and balances over `backends`.
    pub async fn start(backends: &[SocketAddr]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backends: Arc<Vec<Backend>> = Arc::new(
            backends
                .iter()
                .map(|&addr| Backend {
                    addr,
                    ready: AtomicBool::new(false),
                    connections: AtomicUsize::new(0),
                })
                .collect(),
        );
        let refused = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for index in 0..backends.len() {
            let backends = backends.clone();
            tasks.push(tokio::spawn(async move {
                let backend = &backends[index];
                let mut failed = 0;
                loop {
                    failed = if ready(backend.addr).await {
                        0
                    } else {
                        failed + 1
                    };
                    // A backend starts unready; one good answer makes it ready.
                    let now_ready = failed == 0
                        || (backend.ready.load(Ordering::Acquire) && failed < FAILURE_THRESHOLD);
                    backend.ready.store(now_ready, Ordering::Release);
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            }));
        }
        let (shared, refused_count) = (backends.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((inbound, _)) = listener.accept().await {
                let ready: Vec<&Backend> = shared
                    .iter()
                    .filter(|b| b.ready.load(Ordering::Acquire))
                    .collect();
                let Some(backend) = ready.get(next % ready.len().max(1)) else {
                    refused_count.fetch_add(1, Ordering::Relaxed);
                    continue; // no ready endpoint: the connection is dropped
                };
                next = next.wrapping_add(1);
                backend.connections.fetch_add(1, Ordering::Relaxed);
                let target = backend.addr;
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }));
        Balancer {
            addr,
            backends,
            refused,
            tasks,
        }
    }

    /// Connections handed to each backend, in the order given, and connections refused
    /// because none was ready.
    pub fn connections(&self) -> (Vec<usize>, usize) {
        (
            self.backends
                .iter()
                .map(|b| b.connections.load(Ordering::Relaxed))
                .collect(),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
