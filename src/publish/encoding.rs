//! Encodings of published `data`: Avro single-object encoding or JSON.
//!
//! Avro single-object encoding is `C3 01`, the 8-byte little-endian CRC-64-AVRO
//! (Rabin) fingerprint of the schema's canonical form, then the binary body — a reader
//! that knows the schemas picks the right one from the fingerprint, no registry
//! needed. The schemas are the files in `schemas/`, compiled in.

use apache_avro::Schema;

use super::{FlowArchived, PublishError};
use crate::config::DataEncoding;

pub const FLOW_ARCHIVED_AVSC: &str = include_str!("../../schemas/flow_archived.avsc");

/// Encodes `flow.archived` data in the configured encoding.
pub struct DataEncoder {
    encoding: DataEncoding,
    schema: Schema,
    header: Vec<u8>,
}

impl DataEncoder {
    pub fn new(encoding: DataEncoding) -> Result<DataEncoder, PublishError> {
        let schema = Schema::parse_str(FLOW_ARCHIVED_AVSC)
            .map_err(|e| PublishError::Encode(format!("flow_archived.avsc: {e}")))?;
        let mut header = vec![0xC3, 0x01];
        header.extend_from_slice(&spec_fingerprint(FLOW_ARCHIVED_AVSC)?);
        Ok(DataEncoder {
            encoding,
            schema,
            header,
        })
    }

    pub fn content_type(&self) -> &'static str {
        self.encoding.content_type()
    }

    pub fn encode(&self, data: &FlowArchived) -> Result<Vec<u8>, PublishError> {
        let fail = |e: apache_avro::Error| PublishError::Encode(format!("avro: {e}"));
        match self.encoding {
            DataEncoding::Json => {
                serde_json::to_vec(data).map_err(|e| PublishError::Encode(e.to_string()))
            }
            DataEncoding::Avro => {
                let value = apache_avro::to_value(data)
                    .and_then(|v| v.resolve(&self.schema))
                    .map_err(fail)?;
                let body = apache_avro::to_avro_datum(&self.schema, value).map_err(fail)?;
                let mut out = Vec::with_capacity(self.header.len() + body.len());
                out.extend_from_slice(&self.header);
                out.extend_from_slice(&body);
                Ok(out)
            }
        }
    }
}

/// Reads `flow.archived` data in Avro single-object encoding (the index builder).
pub struct DataDecoder {
    schema: Schema,
    header: Vec<u8>,
}

impl DataDecoder {
    pub fn new() -> Result<DataDecoder, PublishError> {
        let schema = Schema::parse_str(FLOW_ARCHIVED_AVSC)
            .map_err(|e| PublishError::Encode(format!("flow_archived.avsc: {e}")))?;
        let mut header = vec![0xC3, 0x01];
        header.extend_from_slice(&spec_fingerprint(FLOW_ARCHIVED_AVSC)?);
        Ok(DataDecoder { schema, header })
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<FlowArchived, PublishError> {
        let body = bytes.strip_prefix(self.header.as_slice()).ok_or_else(|| {
            PublishError::Encode("not flow_archived in Avro single-object encoding".into())
        })?;
        let value = apache_avro::from_avro_datum(&self.schema, &mut &body[..], None)
            .map_err(|e| PublishError::Encode(format!("avro: {e}")))?;
        apache_avro::from_value::<FlowArchived>(&value)
            .map_err(|e| PublishError::Encode(format!("avro: {e}")))
    }
}

/// The CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, as the Avro
/// specification defines it (little-endian).
///
/// apache-avro 0.21 keeps `{"type":"long"}` for logical types in its canonical form
/// where the specification strips them to `"long"`, so its own fingerprint differs
/// from every other implementation's. Stripping `logicalType` before parsing gives the
/// canonical form the specification (and Java, Python's fastavro) use.
pub fn spec_fingerprint(schema_json: &str) -> Result<[u8; 8], PublishError> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("logicalType");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json: serde_json::Value = serde_json::from_str(schema_json)
        .map_err(|e| PublishError::Encode(format!("schema: {e}")))?;
    strip(&mut json);
    let plain = Schema::parse(&json).map_err(|e| PublishError::Encode(format!("schema: {e}")))?;
    let fingerprint = plain.fingerprint::<apache_avro::rabin::Rabin>();
    fingerprint
        .bytes
        .as_slice()
        .try_into()
        .map_err(|_| PublishError::Encode("fingerprint is not 8 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn sample() -> FlowArchived {
        FlowArchived {
            format: "flow-archive/v1".into(),
            tenant: "acme".into(),
            flow_id: "f-1".into(),
            part: 1,
            status: "completed".into(),
            labels: [("team".to_string(), "payments".to_string())].into(),
            event_count: 3,
            raw_bytes: 300,
            stored_bytes: 120,
            first_event_time: 1_700_000_000_000_000,
            last_event_time: 1_700_000_001_000_000,
            archived_at: 1_700_000_002_000_000,
            purge_at: 1_800_000_000_000_000,
            object_uri: "file:///a/b".into(),
            object_key: "flows/acme/purge=2027-01-15/x.jsonl.zst".into(),
            segment_id: "x".into(),
            compression: "zstd".into(),
            offset: 0,
            length: 120,
            frame_sha256: "ab".repeat(32),
            events_sha256: "cd".repeat(32),
            object_sha256: "ef".repeat(32),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        }
    }

    #[test]
    fn avro_single_object_round_trip() {
        let enc = DataEncoder::new(DataEncoding::Avro).unwrap();
        let bytes = enc.encode(&sample()).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        // Cross-checked with Python: fastavro.schema.fingerprint(
        //   to_parsing_canonical_form(schema), "CRC-64-AVRO").
        assert_eq!(hex::encode(&bytes[2..10]), "611b9163b73f556c");
        let schema = Schema::parse_str(FLOW_ARCHIVED_AVSC).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &bytes[10..], None).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get("flow_id"), Value::String("f-1".into()));
        assert_eq!(
            get("purge_at"),
            Value::TimestampMicros(1_800_000_000_000_000)
        );
        assert!(matches!(get("traceparent"), Value::Union(1, _)));
    }

    #[test]
    fn the_decoder_reads_what_the_encoder_writes() {
        let bytes = DataEncoder::new(DataEncoding::Avro)
            .unwrap()
            .encode(&sample())
            .unwrap();
        assert_eq!(
            DataDecoder::new().unwrap().decode(&bytes).unwrap(),
            sample()
        );
        assert!(DataDecoder::new().unwrap().decode(b"{}").is_err());
    }

    #[test]
    fn json_is_the_schema_shape() {
        let enc = DataEncoder::new(DataEncoding::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&enc.encode(&sample()).unwrap()).unwrap();
        assert_eq!(v["part"], 1);
        assert_eq!(v["labels"]["team"], "payments");
    }
}
