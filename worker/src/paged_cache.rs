//! [`KvCache`] over the block pool for one forward pass of a flat batch of many sequences.
//!
//! For each layer, every segment's new keys and values are written into its sequence's blocks.
//! Then the short segments (decoding steps, up to [`QUERY_RUN`] tokens) all attend in one
//! parallel pass that reads their blocks in place ([`paged_attention`]): a decoding query's cost
//! is reading its keys and values, so it must read them once. A longer segment (a prompt chunk)
//! has its sequence's keys and values gathered into a contiguous scratch buffer for the GEMM-based
//! kernel, [`attention`], where that copy is small next to the arithmetic.

use candle_core::{DType, Device, Tensor};
use fovea_kernels::attention::{AttentionShape, Mask, attention};
use fovea_kernels::paged_attention::{BatchQueries, PagedSegment, QUERY_RUN, paged_attention};
use fovea_model::batch::BatchLayout;
use fovea_model::cpu::with_f32_slice;
use fovea_model::kv_cache::{AttentionHeads, KvCache};
use fovea_model::{ModelError, Result};

use crate::block_allocator::KvBlockTable;
use crate::kv_pool::{KvBlockPool, NewRows};

/// The paged cache as one forward pass sees it: the pool, and the block table of each segment's
/// sequence, in batch order.
pub struct PagedKvCache<'a> {
    pool: &'a mut KvBlockPool,
    tables: Vec<&'a KvBlockTable>,
    /// Each table's block indices, for the in-place kernel.
    block_indices: Vec<Vec<usize>>,
    /// Reused per segment: one sequence's gathered keys and values, its queries, its output.
    keys: Vec<f32>,
    values: Vec<f32>,
    queries: Vec<f32>,
    output: Vec<f32>,
}

impl<'a> PagedKvCache<'a> {
    /// A cache for batches whose segment `i` continues the sequence whose blocks are `tables[i]`.
    /// Each table must already cover its segment's positions.
    pub fn new(pool: &'a mut KvBlockPool, tables: Vec<&'a KvBlockTable>) -> Self {
        let block_indices = tables
            .iter()
            .map(|table| table.blocks().iter().map(|block| block.index()).collect())
            .collect();
        PagedKvCache {
            pool,
            tables,
            block_indices,
            keys: Vec::new(),
            values: Vec::new(),
            queries: Vec::new(),
            output: Vec::new(),
        }
    }

    /// Checks that `batch` and the tensors fit the pool and the tables.
    fn check(&self, layer: usize, batch: &BatchLayout, heads: AttentionHeads) -> Result<()> {
        let AttentionHeads { q, k, v, groups } = heads;
        let shape = self.pool.shape();
        let (q_heads, q_rows, q_dim) = q.dims3()?;
        let expected_kv = (shape.kv_heads, batch.total_tokens(), shape.head_dim);
        if layer >= shape.layers
            || k.dims3()? != expected_kv
            || v.dims3()? != expected_kv
            || (q_rows, q_dim) != (expected_kv.1, expected_kv.2)
            || !groups.fits(q_heads, shape.kv_heads)
        {
            return Err(ModelError::BadInput(format!(
                "layer {layer} with q {:?}, k {:?}, v {:?} does not fit a pool of {} layers, {} KV heads of {} dims, batch of {} tokens",
                q.dims(),
                k.dims(),
                v.dims(),
                shape.layers,
                shape.kv_heads,
                shape.head_dim,
                batch.total_tokens()
            )));
        }
        if batch.segments().len() != self.tables.len() {
            return Err(ModelError::BadInput(format!(
                "batch of {} segments but {} block tables",
                batch.segments().len(),
                self.tables.len()
            )));
        }
        for (index, (segment, table)) in batch.segments().iter().zip(&self.tables).enumerate() {
            let capacity = table.blocks().len() * shape.block_size;
            if segment.past + segment.tokens > capacity {
                return Err(ModelError::BadInput(format!(
                    "segment {index} reaches position {} but its blocks hold {capacity}",
                    segment.past + segment.tokens
                )));
            }
        }
        Ok(())
    }
}

/// `t` as packed f32 in host memory, where the pool lives (a model on a GPU hands its tensors over).
fn packed_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .contiguous()?)
}

/// Whether a segment of `tokens` attends with the in-place kernel rather than over gathered keys.
fn reads_in_place(tokens: usize) -> bool {
    tokens <= QUERY_RUN
}

impl KvCache for PagedKvCache<'_> {
    fn attend(
        &mut self,
        layer: usize,
        batch: &BatchLayout,
        heads: AttentionHeads,
    ) -> Result<Tensor> {
        self.check(layer, batch, heads)?;
        let AttentionHeads { q, k, v, groups } = heads;
        let (q_heads, rows, head_dim) = q.dims3()?;
        let kv_heads = self.pool.shape().kv_heads;
        let (q32, k32, v32) = (packed_f32(q)?, packed_f32(k)?, packed_f32(v)?);
        let kv_len = kv_heads * rows * head_dim;

        with_f32_slice(&k32, |keys| {
            with_f32_slice(&v32, |values| {
                for ((first_row, segment), table) in batch.with_offsets().zip(&self.tables) {
                    let rows = NewRows {
                        batch_rows: rows,
                        first_row,
                        first_position: segment.past,
                        count: segment.tokens,
                    };
                    self.pool
                        .write(layer, table, rows, &keys[..kv_len], &values[..kv_len]);
                }
            })
        })??;

        let mut out = vec![0f32; rows * q_heads * head_dim];
        with_f32_slice(&q32, |queries| {
            let short: Vec<PagedSegment<'_>> = batch
                .with_offsets()
                .zip(&self.block_indices)
                .filter(|((_, segment), _)| reads_in_place(segment.tokens))
                .map(|((first_row, segment), blocks)| PagedSegment {
                    blocks,
                    past: segment.past,
                    tokens: segment.tokens,
                    first_row,
                })
                .collect();
            let queries = BatchQueries {
                q: queries,
                q_heads,
                rows,
                groups,
            };
            paged_attention(queries, self.pool.layer(layer), &short, &mut out);
            for ((first_row, segment), table) in batch.with_offsets().zip(&self.tables) {
                if reads_in_place(segment.tokens) {
                    continue;
                }
                let (tokens, kv_len) = (segment.tokens, segment.past + segment.tokens);
                self.pool
                    .gather(layer, table, kv_len, &mut self.keys, &mut self.values);
                self.queries.clear();
                for head in 0..q_heads {
                    let start = (head * rows + first_row) * head_dim;
                    self.queries
                        .extend_from_slice(&queries.q[start..start + tokens * head_dim]);
                }
                self.output.resize(q_heads * tokens * head_dim, 0.0);
                let shape = AttentionShape {
                    q_heads,
                    kv_heads,
                    groups,
                    q_len: tokens,
                    kv_len,
                    head_dim,
                    kv_head_stride: kv_len * head_dim,
                    mask: Mask::Causal { past: segment.past },
                };
                attention(
                    &self.queries,
                    &self.keys,
                    &self.values,
                    shape,
                    &mut self.output,
                );
                // [q_heads, tokens, D] → rows of [T, q_heads · D].
                for (head, head_out) in self.output.chunks_exact(tokens * head_dim).enumerate() {
                    for (i, row) in head_out.chunks_exact(head_dim).enumerate() {
                        let at = ((first_row + i) * q_heads + head) * head_dim;
                        out[at..at + head_dim].copy_from_slice(row);
                    }
                }
            }
        })?;
        let out = Tensor::from_vec(out, (rows, q_heads * head_dim), &Device::Cpu)?;
        Ok(out.to_dtype(q.dtype())?.to_device(q.device())?)
    }
}
