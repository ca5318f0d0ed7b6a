//! A circuit breaker per integration: after repeated failures, requests stop waiting on
//! a dead backend; one background probe per cool-down tests whether it is back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
const THRESHOLD: u32 = 3;
/// First cool-down; it doubles after each failed probe, up to [`MAX_COOL_DOWN`].
const COOL_DOWN: Duration = Duration::from_secs(5);
const MAX_COOL_DOWN: Duration = Duration::from_secs(120);

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call the backend and wait for it.
    Call,
    /// Call it in the background (the probe), without waiting.
    Probe,
    /// Do not call; the backend is considered down.
    Reject,
}

/// The breaker's state.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    cool_down: Duration,
    /// When the probe in flight was let through; a probe that never reports back (its
    /// lookup found the cache already fresh) stops counting after a cool-down.
    probing: Option<Instant>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                cool_down: COOL_DOWN,
                probing: None,
            }),
        }
    }
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether (and how) to call the backend at `now`.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.state();
        let probing = state
            .probing
            .is_some_and(|since| now < since + state.cool_down);
        match state.open_until {
            None => Admit::Call,
            Some(until) if now < until || probing => Admit::Reject,
            Some(_) => {
                state.probing = Some(now);
                Admit::Probe
            }
        }
    }

    /// Whether the breaker is open (calls are not waited on).
    pub fn is_open(&self) -> bool {
        self.state().open_until.is_some()
    }

    /// The backend answered: close.
    pub fn success(&self) {
        let mut state = self.state();
        state.failures = 0;
        state.open_until = None;
        state.cool_down = COOL_DOWN;
        state.probing = None;
    }

    /// The backend failed at `now`: count, and open (or stay open longer).
    pub fn failure(&self, now: Instant) {
        let mut state = self.state();
        state.failures = state.failures.saturating_add(1);
        if state.probing.take().is_some() {
            state.cool_down = (state.cool_down * 2).min(MAX_COOL_DOWN);
            state.open_until = Some(now + state.cool_down);
        } else if state.failures >= THRESHOLD && state.open_until.is_none() {
            state.open_until = Some(now + state.cool_down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_probes_once_per_cool_down() {
        let breaker = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..THRESHOLD - 1 {
            breaker.failure(t0);
            assert_eq!(breaker.admit(t0), Admit::Call);
        }
        breaker.failure(t0);
        assert_eq!(breaker.admit(t0), Admit::Reject);
        let later = t0 + COOL_DOWN;
        assert_eq!(breaker.admit(later), Admit::Probe);
        assert_eq!(breaker.admit(later), Admit::Reject, "one probe at a time");
        assert_eq!(
            breaker.admit(later + COOL_DOWN),
            Admit::Probe,
            "a probe that never reported back stops counting"
        );
        breaker.failure(later);
        assert_eq!(
            breaker.admit(later + COOL_DOWN),
            Admit::Reject,
            "the cool-down doubled"
        );
        assert_eq!(breaker.admit(later + COOL_DOWN * 2), Admit::Probe);
        breaker.success();
        assert_eq!(breaker.admit(later + COOL_DOWN * 2), Admit::Call);
        assert!(!breaker.is_open());
    }
}
