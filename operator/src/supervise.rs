//! Tasks the process cannot do without. Each runs for the life of the process; if one
//! ends (a panic, or a stream that should never end), the process stops with an error
//! that names it, rather than serving from an input that no longer updates.

use std::future::Future;

use tokio::task::JoinHandle;

/// The essential tasks of a process.
#[derive(Default)]
pub struct Essentials {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Essentials {
    /// Spawns `task`, named `name` in the error if it ever ends.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Completes when the first task ends, with an error naming it; never, without
    /// tasks.
    pub async fn first_to_end(&mut self) -> anyhow::Error {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        let ended = futures::future::select_all(
            self.tasks
                .iter_mut()
                .map(|(name, handle)| Box::pin(async move { (*name, handle.await) })),
        );
        let ((name, result), _, _) = ended.await;
        match result {
            Ok(()) => anyhow::anyhow!("{name} ended"),
            Err(error) => anyhow::anyhow!("{name} ended: {error}"),
        }
    }

    /// Stops every task.
    pub fn abort(&self) {
        for (_, handle) in &self.tasks {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named() {
        let mut essentials = Essentials::default();
        essentials.spawn("a watch that never ends", std::future::pending());
        essentials.spawn("a watch that panics", async {
            tokio::task::yield_now().await;
            panic!("the stream broke");
        });
        let error = essentials.first_to_end().await.to_string();
        assert!(error.starts_with("a watch that panics ended"), "{error}");
        essentials.abort();
    }
}
