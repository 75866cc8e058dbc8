//! A shard: many packed rows in one safetensors file that Python reads without this project
//! (`safetensors.numpy.load_file`), plus a JSON manifest. Tokens of all rows are stored
//! flat, with boundaries:
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `input_ids` | I32 | [tokens] | token ids, row after row, no padding |
//! | `loss_mask` | U8 | [tokens] | 1 on completion tokens (the loss is taken there) |
//! | `position_ids` | I32 | [tokens] | restart at 0 for every sequence |
//! | `cu_seqlens` | I32 | [sequences + 1] | sequence start offsets into the flat tokens |
//! | `row_offsets` | I32 | [rows + 1] | row start offsets into the flat tokens |
//!
//! Row r is `input_ids[row_offsets[r]:row_offsets[r+1]]`; pad it to `row_capacity` if the
//! trainer wants fixed shapes. Attention must not cross `cu_seqlens` boundaries.

use crate::ffd::Row;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const FORMAT: &str = "distillery-shard-v1";

/// One rendered, tokenized sample.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedSequence {
    pub question_id: String,
    pub input_ids: Vec<u32>,
    /// 1 where the token is part of the completion.
    pub loss_mask: Vec<u8>,
}

/// Facts about how the shard was made, recorded in its manifest.
#[derive(Debug, Clone)]
pub struct ShardOrigin {
    pub style: String,
    pub shard_index: i64,
    pub row_capacity: usize,
    pub tokenizer_sha256: String,
    pub template_sha256: String,
}

/// The JSON manifest written beside the shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFileManifest {
    pub format: String,
    pub style: String,
    pub shard_index: i64,
    pub rows: usize,
    pub sequences: usize,
    pub tokens: usize,
    pub completion_tokens: usize,
    pub row_capacity: usize,
    pub fill_ratio: f64,
    pub row_fill: Vec<f64>,
    pub tokenizer_sha256: String,
    pub template_sha256: String,
    pub question_ids: Vec<String>,
    /// sha256 of the safetensors file.
    pub sha256: String,
    pub bytes: usize,
}

fn le_bytes_i32(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises rows into a shard file and its manifest.
pub fn build_shard(
    rows: &[Row<TokenizedSequence>],
    origin: &ShardOrigin,
) -> anyhow::Result<(Vec<u8>, ShardFileManifest)> {
    let (mut input_ids, mut loss_mask, mut position_ids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cu_seqlens, mut row_offsets, mut question_ids) = (vec![0i32], vec![0i32], Vec::new());
    for row in rows {
        anyhow::ensure!(
            row.tokens <= origin.row_capacity,
            "a row of {} tokens exceeds the capacity {}",
            row.tokens,
            origin.row_capacity
        );
        for sequence in &row.sequences {
            let s = &sequence.item;
            anyhow::ensure!(
                s.input_ids.len() == s.loss_mask.len(),
                "sequence of {}: ids and mask differ in length",
                s.question_id
            );
            input_ids.extend(s.input_ids.iter().map(|&t| t as i32));
            loss_mask.extend_from_slice(&s.loss_mask);
            position_ids.extend(0..s.input_ids.len() as i32);
            cu_seqlens.push(input_ids.len() as i32);
            question_ids.push(s.question_id.clone());
        }
        row_offsets.push(input_ids.len() as i32);
    }
    let tensors = [
        ("input_ids", Dtype::I32, le_bytes_i32(&input_ids)),
        ("loss_mask", Dtype::U8, loss_mask.clone()),
        ("position_ids", Dtype::I32, le_bytes_i32(&position_ids)),
        ("cu_seqlens", Dtype::I32, le_bytes_i32(&cu_seqlens)),
        ("row_offsets", Dtype::I32, le_bytes_i32(&row_offsets)),
    ];
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, bytes)| {
            let elements = bytes.len() / if *dtype == Dtype::U8 { 1 } else { 4 };
            Ok((*name, TensorView::new(*dtype, vec![elements], bytes)?))
        })
        .collect::<anyhow::Result<_>>()?;
    // One metadata key: safetensors writes a HashMap in random order, and the shard's bytes
    // (hence its checksum and id) must not depend on it.
    let about = serde_json::json!({"format": FORMAT, "style": origin.style, "row_capacity": origin.row_capacity});
    let metadata = HashMap::from([("distillery".to_string(), about.to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
    let tokens = input_ids.len();
    let manifest = ShardFileManifest {
        format: FORMAT.into(),
        style: origin.style.clone(),
        shard_index: origin.shard_index,
        rows: rows.len(),
        sequences: question_ids.len(),
        tokens,
        completion_tokens: loss_mask.iter().filter(|&&m| m == 1).count(),
        row_capacity: origin.row_capacity,
        fill_ratio: crate::ffd::fill_ratio(rows.iter().map(|r| r.tokens), origin.row_capacity),
        row_fill: rows.iter().map(|r| r.tokens as f64 / origin.row_capacity as f64).collect(),
        tokenizer_sha256: origin.tokenizer_sha256.clone(),
        template_sha256: origin.template_sha256.clone(),
        question_ids,
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes: bytes.len(),
    };
    Ok((bytes, manifest))
}

/// A shard read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardTensors {
    pub input_ids: Vec<i32>,
    pub loss_mask: Vec<u8>,
    pub position_ids: Vec<i32>,
    pub cu_seqlens: Vec<i32>,
    pub row_offsets: Vec<i32>,
}

/// Reads a shard file, checking it against the manifest's checksum when one is given.
pub fn read_shard(bytes: &[u8], expected_sha256: Option<&str>) -> anyhow::Result<ShardTensors> {
    if let Some(expected) = expected_sha256 {
        let actual = hex::encode(Sha256::digest(bytes));
        anyhow::ensure!(actual == expected, "shard checksum {actual} does not match the manifest's {expected}");
    }
    let file = SafeTensors::deserialize(bytes)?;
    let i32s = |name: &str| -> anyhow::Result<Vec<i32>> {
        let view = file.tensor(name)?;
        anyhow::ensure!(view.dtype() == Dtype::I32, "{name} is {:?}, not I32", view.dtype());
        Ok(view.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let shard = ShardTensors {
        input_ids: i32s("input_ids")?,
        loss_mask: file.tensor("loss_mask")?.data().to_vec(),
        position_ids: i32s("position_ids")?,
        cu_seqlens: i32s("cu_seqlens")?,
        row_offsets: i32s("row_offsets")?,
    };
    shard.check()?;
    Ok(shard)
}

impl ShardTensors {
    /// The shape every reader relies on when it slices rows and sequences out of the flat
    /// arrays: without this a well-formed safetensors file with inconsistent offsets (a
    /// damaged shard, or one whose manifest was rewritten to match) made slicing panic.
    pub fn check(&self) -> anyhow::Result<()> {
        let n = self.input_ids.len();
        anyhow::ensure!(
            self.loss_mask.len() == n && self.position_ids.len() == n,
            "input_ids, loss_mask and position_ids differ in length ({n}, {}, {})",
            self.loss_mask.len(),
            self.position_ids.len()
        );
        anyhow::ensure!(self.input_ids.iter().all(|&t| t >= 0), "input_ids holds a negative token id");
        for (name, offsets) in [("cu_seqlens", &self.cu_seqlens), ("row_offsets", &self.row_offsets)] {
            anyhow::ensure!(
                offsets.first() == Some(&0) && offsets.last().is_some_and(|&last| last as usize == n),
                "{name} must run from 0 to the {n} tokens"
            );
            anyhow::ensure!(offsets.windows(2).all(|w| w[0] <= w[1]), "{name} is not ascending");
        }
        anyhow::ensure!(
            self.row_offsets.iter().all(|r| self.cu_seqlens.binary_search(r).is_ok()),
            "a row does not start on a sequence boundary"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffd::{Row, Sequence};

    fn sequence(id: &str, prompt: usize, completion: usize) -> Sequence<TokenizedSequence> {
        let n = prompt + completion;
        Sequence {
            tokens: n,
            item: TokenizedSequence {
                question_id: id.into(),
                input_ids: (0..n as u32).map(|t| t + 100).collect(),
                loss_mask: (0..n).map(|i| u8::from(i >= prompt)).collect(),
            },
        }
    }

    fn origin() -> ShardOrigin {
        ShardOrigin {
            style: "gpt-oss".into(),
            shard_index: 3,
            row_capacity: 10,
            tokenizer_sha256: "t".into(),
            template_sha256: "c".into(),
        }
    }

    #[test]
    fn a_shard_reads_back_with_its_boundaries_masks_and_positions() {
        let rows = vec![
            Row { tokens: 10, sequences: vec![sequence("a", 2, 4), sequence("b", 1, 3)] },
            Row { tokens: 5, sequences: vec![sequence("c", 3, 2)] },
        ];
        let (bytes, manifest) = build_shard(&rows, &origin()).unwrap();
        assert_eq!((manifest.rows, manifest.sequences, manifest.tokens, manifest.completion_tokens), (2, 3, 15, 9));
        assert_eq!(manifest.fill_ratio, 0.75);
        assert_eq!(manifest.question_ids, ["a", "b", "c"]);
        let read = read_shard(&bytes, Some(&manifest.sha256)).unwrap();
        assert_eq!(read.cu_seqlens, [0, 6, 10, 15]);
        assert_eq!(read.row_offsets, [0, 10, 15]);
        assert_eq!(&read.position_ids[..10], &[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]);
        assert_eq!(&read.loss_mask[..6], &[0, 0, 1, 1, 1, 1]);
        assert_eq!(read.input_ids[6], 100, "each sequence's own tokens");
        // The same rows give the same bytes: the checksum identifies the content.
        let (again, _) = build_shard(&rows, &origin()).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn a_corrupted_shard_is_refused() {
        let rows = vec![Row { tokens: 4, sequences: vec![sequence("a", 1, 3)] }];
        let (mut bytes, manifest) = build_shard(&rows, &origin()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = read_shard(&bytes, Some(&manifest.sha256)).unwrap_err().to_string();
        assert!(err.contains("does not match the manifest"), "{err}");
    }
}
