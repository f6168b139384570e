//! Encodings of published `data`: Avro single-object encoding or JSON.
//!
//! Avro single-object encoding is `C3 01`, the 8-byte little-endian CRC-64-AVRO
//! (Rabin) fingerprint of the schema's canonical form, then the binary body — a reader
//! that knows the schemas picks the right one from the fingerprint, no registry
//! needed. The schemas are the files in `schemas/`, compiled in.

use apache_avro::Schema;

use super::{EventData, FlowArchived, FlowHold, FlowPurged, PublishError};
use crate::config::DataEncoding;

pub const FLOW_ARCHIVED_AVSC: &str = include_str!("../../schemas/flow_archived.avsc");
/// The schema records were written with before `flow-archive/v2`: read and resolved
/// to the current one (its new fields take their defaults).
pub const FLOW_ARCHIVED_V1_AVSC: &str = include_str!("../../schemas/flow_archived.v1.avsc");
pub const FLOW_PURGED_AVSC: &str = include_str!("../../schemas/flow_purged.avsc");
pub const FLOW_HOLD_AVSC: &str = include_str!("../../schemas/flow_hold.avsc");

/// One compiled schema and its single-object header (`C3 01` + fingerprint).
struct Compiled {
    schema: Schema,
    header: Vec<u8>,
}

impl Compiled {
    fn new(name: &str, avsc: &str) -> Result<Compiled, PublishError> {
        let schema =
            Schema::parse_str(avsc).map_err(|e| PublishError::Encode(format!("{name}: {e}")))?;
        let mut header = vec![0xC3, 0x01];
        header.extend_from_slice(&spec_fingerprint(avsc)?);
        Ok(Compiled { schema, header })
    }
}

/// The schemas of everything published, by kind.
struct Schemas {
    archived: Compiled,
    archived_v1: Compiled,
    purged: Compiled,
    hold: Compiled,
}

impl Schemas {
    fn new() -> Result<Schemas, PublishError> {
        Ok(Schemas {
            archived: Compiled::new("flow_archived.avsc", FLOW_ARCHIVED_AVSC)?,
            archived_v1: Compiled::new("flow_archived.v1.avsc", FLOW_ARCHIVED_V1_AVSC)?,
            purged: Compiled::new("flow_purged.avsc", FLOW_PURGED_AVSC)?,
            hold: Compiled::new("flow_hold.avsc", FLOW_HOLD_AVSC)?,
        })
    }
}

fn avro_err(e: apache_avro::Error) -> PublishError {
    PublishError::Encode(format!("avro: {e}"))
}

/// Encodes published `data` in the configured encoding.
pub struct DataEncoder {
    encoding: DataEncoding,
    schemas: Schemas,
}

impl DataEncoder {
    pub fn new(encoding: DataEncoding) -> Result<DataEncoder, PublishError> {
        Ok(DataEncoder {
            encoding,
            schemas: Schemas::new()?,
        })
    }

    pub fn content_type(&self) -> &'static str {
        self.encoding.content_type()
    }

    pub fn encode(&self, data: &EventData) -> Result<Vec<u8>, PublishError> {
        if self.encoding == DataEncoding::Json {
            return serde_json::to_vec(data).map_err(|e| PublishError::Encode(e.to_string()));
        }
        let (compiled, value) = match data {
            EventData::Archived(d) => (&self.schemas.archived, apache_avro::to_value(d)),
            EventData::Purged(d) => (&self.schemas.purged, apache_avro::to_value(d)),
            EventData::Hold(d) => (&self.schemas.hold, apache_avro::to_value(d)),
        };
        let value = value
            .and_then(|v| v.resolve(&compiled.schema))
            .map_err(avro_err)?;
        let body = apache_avro::to_avro_datum(&compiled.schema, value).map_err(avro_err)?;
        let mut out = Vec::with_capacity(compiled.header.len() + body.len());
        out.extend_from_slice(&compiled.header);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Reads published data in Avro single-object encoding (the index builder); the
/// fingerprint says which schema.
pub struct DataDecoder {
    schemas: Schemas,
}

impl DataDecoder {
    pub fn new() -> Result<DataDecoder, PublishError> {
        Ok(DataDecoder {
            schemas: Schemas::new()?,
        })
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<EventData, PublishError> {
        let s = &self.schemas;
        let read = |c: &Compiled| -> Option<Result<apache_avro::types::Value, PublishError>> {
            let body = bytes.strip_prefix(c.header.as_slice())?;
            Some(apache_avro::from_avro_datum(&c.schema, &mut &body[..], None).map_err(avro_err))
        };
        if let Some(v) = read(&s.archived) {
            return Ok(EventData::Archived(
                apache_avro::from_value::<FlowArchived>(&v?).map_err(avro_err)?,
            ));
        }
        if let Some(body) = bytes.strip_prefix(s.archived_v1.header.as_slice()) {
            let v = apache_avro::from_avro_datum(
                &s.archived_v1.schema,
                &mut &body[..],
                Some(&s.archived.schema),
            )
            .map_err(avro_err)?;
            return Ok(EventData::Archived(
                apache_avro::from_value::<FlowArchived>(&v).map_err(avro_err)?,
            ));
        }
        if let Some(v) = read(&s.purged) {
            return Ok(EventData::Purged(
                apache_avro::from_value::<FlowPurged>(&v?).map_err(avro_err)?,
            ));
        }
        if let Some(v) = read(&s.hold) {
            return Ok(EventData::Hold(
                apache_avro::from_value::<FlowHold>(&v?).map_err(avro_err)?,
            ));
        }
        Err(PublishError::Encode(
            "not a flow-archiver schema in Avro single-object encoding".into(),
        ))
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
            plain_offset: Some(4096),
            plain_length: Some(1500),
        }
    }

    #[test]
    fn avro_single_object_round_trip() {
        let enc = DataEncoder::new(DataEncoding::Avro).unwrap();
        let bytes = enc.encode(&EventData::Archived(sample())).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        // Cross-checked with Python: fastavro.schema.fingerprint(
        //   to_parsing_canonical_form(schema), "CRC-64-AVRO").
        assert_eq!(hex::encode(&bytes[2..10]), "6c627a929c3d772c");
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
    fn records_written_with_the_first_schema_read_with_the_ranges_absent() {
        let v1 = Compiled::new("v1", FLOW_ARCHIVED_V1_AVSC).unwrap();
        assert_eq!(hex::encode(&v1.header[2..]), "611b9163b73f556c");
        let mut old = sample();
        (old.plain_offset, old.plain_length) = (None, None);
        let value = apache_avro::to_value(&old)
            .unwrap()
            .resolve(&v1.schema)
            .unwrap();
        let mut bytes = v1.header.clone();
        bytes.extend(apache_avro::to_avro_datum(&v1.schema, value).unwrap());
        assert_eq!(
            DataDecoder::new().unwrap().decode(&bytes).unwrap(),
            EventData::Archived(old)
        );
    }

    #[test]
    fn the_decoder_reads_what_the_encoder_writes() {
        let bytes = DataEncoder::new(DataEncoding::Avro)
            .unwrap()
            .encode(&EventData::Archived(sample()))
            .unwrap();
        let decoder = DataDecoder::new().unwrap();
        assert_eq!(
            decoder.decode(&bytes).unwrap(),
            EventData::Archived(sample())
        );
        assert!(decoder.decode(b"{}").is_err());
        let purged = EventData::Purged(FlowPurged {
            tenant: "t".into(),
            flow_id: "f-1".into(),
            part: 2,
            reason: "erasure".into(),
            object_uri: "s3://b/k".into(),
            segment_id: "s".into(),
            purged_at: 1_800_000_000_000_000,
            actor: Some("dpo@example.com".into()),
        });
        let hold = EventData::Hold(FlowHold {
            tenant: "t".into(),
            flow_id: "f-1".into(),
            held: true,
            reason: "case 42".into(),
            actor: "legal".into(),
            at: 1_800_000_000_000_000,
        });
        let enc = DataEncoder::new(DataEncoding::Avro).unwrap();
        for data in [purged, hold] {
            let bytes = enc.encode(&data).unwrap();
            assert_eq!(decoder.decode(&bytes).unwrap(), data);
            // JSON reads back as the same variant too (the records file).
            let json = serde_json::to_vec(&data).unwrap();
            assert_eq!(serde_json::from_slice::<EventData>(&json).unwrap(), data);
        }
        // An unknown purge reason is refused by the schema's enum.
        let mut bad = FlowPurged {
            tenant: "t".into(),
            flow_id: "f".into(),
            part: 1,
            reason: "because".into(),
            object_uri: String::new(),
            segment_id: String::new(),
            purged_at: 0,
            actor: None,
        };
        assert!(enc.encode(&EventData::Purged(bad.clone())).is_err());
        bad.reason = "retention".into();
        assert!(enc.encode(&EventData::Purged(bad)).is_ok());
    }

    #[test]
    fn json_is_the_schema_shape() {
        let enc = DataEncoder::new(DataEncoding::Json).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&enc.encode(&EventData::Archived(sample())).unwrap()).unwrap();
        assert_eq!(v["part"], 1);
        assert_eq!(v["labels"]["team"], "payments");
    }
}
