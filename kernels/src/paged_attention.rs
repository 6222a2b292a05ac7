//! Causal attention of short query runs (decoding steps) straight over the blocks of a paged KV
//! cache, every sequence of a batch in one parallel pass.
//!
//! A decoding query does little arithmetic per key, so what it costs is reading the keys and
//! values: copying a sequence's blocks into a contiguous buffer first (what [`crate::attention`]
//! needs) would read them twice and write them once more. Here each task, one (sequence, KV head,
//! run of at most [`QUERY_RUN`] tokens), reads its blocks in place: scores of every query head
//! of the KV head's group against each key while the key is in registers, a softmax per query,
//! then the values weighted into per-query accumulators. Long prompt chunks do enough work per key
//! that the GEMM-based kernel over gathered keys is faster; the caller picks.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::attention::HeadGroups;
use crate::exp::exp_shifted_in_place;

/// Tokens of one sequence per task: a decoding step has 1; longer runs are split so that tasks
/// stay small and the scores of a task stay in L2.
pub const QUERY_RUN: usize = 16;

/// One layer's cache: keys and values `[blocks, kv_heads, block_size, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl PagedKv<'_> {
    /// Offset of `head`'s first slot in block `block`.
    fn head_start(&self, block: usize, head: usize) -> usize {
        (block * self.kv_heads + head) * self.block_size * self.head_dim
    }
}

/// One sequence's queries in the batch: rows `first_row..first_row + tokens` of the queries sit
/// at positions `past..past + tokens` of the sequence, whose blocks (indices into the cache, in
/// position order) already hold keys and values up to `past + tokens`.
#[derive(Debug, Clone, Copy)]
pub struct PagedSegment<'a> {
    pub blocks: &'a [usize],
    pub past: usize,
    pub tokens: usize,
    pub first_row: usize,
}

/// The queries of a batch: `[q_heads, rows, head_dim]`, and which KV head each query head reads.
#[derive(Debug, Clone, Copy)]
pub struct BatchQueries<'a> {
    pub q: &'a [f32],
    pub q_heads: usize,
    pub rows: usize,
    pub groups: HeadGroups,
}

/// One task: a KV head with the query heads that read it, and a run of one segment's tokens.
#[derive(Debug, Clone)]
struct Task {
    segment: usize,
    kv_head: usize,
    /// The query heads of `kv_head`'s group (consecutive: groups are runs of query heads).
    heads: Range<usize>,
    /// First token of the run, relative to the segment.
    first_token: usize,
    tokens: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal attention of every segment's queries over its cached keys and values: writes
/// `out[row][head]` (`[rows, q_heads · head_dim]`, the layout the output projection reads) for
/// every row of every segment; other rows are left as they are.
///
/// # Panics
/// If the groups do not map the query heads onto the cache's KV heads, a slice is shorter than the
/// shapes say, or a segment's blocks do not cover `past + tokens` positions.
pub fn paged_attention(
    queries: BatchQueries<'_>,
    kv: PagedKv<'_>,
    segments: &[PagedSegment<'_>],
    out: &mut [f32],
) {
    let BatchQueries {
        q,
        q_heads,
        rows,
        groups,
    } = queries;
    let d = kv.head_dim;
    assert!(
        groups.fits(q_heads, kv.kv_heads),
        "the head groups do not map q_heads onto kv_heads"
    );
    assert_eq!(
        q.len(),
        q_heads * rows * d,
        "q is not [q_heads, rows, head_dim]"
    );
    assert_eq!(
        out.len(),
        rows * q_heads * d,
        "out is not [rows, q_heads · head_dim]"
    );
    for segment in segments {
        assert!(
            segment.first_row + segment.tokens <= rows,
            "a segment's rows lie past the batch"
        );
        let needed = segment.past + segment.tokens;
        assert!(
            segment.blocks.len() * kv.block_size >= needed,
            "a segment's blocks do not cover its positions"
        );
        if let Some(&last) = segment.blocks.last() {
            assert!(
                kv.head_start(last + 1, 0) <= kv.keys.len().min(kv.values.len()),
                "a block lies past the cache"
            );
        }
    }
    let tasks = tasks(segments, &queries, kv.kv_heads);
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|task| {
            let segment = &segments[task.segment];
            SCORES.with_borrow_mut(|scores| run_task(&queries, &kv, segment, task, scores))
        })
        .collect();
    for (task, result) in tasks.iter().zip(results) {
        let segment = &segments[task.segment];
        for (head, head_rows) in task.heads.clone().zip(result.chunks_exact(task.tokens * d)) {
            for (i, row) in head_rows.chunks_exact(d).enumerate() {
                let at = ((segment.first_row + task.first_token + i) * q_heads + head) * d;
                out[at..at + d].copy_from_slice(row);
            }
        }
    }
}

/// Every (segment, KV head, run of at most `QUERY_RUN` tokens).
fn tasks(segments: &[PagedSegment<'_>], queries: &BatchQueries<'_>, kv_heads: usize) -> Vec<Task> {
    let heads: Vec<Range<usize>> = (0..kv_heads)
        .map(|kv_head| queries.groups.query_heads(kv_head, queries.q_heads))
        .collect();
    let mut tasks = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        for (kv_head, heads) in heads.iter().enumerate() {
            for first_token in (0..segment.tokens).step_by(QUERY_RUN) {
                let tokens = QUERY_RUN.min(segment.tokens - first_token);
                tasks.push(Task {
                    segment: index,
                    kv_head,
                    heads: heads.clone(),
                    first_token,
                    tokens,
                });
            }
        }
    }
    tasks
}

/// One task's output, `[heads, tokens, head_dim]`: with AVX-512 where the processor has it (the
/// same code compiled for it), else portable.
fn run_task(
    queries: &BatchQueries<'_>,
    kv: &PagedKv<'_>,
    segment: &PagedSegment<'_>,
    task: &Task,
    scores: &mut Vec<f32>,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected just above.
        return unsafe { run_task_avx512(queries, kv, segment, task, scores) };
    }
    attend::<PortableLanes>(queries, kv, segment, task, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn run_task_avx512(
    queries: &BatchQueries<'_>,
    kv: &PagedKv<'_>,
    segment: &PagedSegment<'_>,
    task: &Task,
    scores: &mut Vec<f32>,
) -> Vec<f32> {
    attend::<Avx512Lanes>(queries, kv, segment, task, scores)
}

/// Scores, softmax and weighted values of one task; query `r = head_index · tokens + i` is token
/// `first_token + i` of the segment under the task's `head_index`-th query head.
#[inline(always)]
fn attend<L: VectorOps>(
    queries: &BatchQueries<'_>,
    kv: &PagedKv<'_>,
    segment: &PagedSegment<'_>,
    task: &Task,
    scores: &mut Vec<f32>,
) -> Vec<f32> {
    let d = kv.head_dim;
    let first_position = segment.past + task.first_token;
    let keys = first_position + task.tokens;
    let query_rows: Vec<&[f32]> = task
        .heads
        .clone()
        .flat_map(|head| {
            (0..task.tokens).map(move |i| {
                let row = segment.first_row + task.first_token + i;
                &queries.q[(head * queries.rows + row) * d..][..d]
            })
        })
        .collect();
    // Query r sees keys 0..=its position; the task's last token sees the most.
    let visible: Vec<usize> = (0..query_rows.len())
        .map(|r| first_position + r % task.tokens + 1)
        .collect();
    let scale = 1.0 / (d as f32).sqrt();
    scores.clear();
    scores.resize(query_rows.len() * keys, 0.0);
    // Plain loops, not closures: a closure would compile apart from the AVX-512 entry point.
    // Blocks lie apart, so the prefetchers cannot run ahead of one: while a block's keys are
    // scored, the next block's keys and this block's values are fetched.
    let mut runs = cached_runs(kv, segment.blocks, task.kv_head, keys).peekable();
    while let Some((first, range)) = runs.next() {
        if let Some((_, next)) = runs.peek() {
            L::prefetch(&kv.keys[next.clone()]);
        }
        L::prefetch(&kv.values[range.clone()]);
        for (slot, key) in kv.keys[range].chunks_exact(d).enumerate() {
            for (r, query) in query_rows.iter().enumerate() {
                scores[r * keys + first + slot] = L::dot(query, key) * scale;
            }
        }
    }
    let mut inverse_sums = Vec::with_capacity(query_rows.len());
    for (r, row_scores) in scores.chunks_exact_mut(keys).enumerate() {
        let (seen, hidden) = row_scores.split_at_mut(visible[r]);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        inverse_sums.push(1.0 / exp_shifted_in_place(seen, max));
        hidden.fill(0.0);
    }
    let mut out = vec![0f32; query_rows.len() * d];
    for (first, range) in cached_runs(kv, segment.blocks, task.kv_head, keys) {
        let values = &kv.values[range];
        let filled = values.len() / d;
        for (r, out_row) in out.chunks_exact_mut(d).enumerate() {
            let weights = &scores[r * keys + first..][..filled];
            L::add_weighted_rows(out_row, values, weights);
        }
    }
    for (out_row, inverse) in out.chunks_exact_mut(d).zip(inverse_sums) {
        out_row.iter_mut().for_each(|x| *x *= inverse);
    }
    out
}

/// Where positions `0..positions` of `head` lie in a layer's keys (or values, laid out alike):
/// per block, its first position and the range of its filled rows.
#[inline(always)]
fn cached_runs<'a>(
    kv: &'a PagedKv<'_>,
    blocks: &'a [usize],
    head: usize,
    positions: usize,
) -> impl Iterator<Item = (usize, Range<usize>)> + 'a {
    let (block_size, d) = (kv.block_size, kv.head_dim);
    blocks[..positions.div_ceil(block_size)]
        .iter()
        .enumerate()
        .map(move |(index, &block)| {
            let first = index * block_size;
            let start = kv.head_start(block, head);
            (first, start..start + block_size.min(positions - first) * d)
        })
}

/// The two vector operations of the kernel.
trait VectorOps {
    /// `Σ a·b` over equal-length slices.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `acc += Σⱼ weights[j] · rows[j]`, `rows` holding `weights.len()` rows as long as `acc`.
    fn add_weighted_rows(acc: &mut [f32], rows: &[f32], weights: &[f32]);
    /// Asks for `values` to be brought into the cache (a hint; may do nothing).
    fn prefetch(values: &[f32]);
}

/// Plain Rust, for processors without AVX-512.
struct PortableLanes;

impl VectorOps for PortableLanes {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[inline(always)]
    fn add_weighted_rows(acc: &mut [f32], rows: &[f32], weights: &[f32]) {
        for (row, &weight) in rows.chunks_exact(acc.len()).zip(weights) {
            for (acc, value) in acc.iter_mut().zip(row) {
                *acc += weight * value;
            }
        }
    }

    #[inline(always)]
    fn prefetch(_values: &[f32]) {}
}

/// AVX-512 intrinsics, 16 lanes at a time. Only called from [`run_task_avx512`], into which they
/// inline with its CPU features.
#[cfg(target_arch = "x86_64")]
struct Avx512Lanes;

#[cfg(target_arch = "x86_64")]
impl VectorOps for Avx512Lanes {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let len = a.len().min(b.len());
        // SAFETY: AVX-512F is present (see the impl's comment); every load reads lanes
        // `i..i + 16` below `len`, or masks off those at or past it.
        unsafe {
            let mut acc = _mm512_setzero_ps();
            let mut i = 0;
            while i + 16 <= len {
                acc = _mm512_fmadd_ps(
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
                i += 16;
            }
            if i < len {
                let mask = (1u16 << (len - i)) - 1;
                let (x, y) = (
                    _mm512_maskz_loadu_ps(mask, a.as_ptr().add(i)),
                    _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)),
                );
                acc = _mm512_fmadd_ps(x, y, acc);
            }
            _mm512_reduce_add_ps(acc)
        }
    }

    #[inline(always)]
    fn add_weighted_rows(acc: &mut [f32], rows: &[f32], weights: &[f32]) {
        use std::arch::x86_64::*;
        let width = acc.len();
        assert!(
            rows.len() >= weights.len() * width,
            "fewer rows than weights"
        );
        // 64 lanes of `acc` at a time stay in 4 registers while every row adds into them.
        let mut lane = 0;
        // SAFETY: AVX-512F is present (see the impl's comment); the loads read lanes
        // `lane..lane + 64` of `acc` and of each of the `weights.len()` rows, all inside the
        // slices (asserted above), and the stores write the same lanes of `acc`.
        unsafe {
            while lane + 64 <= width {
                let at = acc.as_mut_ptr().add(lane);
                let mut sums: [__m512; 4] =
                    std::array::from_fn(|q| _mm512_loadu_ps(at.add(16 * q)));
                for (j, &weight) in weights.iter().enumerate() {
                    let weight = _mm512_set1_ps(weight);
                    let row = rows.as_ptr().add(j * width + lane);
                    for (q, sum) in sums.iter_mut().enumerate() {
                        *sum = _mm512_fmadd_ps(weight, _mm512_loadu_ps(row.add(16 * q)), *sum);
                    }
                }
                for (q, sum) in sums.into_iter().enumerate() {
                    _mm512_storeu_ps(at.add(16 * q), sum);
                }
                lane += 64;
            }
        }
        for (j, &weight) in weights.iter().enumerate() {
            for (acc, value) in acc[lane..]
                .iter_mut()
                .zip(&rows[j * width + lane..(j + 1) * width])
            {
                *acc += weight * value;
            }
        }
    }

    #[inline(always)]
    fn prefetch(values: &[f32]) {
        use std::arch::x86_64::*;
        for line in values.chunks(16) {
            // SAFETY: a prefetch reads nothing the program sees and cannot fault; the address is
            // inside `values`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionShape, Mask, attention};

    const BLOCK_SIZE: usize = 4;
    /// One 64-lane block of the vector code plus a tail of 20 (16 + 4).
    const HEAD_DIM: usize = 84;

    /// A cache of `blocks` blocks filled with pseudo-random keys and values.
    struct Cache {
        keys: Vec<f32>,
        values: Vec<f32>,
        kv_heads: usize,
    }

    impl Cache {
        fn new(blocks: usize, kv_heads: usize) -> Self {
            let len = blocks * kv_heads * BLOCK_SIZE * HEAD_DIM;
            Cache {
                keys: crate::test_values(len, 11, 4.0),
                values: crate::test_values(len, 12, 4.0),
                kv_heads,
            }
        }

        fn paged(&self) -> PagedKv<'_> {
            PagedKv {
                keys: &self.keys,
                values: &self.values,
                kv_heads: self.kv_heads,
                block_size: BLOCK_SIZE,
                head_dim: HEAD_DIM,
            }
        }

        /// Positions `0..len` of a sequence's keys or values, `[kv_heads, len, head_dim]`.
        fn contiguous(&self, cache: &[f32], blocks: &[usize], len: usize) -> Vec<f32> {
            let kv = self.paged();
            let mut out = Vec::new();
            for head in 0..self.kv_heads {
                for (_, range) in cached_runs(&kv, blocks, head, len) {
                    out.extend_from_slice(&cache[range]);
                }
            }
            out
        }
    }

    /// The segment's output rows by the contiguous kernel (itself checked against the definition).
    fn expected(cache: &Cache, queries: &BatchQueries<'_>, segment: &PagedSegment<'_>) -> Vec<f32> {
        let (d, q_heads) = (HEAD_DIM, queries.q_heads);
        let kv_len = segment.past + segment.tokens;
        let q: Vec<f32> = (0..q_heads)
            .flat_map(|h| {
                let start = (h * queries.rows + segment.first_row) * d;
                queries.q[start..start + segment.tokens * d].to_vec()
            })
            .collect();
        let shape = AttentionShape {
            q_heads,
            kv_heads: cache.kv_heads,
            groups: queries.groups,
            q_len: segment.tokens,
            kv_len,
            head_dim: d,
            kv_head_stride: kv_len * d,
            mask: Mask::Causal { past: segment.past },
        };
        let mut out = vec![0f32; q.len()];
        let keys = cache.contiguous(&cache.keys, segment.blocks, kv_len);
        let values = cache.contiguous(&cache.values, segment.blocks, kv_len);
        attention(&q, &keys, &values, shape, &mut out);
        // [q_heads, tokens, d] → [tokens, q_heads · d]
        (0..segment.tokens)
            .flat_map(|i| (0..q_heads).flat_map(move |h| (0..d).map(move |c| (h, i, c))))
            .map(|(h, i, c)| out[(h * segment.tokens + i) * d + c])
            .collect()
    }

    fn segment(blocks: &[usize], past: usize, tokens: usize, first_row: usize) -> PagedSegment<'_> {
        PagedSegment {
            blocks,
            past,
            tokens,
            first_row,
        }
    }

    fn check(q_heads: usize, groups: HeadGroups, cache: &Cache, segments: &[PagedSegment<'_>]) {
        let rows = segments
            .iter()
            .map(|s| s.first_row + s.tokens)
            .max()
            .unwrap_or(0);
        let q = crate::test_values(q_heads * rows * HEAD_DIM, 13, 4.0);
        let queries = BatchQueries {
            q: &q,
            q_heads,
            rows,
            groups,
        };
        let mut out = vec![f32::NAN; rows * q_heads * HEAD_DIM];
        paged_attention(queries, cache.paged(), segments, &mut out);
        for segment in segments {
            let width = q_heads * HEAD_DIM;
            let got = &out[segment.first_row * width..(segment.first_row + segment.tokens) * width];
            for (j, (got, expected)) in got
                .iter()
                .zip(expected(cache, &queries, segment))
                .enumerate()
            {
                assert!(
                    (got - expected).abs() < 1e-5,
                    "{segment:?}, value {j}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn decoding_sequences_read_their_scattered_blocks() {
        let cache = Cache::new(12, 2);
        // Positions ending mid-block, on a block boundary, and at the very first slot.
        let segments = [
            segment(&[7, 2, 9], 9, 1, 0),
            segment(&[0, 11], 7, 1, 1),
            segment(&[5], 0, 1, 2),
        ];
        check(6, HeadGroups::even(6, 2), &cache, &segments);
    }

    #[test]
    fn runs_longer_than_a_task_split_and_stay_causal() {
        let cache = Cache::new(20, 1);
        let blocks: Vec<usize> = (0..20).rev().collect();
        let long = QUERY_RUN * 2 + 3;
        let segments = [
            segment(&blocks[..12], 5, long, 2),
            segment(&blocks[12..], 3, 2, 0),
        ];
        check(3, HeadGroups::even(3, 1), &cache, &segments);
    }

    #[test]
    fn a_rank_s_query_heads_may_start_inside_a_group() {
        // Query heads 5..10 of a model with 4 per KV head read KV heads 1, 1, 1, 2, 2 (here 0, 0, 0, 1, 1).
        let cache = Cache::new(6, 2);
        let segments = [segment(&[3, 1, 4], 10, 2, 0)];
        check(
            5,
            HeadGroups {
                per_kv: 4,
                first_in_group: 1,
            },
            &cache,
            &segments,
        );
    }

    #[test]
    #[should_panic(expected = "do not cover")]
    fn blocks_short_of_the_positions_are_refused() {
        let cache = Cache::new(2, 1);
        let segments = [segment(&[0], BLOCK_SIZE, 1, 0)];
        check(1, HeadGroups::even(1, 1), &cache, &segments);
    }
}
