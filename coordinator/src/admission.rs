//! Admission control: a bounded number of requests and prompt tokens in flight. A request that
//! does not fit is refused at once with RESOURCE_EXHAUSTED instead of queueing without bound;
//! an admitted one holds an [`AdmissionPermit`] that gives its share back when dropped, whatever
//! way the request ends.

use std::sync::{Arc, Mutex, PoisonError};

use tonic::Status;

/// How much work may be in flight at once.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_requests: usize,
    pub max_prompt_tokens: usize,
}

#[derive(Debug, Default)]
struct InFlight {
    requests: usize,
    prompt_tokens: usize,
}

/// The in-flight counters, shared by every request handler.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: AdmissionLimits,
    in_flight: Arc<Mutex<InFlight>>,
}

/// One admitted request's share of the limits.
#[derive(Debug)]
pub struct AdmissionPermit {
    in_flight: Arc<Mutex<InFlight>>,
    prompt_tokens: usize,
}

impl Admission {
    /// Counters starting empty.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            in_flight: Arc::default(),
        }
    }

    /// Admits a request of `prompt_tokens`, or says why not.
    pub fn try_admit(&self, prompt_tokens: usize) -> Result<AdmissionPermit, Status> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if in_flight.requests >= self.limits.max_requests {
            return Err(Status::resource_exhausted(format!(
                "the server is at its limit of {} requests in flight; retry later",
                self.limits.max_requests
            )));
        }
        // A single request larger than the whole budget is still admitted when nothing else runs,
        // so no valid request is refused forever.
        if in_flight.requests > 0
            && in_flight.prompt_tokens + prompt_tokens > self.limits.max_prompt_tokens
        {
            return Err(Status::resource_exhausted(format!(
                "the server is at its limit of {} queued prompt tokens; retry later",
                self.limits.max_prompt_tokens
            )));
        }
        in_flight.requests += 1;
        in_flight.prompt_tokens += prompt_tokens;
        Ok(AdmissionPermit {
            in_flight: Arc::clone(&self.in_flight),
            prompt_tokens,
        })
    }

    /// Requests in flight now.
    pub fn in_flight_requests(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.requests -= 1;
        in_flight.prompt_tokens -= self.prompt_tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_admission_refuses_with_resource_exhausted_until_a_permit_drops() {
        let admission = Admission::new(AdmissionLimits {
            max_requests: 2,
            max_prompt_tokens: 1000,
        });
        let first = admission.try_admit(10).unwrap();
        let _second = admission.try_admit(10).unwrap();
        let refused = admission.try_admit(10).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(first);
        assert!(admission.try_admit(10).is_ok());
    }

    #[test]
    fn prompt_token_budget_is_enforced_but_never_starves_a_lone_request() {
        let admission = Admission::new(AdmissionLimits {
            max_requests: 10,
            max_prompt_tokens: 100,
        });
        let big = admission
            .try_admit(500)
            .expect("alone, even an oversized request runs");
        assert_eq!(
            admission.try_admit(1).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        drop(big);
        assert_eq!(admission.in_flight_requests(), 0);
    }
}
