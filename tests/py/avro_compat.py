"""Avro schema evolution of flow.archived, checked with fastavro (independent of the
Rust encoder): a consumer on the previous schema reads a record of the current one,
and a consumer on the current schema reads a record of the previous one (its new
fields take their defaults). Also decodes single-object records flow-archiver wrote.

  avro_compat.py V1_AVSC V2_AVSC HEX [HEX ...]   each HEX: a single-object record
"""
import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form


def main():
    v1 = parse_schema(json.load(open(sys.argv[1])))
    v2 = parse_schema(json.load(open(sys.argv[2])))
    by_fingerprint = {
        bytes.fromhex(fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO")): s for s in (v1, v2)
    }
    out = []
    for hexed in sys.argv[3:]:
        raw = bytes.fromhex(hexed)
        assert raw[:2] == b"\xc3\x01", "single-object marker"
        writer = by_fingerprint[raw[2:10]]
        for reader, name in ((v1, "v1"), (v2, "v2")):
            record = fastavro.schemaless_reader(io.BytesIO(raw[10:]), writer, reader)
            if name == "v1":
                assert "plain_offset" not in record, record
            else:
                assert "plain_offset" in record and "plain_length" in record, record
            out.append({"writer": "v2" if writer is v2 else "v1", "reader": name,
                        "flow_id": record["flow_id"], "plain_offset": record.get("plain_offset"),
                        "plain_length": record.get("plain_length")})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
