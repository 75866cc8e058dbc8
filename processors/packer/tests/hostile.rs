//! Hostile shard files and manifests: arbitrary bytes, valid shards with bytes flipped, cut or
//! inserted, and header lengths claiming gigabytes. `read_shard` returns a shard whose offsets
//! are consistent (so slicing rows out of it cannot panic) or an error with the reason.

use distillery_packer::ffd::{Row, Sequence};
use distillery_packer::nemo::packs_of;
use distillery_packer::shard::{build_shard, read_shard, ShardFileManifest, ShardOrigin, TokenizedSequence};
use proptest::prelude::*;

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

fn valid_shard() -> (Vec<u8>, ShardFileManifest) {
    let origin = ShardOrigin {
        style: "s".into(),
        shard_index: 0,
        row_capacity: 10,
        tokenizer_sha256: "t".into(),
        template_sha256: "c".into(),
    };
    let rows = vec![
        Row { tokens: 10, sequences: vec![sequence("a", 2, 4), sequence("b", 1, 3)] },
        Row { tokens: 5, sequences: vec![sequence("c", 3, 2)] },
    ];
    build_shard(&rows, &origin).unwrap()
}

fn check(bytes: &[u8]) {
    match read_shard(bytes, None) {
        // What read_shard accepts can be cut into rows without a panic.
        Ok(shard) => {
            let packs = packs_of(&shard);
            assert_eq!(packs.len(), shard.row_offsets.len() - 1);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_a_shard_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check(&bytes);
        let mut with_header = (bytes.len() as u64).to_le_bytes().to_vec();
        with_header.extend_from_slice(&bytes);
        check(&with_header);
    }

    #[test]
    fn mutated_valid_shards_are_a_shard_or_a_reason(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..5),
    ) {
        let (mut bytes, manifest) = valid_shard();
        for (at, byte, how) in edits {
            let i = at % (bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        check(&bytes);
        // With the manifest's checksum, any change at all is refused.
        let with_checksum = read_shard(&bytes, Some(&manifest.sha256));
        if with_checksum.is_err() {
            prop_assert!(with_checksum.unwrap_err().to_string().contains("checksum"));
        }
    }

    #[test]
    fn mutated_manifests_parse_or_say_why(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5),
    ) {
        let (_, manifest) = valid_shard();
        let mut json = serde_json::to_vec(&manifest).unwrap();
        for (at, byte) in edits {
            let i = at % json.len();
            json[i] = byte;
        }
        if let Err(e) = serde_json::from_slice::<ShardFileManifest>(&json) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn a_header_length_claiming_gigabytes_is_refused() {
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let err = read_shard(&bytes, None).unwrap_err().to_string();
    assert!(!err.is_empty());
    let mut bytes = 50_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(read_shard(&bytes, None).is_err());
}

#[test]
fn offsets_that_do_not_fit_the_tokens_are_refused_with_the_reason() {
    use safetensors::tensor::{Dtype, TensorView};
    let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shard = |cu: &[i32], rows: &[i32]| {
        let ids = le(&[1, 2, 3, 4]);
        let mask = vec![0u8, 1, 1, 1];
        let pos = le(&[0, 1, 0, 1]);
        let (cu, rows) = (le(cu), le(rows));
        let views = vec![
            ("input_ids", TensorView::new(Dtype::I32, vec![4], &ids).unwrap()),
            ("loss_mask", TensorView::new(Dtype::U8, vec![4], &mask).unwrap()),
            ("position_ids", TensorView::new(Dtype::I32, vec![4], &pos).unwrap()),
            ("cu_seqlens", TensorView::new(Dtype::I32, vec![cu.len() / 4], &cu).unwrap()),
            ("row_offsets", TensorView::new(Dtype::I32, vec![rows.len() / 4], &rows).unwrap()),
        ];
        safetensors::tensor::serialize(views, None).unwrap()
    };
    assert!(read_shard(&shard(&[0, 2, 4], &[0, 4]), None).is_ok());
    for (cu, rows, reason) in [
        (&[0, 2, 9][..], &[0, 4][..], "cu_seqlens must run from 0 to the 4 tokens"),
        (&[0, 3, 2, 4], &[0, 4], "cu_seqlens is not ascending"),
        (&[0, 2, 4], &[0, 1_000_000], "row_offsets must run from 0 to the 4 tokens"),
        (&[0, 2, 4], &[0, -3, 4], "row_offsets is not ascending"),
        (&[0, 2, 4], &[0, 3, 4], "a row does not start on a sequence boundary"),
    ] {
        let err = read_shard(&shard(cu, rows), None).unwrap_err().to_string();
        assert_eq!(err, reason);
    }
}
