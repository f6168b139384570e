"""Checks live API responses against schemas/openapi.yaml (PyYAML + jsonschema).

  openapi_check.py SPEC BASE_URL CASES.json
    CASES: [{"path": "/flows/{tenant}/{flow_id}", "url": "/flows/t/f", "token": "...",
             "method": "GET" (default), "body": <JSON> (optional)}]
  Each case is requested; its status must be documented for that path, and the body
  must validate against the documented schema. Prints one line per case; exits 1 on
  any mismatch. Also fails when a documented path answers 404 "no route".
"""

import json
import sys
import urllib.error
import urllib.request

import yaml
from jsonschema import Draft202012Validator


spec_path, base, cases_path = sys.argv[1:4]
with open(spec_path) as f:
    spec = yaml.safe_load(f)
with open(cases_path) as f:
    cases = json.load(f)




def resolve(node):
    """Inline #/ references (response objects and schemas)."""
    if isinstance(node, dict):
        if "$ref" in node and node["$ref"].startswith("#/"):
            target = spec
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            return resolve(target)
        return {k: resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v) for v in node]
    return node


failures = 0
documented = set(spec["paths"])
for case in cases:
    assert case["path"] in documented, f"{case['path']} is not documented"
    method = case.get("method") or "GET"
    data = json.dumps(case["body"]).encode() if case.get("body") is not None else None
    request = urllib.request.Request(base + case["url"], data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if case.get("token"):
        request.add_header("Authorization", "Bearer " + case["token"])
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    operation = spec["paths"][case["path"]].get(method.lower())
    if operation is None:
        print(f"FAIL {method} {case['path']} is not documented")
        failures += 1
        continue
    responses = operation["responses"]
    if str(status) not in responses:
        print(f"FAIL {case['url']}: status {status} is not documented ({sorted(responses)})")
        failures += 1
        continue
    response = resolve(responses[str(status)])
    schema = response["content"]["application/json"]["schema"]
    body = json.loads(raw)
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        for e in errors[:5]:
            print(f"FAIL {case['url']} ({status}): {list(e.path)}: {e.message}")
        failures += 1
    else:
        print(f"ok   {method} {case['url']} ({status})")
sys.exit(1 if failures else 0)
