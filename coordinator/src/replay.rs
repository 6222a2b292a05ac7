//! A request's worker events, continued across a lost decode worker: when the stream breaks
//! before its final event, the prompt plus the tokens generated so far is sent again (split as
//! any request) to another worker, which goes on from there, so the client's stream continues
//! with no token repeated or missing. A job the worker gives back (a decode worker that had to
//! preempt it and cannot recompute it) is sent again the same way, the worker not excluded.
//! Replays are bounded by the split policy's retries.

use fovea_proto::v1::FinishReason;
use fovea_proto::worker::v1::{GenerateEvent, GenerateFinished, GenerateJob, generate_event};
use std::sync::Arc;

use tonic::Status;

use crate::split::{JobSplitter, Started};

/// The events of one request, from whichever worker runs it now.
pub struct ResumableEvents {
    splitter: Arc<JobSplitter>,
    job: GenerateJob,
    current: Started,
    /// Tokens received from every attempt so far.
    generated: Vec<u32>,
    /// Workers that failed this request.
    excluded: Vec<String>,
    replays_left: usize,
}

impl ResumableEvents {
    /// Starts `job` on `splitter`'s workers; a lost worker is replaced as often as the split
    /// policy retries jobs.
    pub async fn start(splitter: Arc<JobSplitter>, job: GenerateJob) -> Result<Self, Status> {
        let replays = splitter.policy().job_retries;
        let mut excluded = Vec::new();
        let current = splitter.start(&job, &mut excluded).await?;
        Ok(ResumableEvents {
            splitter,
            job,
            current,
            generated: Vec::new(),
            excluded,
            replays_left: replays,
        })
    }

    /// The next event: `Ok(None)` never comes before a final event; an error means the request
    /// could not be continued.
    pub async fn message(&mut self) -> Result<Option<GenerateEvent>, Status> {
        loop {
            // Why the job must go on elsewhere, and whether the worker failed it.
            let (lost, worker_failed) = match self.current.events.message().await {
                Ok(Some(event)) => match &event.event {
                    Some(generate_event::Event::Tokens(tokens)) => {
                        self.current.worker.prompt_computed();
                        self.generated.extend(&tokens.token_ids);
                        return Ok(Some(event));
                    }
                    Some(generate_event::Event::Finished(finished))
                        if finished.given_back && self.replays_left > 0 =>
                    {
                        (Status::aborted(finished.error.clone()), false)
                    }
                    _ => return Ok(Some(event)),
                },
                Ok(None) => (
                    Status::unavailable("the worker ended the stream without a final event"),
                    true,
                ),
                Err(status) => (status, true),
            };
            if let Some(finished) = self.finished_already() {
                return Ok(Some(finished));
            }
            if self.replays_left == 0 {
                return Err(lost);
            }
            self.replays_left -= 1;
            let address = self.current.worker.address().to_string();
            tracing::warn!(
                request_id = %self.job.request_id,
                worker = %address,
                generated = self.generated.len(),
                "the worker lost or gave back the request mid-stream, replaying: {}",
                lost.message()
            );
            if worker_failed {
                self.excluded.push(address);
            }
            self.current = self
                .splitter
                .start(&self.replay_job(), &mut self.excluded)
                .await?;
        }
    }

    /// The job that continues after the tokens generated so far.
    fn replay_job(&self) -> GenerateJob {
        let mut job = self.job.clone();
        job.prompt_token_ids.extend(&self.generated);
        job.max_tokens -= self.generated.len() as u32;
        job.replayed_tokens = self.generated.len() as u32;
        job.kv_transfer_id.clear();
        job
    }

    /// The final event of a job whose worker was lost after its last token: a stop token, or
    /// `max_tokens` of them.
    fn finished_already(&self) -> Option<GenerateEvent> {
        let last = *self.generated.last()?;
        let stop_tokens = self
            .job
            .sampling
            .as_ref()
            .map_or(&[][..], |s| &s.stop_token_ids[..]);
        let reason = if stop_tokens.contains(&last) {
            FinishReason::Stop
        } else if self.generated.len() >= self.job.max_tokens as usize {
            FinishReason::Length
        } else {
            return None;
        };
        Some(GenerateEvent {
            event: Some(generate_event::Event::Finished(GenerateFinished {
                finish_reason: reason as i32,
                completion_tokens: self.generated.len() as u32,
                ..Default::default()
            })),
        })
    }

    /// Aborts the job on the worker running it now, freeing its blocks at once.
    pub async fn abort(&mut self) {
        self.current.worker.abort(&self.job.request_id).await;
    }
}
