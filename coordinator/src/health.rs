//! Whether a worker can take work, judged from its load reports (`Worker.WatchLoad`): a worker
//! is ready while it reports often, serves, and either is idle or makes forward progress. A
//! worker with running or queued requests whose step count has not risen for the hang limit is
//! hung; an idle one whose count rests is not.

use std::fmt;
use std::time::{Duration, Instant};

use fovea_proto::worker::v1::{WorkerLoad, WorkerState};

/// How long a worker may go quiet before it counts as not ready.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    /// Longest gap between load reports (they come every 100 ms).
    pub silence_limit: Duration,
    /// Longest time a worker with work may go without a forward pass.
    pub hang_limit: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            silence_limit: Duration::from_secs(3),
            hang_limit: Duration::from_secs(60),
        }
    }
}

/// What a worker's reports say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No report yet: it registered after it began serving, so it may take jobs.
    Unseen,
    /// Takes jobs.
    Ready,
    /// Finishing its jobs before stopping.
    Draining,
    /// Its load stream broke or could not be opened.
    Unreachable,
    /// Its reports stopped coming.
    Silent,
    /// It has work and makes no progress.
    Hung,
}

impl Condition {
    /// Whether a worker in this condition may be given jobs.
    pub fn takes_jobs(self) -> bool {
        matches!(self, Condition::Ready | Condition::Unseen)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Unseen => "has not reported its load yet",
            Condition::Ready => "ready",
            Condition::Draining => "draining",
            Condition::Unreachable => "unreachable",
            Condition::Silent => "stopped reporting its load",
            Condition::Hung => "hung (has work, makes no progress)",
        })
    }
}

/// One worker's reports so far.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    /// The last report and when it came.
    last: Option<(WorkerLoad, Instant)>,
    /// When the worker was last seen idle or with a higher step count.
    progressed_at: Option<Instant>,
    /// Whether its load stream is open.
    reachable: bool,
}

impl WorkerHealth {
    /// Takes in a report that came at `now`.
    pub fn observe(&mut self, load: WorkerLoad, now: Instant) {
        let stepped = self
            .last
            .as_ref()
            .is_none_or(|(previous, _)| load.steps_completed != previous.steps_completed);
        let idle = load.running_requests == 0 && load.queued_requests == 0;
        if stepped || idle {
            self.progressed_at = Some(now);
        }
        self.last = Some((load, now));
        self.reachable = true;
    }

    /// The load stream broke, or a job could not be sent: not ready until the next report.
    pub fn lost_contact(&mut self) {
        self.reachable = false;
    }

    /// When the last report came, if any.
    pub fn reported_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|(_, at)| *at)
    }

    /// The last report, if any.
    pub fn load(&self) -> Option<&WorkerLoad> {
        self.last.as_ref().map(|(load, _)| load)
    }

    /// The worker's condition at `now`.
    pub fn condition(&self, now: Instant, policy: &HealthPolicy) -> Condition {
        let Some((load, reported_at)) = &self.last else {
            return Condition::Unseen;
        };
        // Jobs waiting for a peer (their prompt's keys and values, or their image features) do
        // not need this worker's forward passes yet.
        let has_work = load.running_requests > load.awaiting_kv_requests
            || load.queued_requests > load.preparing_requests;
        let stalled_since = self.progressed_at.unwrap_or(*reported_at);
        if !self.reachable {
            Condition::Unreachable
        } else if now.saturating_duration_since(*reported_at) > policy.silence_limit {
            Condition::Silent
        } else if load.state() != WorkerState::Serving {
            Condition::Draining
        } else if has_work && now.saturating_duration_since(stalled_since) > policy.hang_limit {
            Condition::Hung
        } else {
            Condition::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        silence_limit: Duration::from_secs(3),
        hang_limit: Duration::from_secs(10),
    };

    fn load(running: u32, steps: u64) -> WorkerLoad {
        WorkerLoad {
            state: WorkerState::Serving as i32,
            running_requests: running,
            steps_completed: steps,
            ..Default::default()
        }
    }

    /// Feeds one report a second for `seconds` seconds from `start`; returns the last time.
    fn report_every_second(
        health: &mut WorkerHealth,
        start: Instant,
        seconds: u64,
        report: impl Fn(u64) -> WorkerLoad,
    ) -> Instant {
        let mut now = start;
        for second in 0..seconds {
            now = start + Duration::from_secs(second);
            health.observe(report(second), now);
        }
        now
    }

    #[test]
    fn an_idle_worker_whose_steps_rest_stays_ready() {
        let mut health = WorkerHealth::default();
        let now = report_every_second(&mut health, Instant::now(), 30, |_| load(0, 7));
        assert_eq!(health.condition(now, &POLICY), Condition::Ready);
    }

    #[test]
    fn a_busy_worker_whose_steps_rise_stays_ready() {
        let mut health = WorkerHealth::default();
        let now = report_every_second(&mut health, Instant::now(), 30, |second| load(4, second));
        assert_eq!(health.condition(now, &POLICY), Condition::Ready);
    }

    #[test]
    fn a_worker_with_work_and_no_progress_is_hung_after_the_limit() {
        let mut health = WorkerHealth::default();
        let start = Instant::now();
        let now = report_every_second(&mut health, start, 8, |_| load(2, 100));
        assert_eq!(
            health.condition(now, &POLICY),
            Condition::Ready,
            "within the hang limit"
        );
        let now = report_every_second(&mut health, start, 12, |_| load(2, 100));
        assert_eq!(health.condition(now, &POLICY), Condition::Hung);
        health.observe(load(2, 101), now + Duration::from_secs(1));
        assert_eq!(
            health.condition(now + Duration::from_secs(1), &POLICY),
            Condition::Ready,
            "progress again"
        );
    }

    #[test]
    fn a_worker_whose_jobs_wait_for_peers_is_not_hung() {
        let waiting_for_peers = |_| WorkerLoad {
            running_requests: 2,
            awaiting_kv_requests: 2,
            queued_requests: 1,
            preparing_requests: 1,
            ..load(0, 100)
        };
        let mut health = WorkerHealth::default();
        let now = report_every_second(&mut health, Instant::now(), 30, waiting_for_peers);
        assert_eq!(health.condition(now, &POLICY), Condition::Ready);
        // One queued job that is not waiting for its features: work, and no progress.
        let mut health = WorkerHealth::default();
        let now = report_every_second(&mut health, Instant::now(), 30, |second| WorkerLoad {
            queued_requests: 2,
            ..waiting_for_peers(second)
        });
        assert_eq!(health.condition(now, &POLICY), Condition::Hung);
    }

    #[test]
    fn silence_unreachability_and_draining_make_a_worker_not_ready() {
        let mut health = WorkerHealth::default();
        let start = Instant::now();
        assert_eq!(health.condition(start, &POLICY), Condition::Unseen);
        health.observe(load(0, 0), start);
        assert_eq!(
            health.condition(start + Duration::from_secs(4), &POLICY),
            Condition::Silent
        );
        health.lost_contact();
        assert_eq!(health.condition(start, &POLICY), Condition::Unreachable);
        let draining = WorkerLoad {
            state: WorkerState::Draining as i32,
            ..load(1, 5)
        };
        health.observe(draining, start);
        assert_eq!(health.condition(start, &POLICY), Condition::Draining);
    }
}
