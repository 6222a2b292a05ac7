//! Bounded retry with exponential backoff for calls refused before any token arrived.

use std::future::Future;
use std::time::Duration;

use crate::error::ClientError;

/// How often and how patiently a call refused with UNAVAILABLE is repeated. Only the opening of
/// a call is retried, never a stream that has delivered tokens.
///
/// ```
/// use std::time::Duration;
/// let patient = fovea_client::RetryPolicy { max_attempts: 10, ..Default::default() };
/// assert_eq!(patient.initial_backoff, Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retrying.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, waiting 0.2, 0.4, 0.8 and 1.6 s between them.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Runs `call` until it succeeds, fails with an error that is not retryable, or the attempts
    /// are used up; returns the last result.
    pub(crate) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if error.is_retryable() && attempt < self.max_attempts => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}
