//! Fetching an image's features from a vision worker (`VisionEncoder.EncodeImage`): checks the
//! header against what the job planned and this decoder's size, and reassembles the rows in order.

use candle_core::{Device, Tensor};
use fovea_proto::worker::v1::vision_encoder_client::VisionEncoderClient;
use fovea_proto::worker::v1::{DType as WireDType, EncodedImage, VisionJob, image_features_chunk};
use tonic::Status;

use crate::job::JobContext;
use crate::peers::{peer_failed, peer_status};

/// Largest EncodeImage message accepted.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The features `[patches, hidden]` (f32) of `image`, as the vision worker at `address` encodes
/// them or has them cached.
pub async fn fetch_features(
    context: &JobContext,
    address: &str,
    request_id: &str,
    image: EncodedImage,
) -> Result<Tensor, Status> {
    let planned = (image.grid_rows, image.grid_cols);
    let mut client = VisionEncoderClient::new(context.peers.channel(address)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let job = VisionJob {
        request_id: request_id.to_string(),
        image: Some(image),
    };
    let what = "encoding an image";
    let mut stream = client
        .encode_image(job)
        .await
        .map_err(|status| peer_status(address, what, &status))?
        .into_inner();
    let broken = |why: String| peer_failed(address, format!("{what} at {address} failed: {why}"));
    let header = match stream.message().await {
        Ok(Some(message)) => match message.part {
            Some(image_features_chunk::Part::Header(header)) => header,
            _ => return Err(broken("the stream did not start with a header".into())),
        },
        Ok(None) => return Err(broken("the stream ended before the header".into())),
        Err(status) => return Err(peer_status(address, what, &status)),
    };
    let hidden = context.hidden_size;
    if header.hidden_size as usize != hidden || header.dtype() != WireDType::DtypeF32 {
        return Err(Status::failed_precondition(format!(
            "the vision worker at {address} sends rows of {} {:?} values, this decoder takes {hidden} f32",
            header.hidden_size,
            header.dtype()
        )));
    }
    if planned != (0, 0) && planned != (header.grid_rows, header.grid_cols) {
        return Err(Status::invalid_argument(format!(
            "the vision worker at {address} encoded a {}x{} grid, the job planned {}x{}",
            header.grid_rows, header.grid_cols, planned.0, planned.1
        )));
    }
    let patches = (header.grid_rows * header.grid_cols) as usize;
    let mut values = Vec::with_capacity(patches * hidden);
    loop {
        let rows = match stream.message().await {
            Ok(Some(message)) => match message.part {
                Some(image_features_chunk::Part::Rows(rows)) => rows,
                _ => return Err(broken("a second header in the stream".into())),
            },
            Ok(None) => break,
            Err(status) => return Err(peer_status(address, what, &status)),
        };
        let received = values.len() / hidden;
        let count = rows.row_count as usize;
        if rows.first_row as usize != received
            || rows.data.len() != count * hidden * 4
            || received + count > patches
        {
            return Err(broken(format!(
                "rows {}..+{count} ({} bytes) do not continue the {received} of {patches} rows received",
                rows.first_row,
                rows.data.len()
            )));
        }
        values.extend(
            rows.data
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        );
    }
    if values.len() != patches * hidden {
        return Err(broken(format!(
            "the stream ended after {} of {patches} rows",
            values.len() / hidden
        )));
    }
    Tensor::from_vec(values, (patches, hidden), &Device::Cpu)
        .map_err(|e| Status::internal(format!("features of the image from {address}: {e}")))
}
