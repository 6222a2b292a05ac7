//! Messages survive the wire: what is encoded decodes to the same value, presence and order kept.

mod common;

use common::{IM_END_ID, canned_stream, multimodal_request};
use fovea_proto::v1::{
    GenerateRequest, GenerateResponse, SamplingParams, Segment, content_part::Part,
    generate_response::Event,
};
use fovea_proto::worker::v1 as worker;
use prost::Message;
use prost::bytes::Bytes;

#[test]
fn multimodal_request_round_trips_with_parts_in_order() {
    let request = multimodal_request();
    let decoded = GenerateRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, request);

    let last_turn: Vec<&Part> = decoded.messages[2]
        .content
        .iter()
        .filter_map(|part| part.part.as_ref())
        .collect();
    assert!(matches!(last_turn[0], Part::Text(text) if text == "and"));
    assert!(matches!(last_turn[1], Part::Image(image) if image.data.starts_with(b"\xff\xd8")));
    assert!(matches!(last_turn[2], Part::Text(text) if text == "?"));
}

#[test]
fn optional_sampling_fields_keep_an_explicit_zero_apart_from_unset() {
    let explicit = multimodal_request().sampling.unwrap();
    let decoded = SamplingParams::decode(explicit.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.seed, Some(0));

    let defaults = SamplingParams::decode(&[][..]).unwrap();
    assert_eq!(
        (defaults.seed, defaults.logprobs, defaults.max_tokens),
        (None, None, None)
    );
    assert_eq!((defaults.top_p, defaults.temperature), (None, 0.0));
}

#[test]
fn response_stream_round_trips_and_ends_with_one_final() {
    let stream = canned_stream("req-42");
    let mut wire = Vec::new();
    for response in &stream {
        response.encode_length_delimited(&mut wire).unwrap();
    }
    let mut rest = wire.as_slice();
    let mut decoded = Vec::new();
    while !rest.is_empty() {
        decoded.push(GenerateResponse::decode_length_delimited(&mut rest).unwrap());
    }
    assert_eq!(decoded, stream);

    let (last, deltas) = decoded.split_last().unwrap();
    let Some(Event::Final(last)) = &last.event else {
        panic!("stream must end with the final")
    };
    assert_eq!(last.request_id, "req-42");
    let deltas: Vec<_> = deltas
        .iter()
        .map(|response| match &response.event {
            Some(Event::Delta(delta)) => delta,
            other => panic!("only deltas before the final, got {other:?}"),
        })
        .collect();
    let text_of = |segment: Segment| -> String {
        deltas
            .iter()
            .filter(|d| d.segment() == segment)
            .map(|d| d.text.as_str())
            .collect()
    };
    assert_eq!(text_of(Segment::Reasoning), "Two charts</think>");
    assert_eq!(text_of(Segment::Answer), "Both bars.");
    let token_ids: Vec<u32> = deltas.iter().flat_map(|d| d.token_ids.clone()).collect();
    assert_eq!(
        token_ids.len() as u32,
        last.usage.unwrap().completion_tokens
    );
    assert_eq!(token_ids.last(), Some(&IM_END_ID));
}

#[test]
fn worker_job_with_an_image_reference_round_trips() {
    let job = worker::GenerateJob {
        request_id: "req-42".to_owned(),
        prompt_token_ids: [vec![100_264, 882], vec![100_256; 4], vec![100_265]].concat(),
        images: vec![worker::ImageInput {
            image: Some(worker::EncodedImage {
                content_hash: Bytes::from_static(&[7; 16]),
                data: Bytes::new(),
                mime_type: String::new(),
                grid_rows: 2,
                grid_cols: 2,
            }),
            start: 2,
            vision_worker: String::new(),
        }],
        sampling: Some(worker::SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 1234,
            stop_token_ids: vec![IM_END_ID],
            logprobs: None,
        }),
        max_tokens: 32,
        kv_transfer_id: String::new(),
        replayed_tokens: 3,
    };
    let decoded = worker::GenerateJob::decode(job.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, job);
    assert!(decoded.images[0].image.as_ref().unwrap().data.is_empty());
}

#[test]
fn kv_chunk_round_trips_its_key_and_value_bytes() {
    let chunk = worker::KvTransferMessage {
        part: Some(worker::kv_transfer_message::Part::Chunk(worker::KvChunk {
            layer: 3,
            first_block: 8,
            block_count: 2,
            keys: Bytes::from(vec![1u8; 2 * 4 * 16 * 8 * 2]),
            values: Bytes::from(vec![2u8; 2 * 4 * 16 * 8 * 2]),
        })),
    };
    let decoded = worker::KvTransferMessage::decode(chunk.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, chunk);
}
