//! Reading rows off a local file on a blocking thread, as JSON values with their original
//! bytes (kept for dead letters). A row that cannot be parsed is passed on as an error for
//! that row; a file that cannot be read at all ends the run.

use crate::config::FileType;
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use tokio::sync::mpsc;

pub enum RowItem {
    Row { index: u64, row: Result<Value, String>, original: Vec<u8> },
    Failed(String),
}

/// Lines longer than this are refused as rows instead of being buffered without bound.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

pub fn spawn_row_reader(path: PathBuf, file_type: FileType, limit: Option<u64>) -> mpsc::Receiver<RowItem> {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let result = match file_type {
            FileType::Jsonl => read_jsonl(&path, limit, &tx),
            FileType::Parquet => read_parquet(&path, limit, &tx),
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(RowItem::Failed(format!("cannot read {}: {e}", path.display())));
        }
    });
    rx
}

fn read_jsonl(path: &PathBuf, limit: Option<u64>, tx: &mpsc::Sender<RowItem>) -> anyhow::Result<()> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut index = 0u64;
    let mut line = Vec::new();
    loop {
        if limit.is_some_and(|l| index >= l) {
            return Ok(());
        }
        line.clear();
        let read = std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        let row = if line.len() > MAX_LINE_BYTES {
            // Skip the rest of the oversized line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
            Err(format!("line is longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&line) {
                Err(e) => Err(format!("line is not UTF-8: {e}")),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => serde_json::from_str::<Value>(text).map_err(|e| format!("line is not JSON: {e}")),
            }
        };
        let original = std::mem::take(&mut line);
        if tx.blocking_send(RowItem::Row { index, row, original }).is_err() {
            return Ok(());
        }
        index += 1;
    }
}

fn read_parquet(path: &PathBuf, limit: Option<u64>, tx: &mpsc::Sender<RowItem>) -> anyhow::Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path)?)?;
    for (index, row) in reader.get_row_iter(None)?.enumerate() {
        let index = index as u64;
        if limit.is_some_and(|l| index >= l) {
            return Ok(());
        }
        let (row, original) = match row {
            Ok(row) => {
                let value = row.to_json_value();
                let original = serde_json::to_vec(&value)?;
                (Ok(value), original)
            }
            Err(e) => (Err(format!("row cannot be decoded: {e}")), Vec::new()),
        };
        if tx.blocking_send(RowItem::Row { index, row, original }).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item `read_jsonl` sends for a file holding `bytes`.
    fn read(bytes: &[u8]) -> Vec<(u64, Result<Value, String>, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let reader = std::thread::spawn(move || read_jsonl(&path, None, &tx).map_err(|e| e.to_string()));
        let mut rows = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            match item {
                RowItem::Row { index, row, original } => rows.push((index, row, original)),
                RowItem::Failed(e) => panic!("{e}"),
            }
        }
        reader.join().unwrap().unwrap();
        rows
    }

    #[test]
    fn invalid_utf8_is_a_row_error_that_keeps_the_original_bytes() {
        let bytes = b"{\"a\": 1}\n{\"a\": \"\xff\xfe caf\xe9\"}\n\n{\"a\": 3}\n";
        let rows = read(bytes);
        assert_eq!(rows.len(), 3, "the blank line is skipped");
        assert_eq!(rows[0].1.as_ref().unwrap()["a"], 1);
        let err = rows[1].1.as_ref().unwrap_err();
        assert!(err.starts_with("line is not UTF-8: invalid utf-8 sequence"), "{err}");
        assert_eq!(rows[1].2, b"{\"a\": \"\xff\xfe caf\xe9\"}\n", "the dead letter gets the bytes as they were");
        assert_eq!((rows[2].0, rows[2].1.as_ref().unwrap()["a"].as_i64()), (2, Some(3)));
    }

    #[test]
    fn a_line_nested_beyond_serde_json_s_limit_is_a_row_error() {
        let deep = format!("{}{}\n{{\"a\": 2}}\n", "[".repeat(100_000), "]".repeat(100_000));
        let rows = read(deep.as_bytes());
        assert!(rows[0].1.as_ref().unwrap_err().starts_with("line is not JSON: recursion limit exceeded"));
        assert_eq!(rows[1].1.as_ref().unwrap()["a"], 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..Default::default() })]

        /// Arbitrary bytes: every non-blank line is one row or one reason, and the originals
        /// are the file's bytes.
        #[test]
        fn arbitrary_bytes_become_rows_or_reasons(lines in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..8)) {
            let mut bytes = Vec::new();
            for line in &lines {
                bytes.extend(line.iter().filter(|b| **b != b'\n'));
                bytes.push(b'\n');
            }
            let rows = read(&bytes);
            let mut seen = Vec::new();
            for (i, (index, row, original)) in rows.iter().enumerate() {
                proptest::prop_assert_eq!(*index, i as u64);
                if let Err(e) = row {
                    proptest::prop_assert!(!e.is_empty());
                }
                seen.extend_from_slice(original);
            }
            let blank = |l: &[u8]| std::str::from_utf8(l).is_ok_and(|t| t.trim().is_empty());
            let expected: Vec<u8> = bytes.split_inclusive(|b| *b == b'\n').filter(|l| !blank(l)).flatten().copied().collect();
            proptest::prop_assert_eq!(seen, expected);
        }
    }
}
