//! The NCCL communicator on real GPUs: one rank per GPU, each on its own thread, joined through a
//! unique id passed as bytes (as a launcher passes it), checked against sums, concatenations and
//! copies computed on the host.
//!
//! These tests need a GPU (one is enough: a group of one rank still runs NCCL); where the CUDA
//! driver reports none they print why and return (CI has no GPU; it only compiles them).

#![cfg(feature = "cuda")]

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use cudarc::driver::CudaContext;
use fovea_model::tp::Communicator;
use fovea_model::tp::nccl::{NCCL_UNIQUE_ID_BYTES, NcclCommunicator, NcclUniqueId};

/// GPUs to run ranks on, or `None` (with the reason printed) where there is none.
fn gpu_count() -> Option<usize> {
    match CudaContext::device_count() {
        Ok(count) if count > 0 => Some(count as usize),
        Ok(_) => {
            eprintln!("skipping: the CUDA driver sees no GPU");
            None
        }
        Err(error) => {
            eprintln!("skipping: the CUDA driver is unusable ({error})");
            None
        }
    }
}

/// Runs `rank_body(communicator, device)` on one thread per GPU, all ranks of one NCCL group.
fn on_every_rank(world_size: usize, rank_body: impl Fn(&NcclCommunicator, &Device) + Sync) {
    let id_bytes = NcclUniqueId::new().expect("an NCCL unique id").to_bytes();
    std::thread::scope(|scope| {
        for rank in 0..world_size {
            let rank_body = &rank_body;
            scope.spawn(move || {
                let device = Device::new_cuda(rank).expect("a CUDA device");
                let id = NcclUniqueId::from_bytes(&id_bytes).expect("the id from its bytes");
                let comm =
                    NcclCommunicator::new(&device, rank, world_size, &id, Duration::from_secs(60))
                        .expect("the rank joins the group");
                rank_body(&comm, &device);
            });
        }
    });
}

fn filled(value: f32, shape: (usize, usize), device: &Device) -> Tensor {
    (Tensor::ones(shape, DType::F32, device).unwrap() * value as f64).unwrap()
}

#[test]
fn collectives_combine_every_ranks_tensor() {
    let Some(world) = gpu_count() else { return };
    on_every_rank(world, |comm, device| {
        let rank = comm.rank();
        assert_eq!(comm.world_size(), world);

        let summed = comm
            .all_reduce_sum(&filled(rank as f32 + 1.0, (3, 5), device))
            .unwrap();
        let expected = (world * (world + 1) / 2) as f32;
        assert_eq!(summed.to_vec2::<f32>().unwrap(), vec![vec![expected; 5]; 3]);

        for dtype in [DType::BF16, DType::F16] {
            let summed = comm
                .all_reduce_sum(&filled(1.0, (2, 4), device).to_dtype(dtype).unwrap())
                .unwrap();
            assert_eq!(summed.dtype(), dtype);
            assert_eq!(
                summed
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
                vec![vec![world as f32; 4]; 2]
            );
        }

        // Rank r contributes r + 1 columns of value r: gathered along dim 1 in rank order.
        let gathered = comm
            .all_gather(&filled(rank as f32, (2, rank + 1), device), 1)
            .unwrap();
        let row: Vec<f32> = (0..world).flat_map(|r| vec![r as f32; r + 1]).collect();
        assert_eq!(gathered.to_vec2::<f32>().unwrap(), vec![row.clone(), row]);

        let root = world - 1;
        let sent = comm
            .broadcast(&filled(rank as f32 * 10.0, (4, 2), device), root)
            .unwrap();
        assert_eq!(
            sent.to_vec2::<f32>().unwrap(),
            vec![vec![root as f32 * 10.0; 2]; 4]
        );

        comm.barrier().unwrap();
    });
}

#[test]
fn unsupported_inputs_are_errors_that_leave_the_group_usable() {
    let Some(_) = gpu_count() else { return };
    on_every_rank(1, |comm, device| {
        let f64_tensor = Tensor::zeros(4, DType::F64, device).unwrap();
        assert!(
            comm.all_reduce_sum(&f64_tensor)
                .unwrap_err()
                .to_string()
                .contains("f32, bf16 or f16")
        );
        let cpu_tensor = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(
            comm.all_reduce_sum(&cpu_tensor)
                .unwrap_err()
                .to_string()
                .contains("CUDA tensors")
        );
        assert!(comm.broadcast(&filled(1.0, (1, 1), device), 1).is_err());
        assert!(comm.all_gather(&filled(1.0, (1, 1), device), 2).is_err());
        assert!(
            comm.all_gather(&cpu_tensor, 0)
                .unwrap_err()
                .to_string()
                .contains("CUDA tensors")
        );
        comm.barrier().unwrap();
    });
}

#[test]
fn a_unique_id_round_trips_through_its_bytes_and_short_bytes_are_refused() {
    let Some(_) = gpu_count() else { return };
    let bytes = NcclUniqueId::new().unwrap().to_bytes();
    assert_eq!(NcclUniqueId::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    let error = NcclUniqueId::from_bytes(&bytes[..NCCL_UNIQUE_ID_BYTES - 1])
        .err()
        .unwrap();
    assert!(error.to_string().contains("128 bytes"), "{error}");
}
