#!/usr/bin/env python3
"""Independent check of archived flow parts: shares no code with flow-archiver.

    verify_parts.py RECORDS EXPECTED OBJECTS_ROOT

RECORDS: JSON lines {"key": ..., "data": {flow.archived data}} as an independent
client decoded them. EXPECTED: {"tenant/flow": [event ids in sequence order]} of every
terminal flow. OBJECTS_ROOT: the directory the objects' keys resolve in.

For every part: the object's SHA-256, the frame's SHA-256, the frame decompressed by
the `zstandard` module, its header and trailer, the events' SHA-256 and count, and the
event ids in sequence order. Every expected flow must be archived as exactly one part
(part 1), and every part by identical records. Prints a JSON summary; exits 1 with the
first problems on stderr.
"""

import hashlib
import json
import os
import sys

import zstandard


def main(records_path, expected_path, root):
    with open(expected_path) as f:
        expected = json.load(f)
    parts = {}
    with open(records_path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            d = r["data"]
            parts.setdefault((d["tenant"], d["flow_id"], d["part"]), []).append(r)
    problems = []
    flows = {}
    objects = {}
    events = 0
    dctx = zstandard.ZstdDecompressor()
    for (tenant, flow, part), copies in sorted(parts.items()):
        name = f"{tenant}/{flow}"
        flows.setdefault(name, []).append(part)
        first = copies[0]
        if any(c["data"] != first["data"] or c["key"] != first["key"] for c in copies):
            problems.append(f"{name}/{part}: its records differ")
        d = first["data"]
        key = d["object_key"]
        if key not in objects:
            with open(os.path.join(root, key), "rb") as f:
                objects[key] = f.read()
        obj = objects[key]
        if hashlib.sha256(obj).hexdigest() != d["object_sha256"]:
            problems.append(f"{name}/{part}: object {key} checksum differs")
            continue
        frame = obj[d["offset"]:d["offset"] + d["length"]]
        if hashlib.sha256(frame).hexdigest() != d["frame_sha256"]:
            problems.append(f"{name}/{part}: frame checksum differs")
            continue
        plain = dctx.decompressobj().decompress(frame)
        if d.get("plain_offset") is not None:
            # flow-archive/v2: the part is a byte range of a frame shared with others.
            plain = plain[d["plain_offset"]:d["plain_offset"] + d["plain_length"]]
        lines = plain.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        header, body, trailer = json.loads(lines[0]), lines[1:-1], json.loads(lines[-1])
        if (header.get("tenant"), header.get("flow_id"), header.get("part")) != (tenant, flow, part):
            problems.append(f"{name}/{part}: the header names another part: {header}")
        if header.get("record") != "header" or trailer.get("record") != "trailer":
            problems.append(f"{name}/{part}: header or trailer missing")
        digest = hashlib.sha256(b"".join(line + b"\n" for line in body)).hexdigest()
        # v1 trailers repeat the digest; v2 keeps it in the manifest (the record) alone.
        if digest != d["events_sha256"] or trailer.get("events_sha256", digest) != digest:
            problems.append(f"{name}/{part}: events checksum differs")
        ids = [json.loads(line)["id"] for line in body]
        events += len(ids)
        if len(ids) != d["event_count"]:
            problems.append(f"{name}/{part}: {len(ids)} events, record says {d['event_count']}")
        if ids != expected.get(name):
            problems.append(f"{name}/{part}: events {ids} are not {expected.get(name)}")
    for name, got in sorted(flows.items()):
        if got != [1]:
            problems.append(f"{name}: split into parts {sorted(got)}")
    missing = sorted(set(expected) - set(flows))
    if missing:
        problems.append(f"{len(missing)} flow(s) not archived, e.g. {missing[:5]}")
    extra = sorted(set(flows) - set(expected))
    if extra:
        problems.append(f"{len(extra)} unexpected flow(s) archived, e.g. {extra[:5]}")
    print(json.dumps({"parts": len(parts), "flows": len(flows), "events": events,
                      "objects": len(objects), "problems": len(problems)}))
    if problems:
        print("\n".join(problems[:30]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
