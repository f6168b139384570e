"""An independent Kafka client for the end-to-end tests (confluent-kafka, fastavro).

It shares no code with flow-archiver: records are produced and read back with the
Python client, and Avro payloads are decoded with fastavro against schemas/*.avsc.

  produce BROKER TOPIC SPEC.json      records: [{"key", "value" | "value_b64", "headers"}]
  consume BROKER TOPIC N [--avro SCHEMA[,SCHEMA…]] [--timeout S]
                                      prints one JSON object per record: at least N
                                      (or what came before the timeout), and any
                                      that follow within 2 s
  committed BROKER GROUP TOPIC        prints the sum of the group's committed offsets
"""

import base64
import json
import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(broker, topic, spec_path, one_per_batch=False):
    with open(spec_path) as f:
        records = json.load(f)
    config = {"bootstrap.servers": broker, "enable.idempotence": True, "linger.ms": 5}
    if one_per_batch:
        # Every record its own batch, so every offset starts one (see the harness's
        # note on tansu's in-memory engine).
        config.update({"batch.num.messages": 1, "linger.ms": 0})
    producer = Producer(config)
    failures = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    for r in records:
        value = base64.b64decode(r["value_b64"]) if "value_b64" in r else r["value"].encode()
        headers = [(k, v.encode() if isinstance(v, str) else base64.b64decode(v["b64"])) for k, v in r.get("headers", [])]
        while True:
            try:
                producer.produce(topic, key=r.get("key"), value=value, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        sys.exit(f"produce failed: {left} undelivered, errors: {failures[:5]}")
    print(len(records))


def avro_decoder(schema_paths):
    """Decodes Avro single-object encoding with whichever of the schemas (paths,
    comma-separated) the record's fingerprint names; an unknown fingerprint is an
    error."""
    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    schemas = {}
    for path in schema_paths.split(","):
        with open(path) as f:
            schema = fastavro.parse_schema(json.load(f))
        # fastavro prints the fingerprint's bytes in the order the encoding carries them.
        schemas[bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))] = schema

    def decode(value):
        import io

        if value[:2] != b"\xc3\x01":
            raise ValueError("not Avro single-object encoding")
        schema = schemas.get(value[2:10])
        if schema is None:
            raise ValueError(f"schema fingerprint {value[2:10].hex()} is none of {schema_paths}")
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)
        # datetimes (timestamp-micros) back to integers for comparison.
        for k, v in list(record.items()):
            if hasattr(v, "timestamp"):
                record[k] = int(round(v.timestamp() * 1_000_000))
        return record

    return decode


def consume(broker, topic, n, avro=None, timeout=60.0):
    decode = avro_decoder(avro) if avro else None
    consumer = Consumer({
        "bootstrap.servers": broker,
        "group.id": f"check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen = 0
    deadline = time.time() + timeout
    # After N records, keep reading for a moment: extra records (duplicates) must show.
    settle = None
    while time.time() < deadline and (settle is None or time.time() < settle):
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            continue
        headers = {}
        for k, v in msg.headers() or []:
            headers[k] = v.decode("utf-8", "replace") if v is not None else None
        out = {
            "key": msg.key().decode("utf-8", "replace") if msg.key() is not None else None,
            "partition": msg.partition(),
            "offset": msg.offset(),
            "headers": headers,
            "value_b64": base64.b64encode(msg.value() or b"").decode(),
        }
        if decode is not None:
            out["data"] = decode(msg.value())
        print(json.dumps(out), flush=True)
        seen += 1
        if seen >= n and settle is None:
            settle = time.time() + 2.0
    consumer.close()


def committed(broker, group, topic):
    """Sum of the group's committed offsets over the topic's partitions: on a fresh
    topic, the number of records the group has acknowledged. (Watermarks would be the
    usual way to compute lag, but the test broker reports them per batch.)"""
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
    total = sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    consumer.close()
    print(total)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(*args[:3], one_per_batch="--one-per-batch" in args)
    elif cmd == "consume":
        avro = args[args.index("--avro") + 1] if "--avro" in args else None
        timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 60.0
        consume(args[0], args[1], int(args[2]), avro, timeout)
    elif cmd == "committed":
        committed(*args)
    else:
        sys.exit(__doc__)
