//! Hostile payloads: arbitrary bytes, arbitrary bodies behind a valid header, and mutated valid
//! encodings of every record type must decode to a value or to a readable error, never panic,
//! and never allocate more than the payload could justify (a length prefix claiming gigabytes
//! is refused before anything that large is allocated).

use distillery_schemas::codec::{current_fingerprint, peek_kind, MAX_DECODE_ALLOCATION_BYTES};
use distillery_schemas::*;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

/// Records the largest single allocation made by the current thread.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

/// Decodes `payload` as every record kind, as JSON and by its header; every error must say
/// something.
fn decode_every_way(payload: &[u8]) {
    fn one<R: Record>(payload: &[u8]) {
        if let Err(e) = decode::<R>(payload) {
            assert!(!e.to_string().is_empty());
        }
    }
    one::<Question>(payload);
    one::<TeacherSample>(payload);
    one::<JudgedSample>(payload);
    one::<AgreedSample>(payload);
    one::<ShardManifest>(payload);
    one::<CheckpointEvent>(payload);
    one::<TrainMetrics>(payload);
    one::<EvalResult>(payload);
    one::<DeadLetter>(payload);
    if let Err(e) = decode_any(payload) {
        assert!(!e.to_string().is_empty());
    }
    if let Err(e) = peek_kind(payload) {
        assert!(!e.to_string().is_empty());
    }
}

fn sample() -> TeacherSample {
    TeacherSample {
        id: "s".into(),
        question_id: "q".into(),
        dataset: "d".into(),
        problem: "What is 2+2?".into(),
        expected_answer: "4".into(),
        teacher: "t".into(),
        attempt: 0,
        model: "m".into(),
        server_model: Some("m".into()),
        endpoint: None,
        reasoning: Some("two plus two".into()),
        answer: Some("\\boxed{4}".into()),
        finish_reason: "stop".into(),
        prompt_tokens: 12,
        completion_tokens: 40,
        reasoning_tokens: Some(30),
        latency_ms: 1234,
        sampling: SamplingSettings {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 32768,
            reasoning_effort: Some("high".into()),
            system_prompt: None,
            prompt_template: "{problem}".into(),
            seed: Some(7),
        },
        replayed: false,
        created_at_ms: 1,
    }
}

/// One valid encoding of each record kind with variable-length parts (strings, arrays, maps,
/// unions, bytes): the seeds that the mutations start from.
fn valid_encodings() -> Vec<Vec<u8>> {
    vec![
        encode(&Question {
            id: "q".into(),
            dataset: "d".into(),
            source_uri: "f.jsonl".into(),
            source_row: 7,
            problem: "What is 2+2?".into(),
            expected_answer: "4".into(),
            metadata: BTreeMap::from([("level".to_string(), "1".to_string())]),
        })
        .unwrap(),
        encode(&sample()).unwrap(),
        encode(&JudgedSample {
            id: "j".into(),
            sample: sample(),
            verdict: Verdict::Match,
            extracted_answer: Some("4".into()),
            method: JudgeMethod::Rule,
            judge_model: None,
            judge_output: None,
            detail: Some("equal".into()),
            judged_at_ms: 3,
        })
        .unwrap(),
        encode(&AgreedSample {
            id: "a".into(),
            question_id: "q".into(),
            dataset: "d".into(),
            problem: "p".into(),
            expected_answer: "4".into(),
            accepted: true,
            reason: None,
            traces: vec![TeacherTrace {
                teacher: "t".into(),
                sample_id: "s".into(),
                verdict: "MATCH".into(),
                reasoning: Some("r".into()),
                answer: Some("a".into()),
                completion_tokens: 9,
                finish_reason: "stop".into(),
            }],
            decided_at_ms: 4,
        })
        .unwrap(),
        encode(&ShardManifest {
            id: "sh".into(),
            style: "s".into(),
            shard_index: 3,
            uri: "u".into(),
            manifest_uri: "m".into(),
            format: "safetensors".into(),
            bytes: 10,
            sha256: "00".into(),
            rows: 1,
            sequences: 2,
            tokens: 3,
            completion_tokens: 2,
            row_capacity: 60_000,
            fill_ratio: 0.5,
            tokenizer_sha256: "t".into(),
            template_sha256: "c".into(),
            question_ids: vec!["q1".into(), "q2".into()],
            created_at_ms: 5,
        })
        .unwrap(),
        encode(&EvalResult {
            id: "e".into(),
            checkpoint_id: "c".into(),
            run: "r".into(),
            style: "s".into(),
            step: 10,
            benchmark: "gsm8k".into(),
            problems: 3,
            samples_per_problem: 2,
            pass_at_k: vec![0.5, 0.6],
            majority_at_k: vec![0.4, 0.5],
            avg_generated_tokens: 900.0,
            truncated_share: 0.01,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 32768,
            created_at_ms: 8,
        })
        .unwrap(),
        encode(&DeadLetter {
            id: "d".into(),
            processor: "judge".into(),
            error_class: ErrorClass::User,
            error: "no answer".into(),
            source_topic: "x.samples".into(),
            source_partition: 2,
            source_offset: 99,
            key: Some("q".into()),
            original: vec![0, 159, 255],
            created_at_ms: 9,
        })
        .unwrap(),
    ]
}

/// Ways to damage a payload.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bits: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    /// A varint meaning a huge length (or element count) written over the body.
    HugeLength {
        at: usize,
        zigzag: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just(1u64 << 31), 1u64..u64::MAX])
            .prop_map(|(at, zigzag)| Mutation::HugeLength { at, zigzag }),
    ]
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn apply(mut payload: Vec<u8>, m: &Mutation) -> Vec<u8> {
    // Mutations land in the body (after the 10-byte header) so that they reach the Avro
    // decoder instead of failing on the header.
    let body = |at: usize, len: usize| 10 + at % (len.saturating_sub(10)).max(1);
    match m {
        Mutation::Flip { at, bits } => {
            let i = body(*at, payload.len()).min(payload.len() - 1);
            payload[i] ^= bits;
        }
        Mutation::Set { at, byte } => {
            let i = body(*at, payload.len()).min(payload.len() - 1);
            payload[i] = *byte;
        }
        Mutation::Truncate { at } => payload.truncate(body(*at, payload.len())),
        Mutation::Insert { at, bytes } => {
            let i = body(*at, payload.len()).min(payload.len());
            payload.splice(i..i, bytes.iter().copied());
        }
        Mutation::HugeLength { at, zigzag } => {
            let i = body(*at, payload.len()).min(payload.len());
            let v = varint(*zigzag);
            let end = (i + v.len()).min(payload.len());
            payload.splice(i..end, v);
        }
    }
    payload
}

/// No decode of these small payloads may allocate more than this at once. (Before the codec
/// checked lengths against the payload, a 30-byte record claiming 400 million array elements
/// made apache-avro ask for 22.4 GB in one allocation.)
const ALLOCATION_CEILING: usize = 1024 * 1024;

// The codec's own limit still lets the largest record (32 MiB) decode.
const _: () = assert!(MAX_DECODE_ALLOCATION_BYTES >= 32 * 1024 * 1024);

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        decode_every_way(&payload);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        kind in 0..RecordKind::ALL.len(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![0xC3, 0x01];
        payload.extend_from_slice(&current_fingerprint(RecordKind::ALL[kind]));
        payload.extend_from_slice(&body);
        let largest = largest_allocation(|| decode_every_way(&payload));
        prop_assert!(largest <= ALLOCATION_CEILING, "a {}-byte payload allocated {largest} bytes at once", payload.len());
    }

    #[test]
    fn mutated_valid_records_never_panic_or_allocate_without_bound(
        seed in 0usize..7,
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut payload = valid_encodings().swap_remove(seed);
        for m in &mutations {
            payload = apply(payload, m);
        }
        let largest = largest_allocation(|| decode_every_way(&payload));
        prop_assert!(largest <= ALLOCATION_CEILING, "a {}-byte payload allocated {largest} bytes at once", payload.len());
    }
}

#[test]
fn length_prefixes_claiming_gigabytes_are_refused_before_anything_is_allocated() {
    // A question whose first field (the id string) claims 2^40 bytes.
    let mut payload = vec![0xC3, 0x01];
    payload.extend_from_slice(&current_fingerprint(RecordKind::Question));
    payload.extend(varint(1u64 << 41)); // zigzag of 2^40
    payload.extend_from_slice(b"short");
    let mut err = String::new();
    let largest = largest_allocation(|| err = decode::<Question>(&payload).unwrap_err().to_string());
    assert!(largest <= ALLOCATION_CEILING, "{largest}");
    assert!(err.contains("cannot decode question: a string or bytes field claims 1099511627776 bytes"), "{err}");

    // A shard manifest whose id list claims 400 million elements: the block count sits just
    // before the last field (created_at_ms = 5, zigzag 0x0A) of a manifest with no ids.
    let mut manifest = decode::<ShardManifest>(&valid_encodings()[4]).unwrap();
    manifest.question_ids.clear();
    let mut payload = encode(&manifest).unwrap();
    assert_eq!(payload[payload.len() - 2..], [0x00, 0x0A]);
    payload.truncate(payload.len() - 2);
    payload.extend(varint(800_000_000)); // zigzag of 400M elements
    payload.extend_from_slice(&[0x02, b'q', 0x00, 0x0A]);
    let mut err = String::new();
    let largest = largest_allocation(|| err = decode::<ShardManifest>(&payload).unwrap_err().to_string());
    assert!(largest <= ALLOCATION_CEILING, "{largest}");
    assert!(err.contains("cannot decode shard_manifest: an array or map claims 400000000 elements"), "{err}");
}
