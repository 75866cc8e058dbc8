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
    let value: Value = apache_avro::from_avro_datum(&writer.schema, &mut datum, None).map_err(decode_err)?;
    let json = serde_json::Value::try_from(value).map_err(decode_err)?;
    Ok(DecodedAny { kind: writer.kind, json })
}

/// The kind named by a payload's header, without decoding the body.
pub fn peek_kind(payload: &[u8]) -> Result<RecordKind, CodecError> {
    split_header(payload).map(|(known, _)| known.kind)
}
