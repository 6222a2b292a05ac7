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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_success() {
        let calls = Cell::new(0);
        let result = quick(5)
            .run(|| {
                calls.set(calls.get() + 1);
                let attempt = calls.get();
                async move {
                    if attempt < 3 {
                        Err(ClientError::Unavailable("starting".into()))
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts_with_the_last_error() {
        let calls = Cell::new(0);
        let result: Result<(), _> = quick(4)
            .run(|| {
                calls.set(calls.get() + 1);
                async { Err(ClientError::Unavailable("down".into())) }
            })
            .await;
        assert!(matches!(result, Err(ClientError::Unavailable(_))));
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = Cell::new(0);
        let result: Result<(), _> = quick(5)
            .run(|| {
                calls.set(calls.get() + 1);
                async { Err(ClientError::ResourceExhausted("queue full".into())) }
            })
            .await;
        assert!(matches!(result, Err(ClientError::ResourceExhausted(_))));
        assert_eq!(calls.get(), 1);
    }
}
