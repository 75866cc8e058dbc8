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
