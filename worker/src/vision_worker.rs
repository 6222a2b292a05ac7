//! The vision role's `Worker` service (`fovea.worker.v1.Worker`): what lets a coordinator watch a
//! vision worker as it watches the others. `Describe` says what the worker is and `WatchLoad`
//! reports its encoder's load (images waiting and being encoded, their patches, batches answered
//! as the forward-progress count), so a coordinator routes images to the least busy ready vision
//! worker and sets aside one that is hung (images waiting, no batch answered for its hang limit)
//! or silent. A vision worker runs no generation jobs: `Generate` is FAILED_PRECONDITION and
//! `Abort` finds nothing.

use std::sync::Arc;

use fovea_proto::worker::v1::worker_server::Worker;
use fovea_proto::worker::v1::{
    AbortRequest, AbortResponse, DescribeRequest, GenerateEvent, GenerateJob, WatchLoadRequest,
    WorkerInfo, WorkerLoad,
};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::load_report::{LoadReports, load_reports};
use crate::vision_batcher::EncoderLoad;
use crate::vision_service::VisionEncoderService;

/// The `Worker` service of a vision worker.
pub struct VisionWorkerService {
    encoder: VisionEncoderService,
    info: WorkerInfo,
    /// Set when the worker starts draining.
    draining: Arc<watch::Sender<bool>>,
}

impl VisionWorkerService {
    /// Reports the load of `encoder`, describing the worker as `info`.
    pub fn new(encoder: VisionEncoderService, info: WorkerInfo) -> Self {
        VisionWorkerService {
            encoder,
            info,
            draining: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The switch that starts draining: once it says `true`, load reports say DRAINING and end
    /// when no image is left to encode.
    pub fn draining(&self) -> Arc<watch::Sender<bool>> {
        Arc::clone(&self.draining)
    }
}

/// An encoder's load in the terms of a worker's: images waiting for the encoder are queued
/// requests, those of the batch being encoded running ones, the patches of both still to encode
/// queued tokens (a patch becomes one decoder token), and batches answered the steps; there is no
/// KV cache.
fn vision_load(load: EncoderLoad) -> WorkerLoad {
    WorkerLoad {
        running_requests: load.running_images as u32,
        queued_requests: load.queued_images as u32,
        queued_tokens: load.pending_patches as u64,
        steps_completed: load.batches,
        ..WorkerLoad::default()
    }
}

#[tonic::async_trait]
impl Worker for VisionWorkerService {
    type GenerateStream = ReceiverStream<Result<GenerateEvent, Status>>;
    type WatchLoadStream = LoadReports;

    async fn generate(
        &self,
        _request: Request<GenerateJob>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::failed_precondition(
            "this is a vision worker: it takes VisionEncoder.EncodeImage jobs, not Generate",
        ))
    }

    async fn abort(
        &self,
        _request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        Ok(Response::new(AbortResponse {
            found: false,
            freed_kv_blocks: 0,
        }))
    }

    async fn describe(
        &self,
        _request: Request<DescribeRequest>,
    ) -> Result<Response<WorkerInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn watch_load(
        &self,
        request: Request<WatchLoadRequest>,
    ) -> Result<Response<Self::WatchLoadStream>, Status> {
        let encoder = self.encoder.clone();
        let reports = load_reports(request.into_inner(), self.draining.subscribe(), move || {
            vision_load(encoder.load())
        })?;
        Ok(Response::new(reports))
    }
}
