//! `distillery export nemo`: shards to NeMo's packed-sequence file, so students too large for
//! one GPU train on NeMo (Megatron) over the same streamed data. NeMo's `GPTSFTPackedDataset`
//! loads a `.npy` with `np.load(path, allow_pickle=True)` and reads one dict per pack:
//! `{"input_ids": [...], "loss_mask": [...], "seq_start_id": [...]}`. The file written here is
//! a `.npy` (object dtype) whose payload is a pickled list of such dicts (pickle protocol 2,
//! which `np.load` returns as it is), plus NeMo's packing metadata JSON.

use crate::shard::ShardTensors;
use serde::Serialize;

/// One pack (row) in NeMo's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct NemoPack {
    pub input_ids: Vec<i64>,
    /// 1 on tokens the loss is taken on, aligned with `input_ids`.
    pub loss_mask: Vec<i64>,
    /// Offsets of each sequence's first token within the pack.
    pub seq_start_id: Vec<i64>,
}

/// NeMo's packing metadata (one entry per pack size).
#[derive(Debug, Clone, Serialize)]
pub struct NemoPackingMetadata {
    pub pack_size: usize,
    pub max_samples_per_bin: usize,
    pub dataset_max_seqlen: usize,
    pub min_packed_seqlen: usize,
    pub packing_factor: f64,
    pub packing_efficiency: f64,
}

/// The rows of a shard as NeMo packs.
pub fn packs_of(shard: &ShardTensors) -> Vec<NemoPack> {
    let mut packs = Vec::new();
    let mut next_sequence = 0;
    for row in shard.row_offsets.windows(2) {
        let (start, end) = (row[0] as usize, row[1] as usize);
        let mut seq_start_id = Vec::new();
        while next_sequence + 1 < shard.cu_seqlens.len() && (shard.cu_seqlens[next_sequence] as usize) < end {
            seq_start_id.push(shard.cu_seqlens[next_sequence] as i64 - start as i64);
            next_sequence += 1;
        }
        packs.push(NemoPack {
            input_ids: shard.input_ids[start..end].iter().map(|&t| t as i64).collect(),
            loss_mask: shard.loss_mask[start..end].iter().map(|&m| m as i64).collect(),
            seq_start_id,
        });
    }
    packs
}

pub fn metadata(packs: &[NemoPack], pack_size: usize) -> NemoPackingMetadata {
    let sequences: usize = packs.iter().map(|p| p.seq_start_id.len()).sum();
    let tokens: usize = packs.iter().map(|p| p.input_ids.len()).sum();
    let max_seqlen = packs
        .iter()
        .flat_map(|p| {
            let mut bounds = p.seq_start_id.clone();
            bounds.push(p.input_ids.len() as i64);
            bounds.windows(2).map(|w| (w[1] - w[0]) as usize).collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0);
    NemoPackingMetadata {
        pack_size,
        max_samples_per_bin: packs.iter().map(|p| p.seq_start_id.len()).max().unwrap_or(0),
        dataset_max_seqlen: max_seqlen,
        min_packed_seqlen: packs.iter().map(|p| p.input_ids.len()).min().unwrap_or(0),
        packing_factor: if packs.is_empty() { 0.0 } else { sequences as f64 / packs.len() as f64 },
        packing_efficiency: if packs.is_empty() {
            0.0
        } else {
            100.0 * tokens as f64 / (packs.len() * pack_size) as f64
        },
    }
}

// --- pickle (protocol 2) of a list of dicts of int lists ---------------------------------

const PROTO: u8 = 0x80;
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const MARK: u8 = b'(';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
const BININT: u8 = b'J';
const BINUNICODE: u8 = b'X';
const STOP: u8 = b'.';
/// Items per APPENDS/SETITEMS batch, as Python's pickler batches them.
const BATCH: usize = 1000;

fn pickle_str(out: &mut Vec<u8>, s: &str) {
    out.push(BINUNICODE);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pickle_int_list(out: &mut Vec<u8>, values: &[i64]) {
    out.push(EMPTY_LIST);
    for chunk in values.chunks(BATCH) {
        out.push(MARK);
        for &v in chunk {
            // Token ids, masks and offsets all fit a signed 32-bit int.
            out.push(BININT);
            out.extend_from_slice(&(v as i32).to_le_bytes());
        }
        out.push(APPENDS);
    }
}

fn pickle_packs(packs: &[NemoPack]) -> Vec<u8> {
    let mut out = vec![PROTO, 2, EMPTY_LIST];
    for chunk in packs.chunks(BATCH) {
        out.push(MARK);
        for pack in chunk {
            out.push(EMPTY_DICT);
            out.push(MARK);
            for (key, values) in
                [("input_ids", &pack.input_ids), ("loss_mask", &pack.loss_mask), ("seq_start_id", &pack.seq_start_id)]
            {
                pickle_str(&mut out, key);
                pickle_int_list(&mut out, values);
            }
            out.push(SETITEMS);
        }
        out.push(APPENDS);
    }
    out.push(STOP);
    out
}

/// The `.npy` bytes: format 1.0 header for an object array of `packs.len()` items, then the
/// pickled list.
pub fn npy_bytes(packs: &[NemoPack]) -> Vec<u8> {
    let mut header = format!("{{'descr': '|O', 'fortran_order': False, 'shape': ({},), }}", packs.len());
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of
    // 64 and ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&pickle_packs(packs));
    out
}

/// Exports every shard of a folder (in shard-name order) to `out` and its metadata JSON.
/// Every shard file counts, including one a packer uploaded but was killed before publishing
/// (its questions are in another, published shard too); [`export_published`] reads only what
/// the shards topic published.
pub fn export_folder(shards: &std::path::Path, out: &std::path::Path) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(shards)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .safetensors shards in {}", shards.display());
    let mut loaded = Vec::new();
    for file in &files {
        let manifest: crate::shard::ShardFileManifest =
            serde_json::from_slice(&std::fs::read(file.with_extension("json"))?)
                .map_err(|e| anyhow::anyhow!("{}: manifest: {e}", file.display()))?;
        let shard = crate::shard::read_shard(&std::fs::read(file)?, Some(&manifest.sha256))?;
        loaded.push((manifest.row_capacity, shard));
    }
    write_export(loaded, out)
}

/// Exports the shards of published manifests (a shards topic, de-duplicated, in shard-index
/// order), each fetched with `fetch` and checked against its manifest's checksum.
pub fn export_published(
    manifests: &[distillery_schemas::ShardManifest],
    fetch: impl Fn(&str) -> anyhow::Result<Vec<u8>>,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    let mut unique: Vec<&distillery_schemas::ShardManifest> = Vec::new();
    for manifest in manifests {
        if !unique.iter().any(|m| m.id == manifest.id) {
            unique.push(manifest);
        }
    }
    unique.sort_by_key(|m| (m.shard_index, m.id.clone()));
    anyhow::ensure!(!unique.is_empty(), "no shard manifests to export");
    let mut loaded = Vec::new();
    for manifest in unique {
        let shard = crate::shard::read_shard(&fetch(&manifest.uri)?, Some(&manifest.sha256))
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", manifest.uri))?;
        loaded.push((manifest.row_capacity as usize, shard));
    }
    write_export(loaded, out)
}

fn write_export(shards: Vec<(usize, ShardTensors)>, out: &std::path::Path) -> anyhow::Result<String> {
    let (mut packs, mut pack_size) = (Vec::new(), 0);
    for (row_capacity, shard) in &shards {
        pack_size = pack_size.max(*row_capacity);
        packs.extend(packs_of(shard));
    }
    std::fs::write(out, npy_bytes(&packs))?;
    let meta = metadata(&packs, pack_size);
    let meta_path = out.with_extension("metadata.json");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&[&meta])?)?;
    Ok(format!(
        "{} packs from {} shards -> {} (metadata {}), packing efficiency {:.1}%",
        packs.len(),
        shards.len(),
        out.display(),
        meta_path.display(),
        meta.packing_efficiency
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_packs_with_sequence_starts() {
        let shard = ShardTensors {
            input_ids: (0..9).collect(),
            loss_mask: vec![0, 1, 1, 0, 1, 0, 0, 1, 1],
            position_ids: vec![0, 1, 2, 0, 1, 0, 1, 2, 3],
            cu_seqlens: vec![0, 3, 5, 9],
            row_offsets: vec![0, 5, 9],
        };
        let packs = packs_of(&shard);
        assert_eq!(packs.len(), 2);
        assert_eq!(packs[0].seq_start_id, [0, 3]);
        assert_eq!(packs[1].seq_start_id, [0]);
        assert_eq!(packs[1].input_ids, [5, 6, 7, 8]);
        let meta = metadata(&packs, 5);
        assert_eq!((meta.max_samples_per_bin, meta.dataset_max_seqlen, meta.min_packed_seqlen), (2, 4, 4));
        let npy = npy_bytes(&packs);
        assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "the header is padded to 64 bytes");
        assert_eq!(*npy.last().unwrap(), STOP);
    }
}
