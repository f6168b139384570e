"""An independent HTTP client for the API tests (Python's standard library only).

  http_get.py URL [TOKEN [METHOD [JSON_BODY | @FILE]]]
      prints {"status": N, "body": <JSON or text>}
"""

import json
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
method = sys.argv[3] if len(sys.argv) > 3 else "GET"
data = sys.argv[4].encode() if len(sys.argv) > 4 else None
if data is not None and data.startswith(b"@"):
    with open(data[1:], "rb") as f:  # a body too large for the command line
        data = f.read()
request = urllib.request.Request(url, data=data, method=method)
if data is not None:
    request.add_header("Content-Type", "application/json")
if len(sys.argv) > 2 and sys.argv[2]:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, raw = response.status, response.read()
except urllib.error.HTTPError as e:
    status, raw = e.code, e.read()
try:
    body = json.loads(raw)
except ValueError:
    body = raw.decode("utf-8", "replace")
print(json.dumps({"status": status, "body": body}))
