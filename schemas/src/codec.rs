//! Avro binary in the Avro single-object encoding: every payload starts with the marker
//! `C3 01` and the 8-byte CRC-64-AVRO fingerprint (little-endian) of the writer's schema in
//! Parsing Canonical Form, then the Avro datum. A reader looks the fingerprint up among every
//! schema version it knows (current and `schemas/history/`) and resolves the datum from that
//! writer schema into its own, so records written by an older processor stay readable after a
//! field is added with a default.

use crate::record::{Record, RecordKind};
use apache_avro::{rabin::Rabin, types::Value, Schema};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Marker of the Avro single-object encoding (spec: "Single object encoding").
const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// No string, bytes field or element count in a decoded record may exceed this: nothing longer
/// fits in a record (the runtime's producers and consumers cap records at 32 MiB). It is set as
/// apache-avro's allocation limit (whose default, 512 MiB, is far above any real record), and
/// [`check_lengths`] refuses any length that does not fit in the bytes actually received.
pub const MAX_DECODE_ALLOCATION_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("payload of {0} bytes is too short for an Avro single-object header")]
    TooShort(usize),
    #[error("payload does not start with the Avro single-object marker C3 01 (found {0:02X} {1:02X})")]
    NoMarker(u8, u8),
    #[error("unknown writer schema fingerprint {0}: the record was written with a schema this build does not know")]
    UnknownFingerprint(String),
    #[error("record was written as '{written}' but '{expected}' was expected")]
    WrongKind { written: RecordKind, expected: RecordKind },
    #[error("{count} bytes follow the end of the {kind} record")]
    TrailingBytes { kind: RecordKind, count: usize },
    #[error("cannot encode {kind}: {source}")]
    Encode { kind: RecordKind, source: Box<apache_avro::Error> },
    #[error("cannot decode {kind}: {source}")]
    Decode { kind: RecordKind, source: Box<apache_avro::Error> },
    #[error("cannot decode {kind}: {reason}")]
    Malformed { kind: RecordKind, reason: String },
}

struct KnownSchema {
    kind: RecordKind,
    schema: Schema,
    fingerprint: [u8; 8],
}

struct SchemaSet {
    /// Every version of every schema, by fingerprint.
    by_fingerprint: HashMap<[u8; 8], KnownSchema>,
    /// The version this build writes and reads into.
    current: HashMap<RecordKind, (Schema, [u8; 8])>,
}

fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

fn schema_set() -> &'static SchemaSet {
    static SET: OnceLock<SchemaSet> = OnceLock::new();
    SET.get_or_init(|| {
        // Every decode goes through here first, so the limit is in place before apache-avro
        // reads its first length (it only takes the first value it is given).
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION_BYTES);
        let mut by_fingerprint = HashMap::new();
        let mut current = HashMap::new();
        for kind in RecordKind::ALL {
            // The .avsc files are compiled in and covered by tests: a parse failure here is a
            // broken build, not bad input.
            let schema = Schema::parse_str(kind.current_schema_text())
                .unwrap_or_else(|e| panic!("schemas/{}.avsc does not parse: {e}", kind.name()));
            let fp = fingerprint(&schema);
            current.insert(kind, (schema.clone(), fp));
            by_fingerprint.insert(fp, KnownSchema { kind, schema, fingerprint: fp });
            for old in kind.history_schema_texts() {
                let schema = Schema::parse_str(old)
                    .unwrap_or_else(|e| panic!("a history schema of {} does not parse: {e}", kind.name()));
                let fp = fingerprint(&schema);
                by_fingerprint.insert(fp, KnownSchema { kind, schema, fingerprint: fp });
            }
        }
        SchemaSet { by_fingerprint, current }
    })
}

/// The current schema of a record kind.
pub fn current_schema(kind: RecordKind) -> &'static Schema {
    &schema_set().current[&kind].0
}

/// The fingerprint written in front of records of this kind.
pub fn current_fingerprint(kind: RecordKind) -> [u8; 8] {
    schema_set().current[&kind].1
}

/// Encodes a record with its current schema.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, CodecError> {
    let (schema, fp) = &schema_set().current[&R::KIND];
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(fp);
    apache_avro::write_avro_datum_ref(schema, record, &mut out)
        .map_err(|e| CodecError::Encode { kind: R::KIND, source: Box::new(e) })?;
    Ok(out)
}

/// Encodes a record written with an explicit (possibly older) schema text. Used by tests and
/// tools that need to produce what an older writer produced.
pub fn encode_with_schema<T: serde::Serialize>(
    kind: RecordKind,
    schema_text: &str,
    record: &T,
) -> Result<Vec<u8>, CodecError> {
    let schema = Schema::parse_str(schema_text).map_err(|e| CodecError::Encode { kind, source: Box::new(e) })?;
    let mut out = Vec::new();
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&fingerprint(&schema));
    apache_avro::write_avro_datum_ref(&schema, record, &mut out)
        .map_err(|e| CodecError::Encode { kind, source: Box::new(e) })?;
    Ok(out)
}

fn split_header(payload: &[u8]) -> Result<(&'static KnownSchema, &[u8]), CodecError> {
    if payload.len() < HEADER_LEN {
        return Err(CodecError::TooShort(payload.len()));
    }
    if payload[..2] != MARKER {
        return Err(CodecError::NoMarker(payload[0], payload[1]));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&payload[2..HEADER_LEN]);
    let known = schema_set().by_fingerprint.get(&fp).ok_or_else(|| CodecError::UnknownFingerprint(hex::encode(fp)))?;
    Ok((known, &payload[HEADER_LEN..]))
}

/// Decodes a record of type `R`, resolving an older writer schema into the current one.
pub fn decode<R: Record>(payload: &[u8]) -> Result<R, CodecError> {
    let (writer, mut datum) = split_header(payload)?;
    if writer.kind != R::KIND {
        return Err(CodecError::WrongKind { written: writer.kind, expected: R::KIND });
    }
    let decode_err = |e| CodecError::Decode { kind: R::KIND, source: Box::new(e) };
    check_lengths(&writer.schema, datum).map_err(|reason| CodecError::Malformed { kind: R::KIND, reason })?;
    // Resolution is only needed when the writer used another version than ours.
    let resolve_into = (writer.fingerprint != current_fingerprint(R::KIND)).then(|| current_schema(R::KIND));
    let value = apache_avro::from_avro_datum(&writer.schema, &mut datum, resolve_into).map_err(decode_err)?;
    if !datum.is_empty() {
        return Err(CodecError::TrailingBytes { kind: R::KIND, count: datum.len() });
    }
    apache_avro::from_value::<R>(&value).map_err(decode_err)
}

/// A record of any known kind, as JSON: for tools that print or inspect topics.
#[derive(Debug)]
pub struct DecodedAny {
    pub kind: RecordKind,
    pub json: serde_json::Value,
}

/// Decodes a payload of any known kind to JSON with its writer schema.
pub fn decode_any(payload: &[u8]) -> Result<DecodedAny, CodecError> {
    let (writer, mut datum) = split_header(payload)?;
    let decode_err = |e| CodecError::Decode { kind: writer.kind, source: Box::new(e) };
    check_lengths(&writer.schema, datum).map_err(|reason| CodecError::Malformed { kind: writer.kind, reason })?;
    let value: Value = apache_avro::from_avro_datum(&writer.schema, &mut datum, None).map_err(decode_err)?;
    let json = serde_json::Value::try_from(value).map_err(decode_err)?;
    Ok(DecodedAny { kind: writer.kind, json })
}

/// The kind named by a payload's header, without decoding the body.
pub fn peek_kind(payload: &[u8]) -> Result<RecordKind, CodecError> {
    split_header(payload).map(|(known, _)| known.kind)
}

/// Walks a datum over its writer schema without allocating, and refuses it when a string or
/// bytes length, or an array or map element count, claims more than the bytes that follow.
///
/// Why: apache-avro allocates what a length prefix claims before reading the bytes (a string
/// buffer, or `Vec::reserve(count)` of decoded values, ~56 bytes each), so a 30-byte hostile
/// record claiming 400 million array elements asked for 22 GB at once, enough to abort the
/// process. Checked here, no claim can exceed the payload it came in.
fn check_lengths(schema: &Schema, mut datum: &[u8]) -> Result<(), String> {
    check_datum(schema, &mut datum).map(|_| ())
}

/// Ok(false): a construct this check does not follow (none of this project's schemas uses
/// one); the rest is left to the decoder and its allocation limit.
fn check_datum(schema: &Schema, datum: &mut &[u8]) -> Result<bool, String> {
    match schema {
        Schema::Null => {}
        Schema::Boolean => skip(datum, 1, "a boolean")?,
        Schema::Int | Schema::Long | Schema::Enum(_) => {
            read_long(datum)?;
        }
        Schema::Float => skip(datum, 4, "a float")?,
        Schema::Double => skip(datum, 8, "a double")?,
        Schema::Fixed(fixed) => skip(datum, fixed.size, "a fixed field")?,
        Schema::Bytes | Schema::String => {
            let len = read_long(datum)?;
            let len = usize::try_from(len).map_err(|_| format!("a string or bytes field has length {len}"))?;
            skip(datum, len, "a string or bytes field")?;
        }
        Schema::Union(union) => {
            let index = read_long(datum)?;
            let variant = usize::try_from(index)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or_else(|| format!("union branch {index} does not exist"))?;
            return check_datum(variant, datum);
        }
        Schema::Record(record) => {
            for field in &record.fields {
                if !check_datum(&field.schema, datum)? {
                    return Ok(false);
                }
            }
        }
        Schema::Array(array) => return check_blocks(datum, &array.items, false),
        Schema::Map(map) => return check_blocks(datum, &map.types, true),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The blocks of an array or map: each a count (negative: followed by its size in bytes), then
/// that many items; a zero count ends them.
fn check_blocks(datum: &mut &[u8], items: &Schema, keyed: bool) -> Result<bool, String> {
    let min_item = min_encoded_size(items) + usize::from(keyed);
    if min_item == 0 {
        // Items of zero bytes (nulls): counts are not bounded by the payload.
        return Ok(false);
    }
    loop {
        let count = read_long(datum)?;
        if count == 0 {
            return Ok(true);
        }
        if count < 0 {
            read_long(datum)?;
        }
        let count = count.unsigned_abs();
        if count > (datum.len() / min_item) as u64 {
            return Err(format!(
                "an array or map claims {count} elements, more than the {} bytes that follow can hold",
                datum.len()
            ));
        }
        for _ in 0..count {
            if keyed {
                check_datum(&Schema::String, datum)?;
            }
            if !check_datum(items, datum)? {
                return Ok(false);
            }
        }
    }
}

/// The fewest bytes a value of this schema takes.
fn min_encoded_size(schema: &Schema) -> usize {
    match schema {
        Schema::Null => 0,
        Schema::Float => 4,
        Schema::Double => 8,
        Schema::Fixed(fixed) => fixed.size,
        Schema::Record(record) => record.fields.iter().map(|f| min_encoded_size(&f.schema)).sum(),
        Schema::Ref { .. } => 0,
        _ => 1,
    }
}

fn skip(datum: &mut &[u8], len: usize, what: &str) -> Result<(), String> {
    if len > datum.len() {
        return Err(format!("{what} claims {len} bytes but only {} follow", datum.len()));
    }
    *datum = &datum[len..];
    Ok(())
}

/// An Avro long: zigzag, variable length, at most 10 bytes.
fn read_long(datum: &mut &[u8]) -> Result<i64, String> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = datum.split_first().ok_or("the record ends inside a number")?;
        *datum = rest;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("a number is longer than 10 bytes".into())
}
