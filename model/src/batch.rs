//! The layout of a flat batch of tokens: consecutive runs, each continuing one sequence.
//!
//! A continuous-batching engine runs prefill chunks and decoding steps of many sequences in one
//! forward pass: projections see one `[T, hidden]` matrix, while attention and positions stay per
//! sequence. [`BatchLayout`] is what tells them apart.

/// One sequence's run of new tokens in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSegment {
    /// Tokens of this sequence already in the KV cache (the position of the run's first token).
    pub past: usize,
    /// New tokens of this sequence in the batch (at least 1).
    pub tokens: usize,
}

/// The segments of a batch, in the order their tokens are concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    segments: Vec<BatchSegment>,
}

impl BatchLayout {
    /// A batch of `segments`, each with at least one token.
    pub fn new(segments: Vec<BatchSegment>) -> Self {
        debug_assert!(segments.iter().all(|s| s.tokens > 0), "empty batch segment");
        BatchLayout { segments }
    }

    /// One sequence's `tokens` new tokens after `past` cached ones.
    pub fn single(past: usize, tokens: usize) -> Self {
        Self::new(vec![BatchSegment { past, tokens }])
    }

    /// The segments, in batch order.
    pub fn segments(&self) -> &[BatchSegment] {
        &self.segments
    }

    /// Tokens in the whole batch.
    pub fn total_tokens(&self) -> usize {
        self.segments.iter().map(|s| s.tokens).sum()
    }

    /// The position of every token of the batch, in batch order.
    pub fn positions(&self) -> Vec<u32> {
        self.segments
            .iter()
            .flat_map(|s| (s.past..s.past + s.tokens).map(|p| p as u32))
            .collect()
    }

    /// The index in the batch of each segment's last token (where its next-token logits come from).
    pub fn last_token_indices(&self) -> Vec<u32> {
        self.segments
            .iter()
            .scan(0usize, |end, s| {
                *end += s.tokens;
                Some((*end - 1) as u32)
            })
            .collect()
    }

    /// Each segment with the index of its first token in the batch.
    pub fn with_offsets(&self) -> impl Iterator<Item = (usize, BatchSegment)> + '_ {
        self.segments.iter().scan(0usize, |start, s| {
            let offset = *start;
            *start += s.tokens;
            Some((offset, *s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_offsets_and_last_tokens_follow_the_segments() {
        let layout = BatchLayout::new(vec![
            BatchSegment { past: 5, tokens: 1 },
            BatchSegment { past: 0, tokens: 3 },
            BatchSegment { past: 2, tokens: 2 },
        ]);
        assert_eq!(layout.total_tokens(), 6);
        assert_eq!(layout.positions(), vec![5, 0, 1, 2, 2, 3]);
        assert_eq!(layout.last_token_indices(), vec![0, 3, 5]);
        let offsets: Vec<usize> = layout.with_offsets().map(|(o, _)| o).collect();
        assert_eq!(offsets, vec![0, 1, 4]);
    }
}
