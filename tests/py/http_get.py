"""An independent HTTP client for the API tests (Python's standard library only).

  http_get.py URL [TOKEN]   prints {"status": N, "body": <JSON or text>}
"""

import json
import sys
import urllib.error
import urllib.request

url = sys.argv[1]
request = urllib.request.Request(url)
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
