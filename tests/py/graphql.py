"""An independent GraphQL client for the console tests (Python `requests`).

  graphql.py URL TOKEN QUERY [VARIABLES_JSON]
      POSTs {"query", "variables"} to URL with the bearer TOKEN ("" for none) and
      prints {"status": N, "body": <JSON or text>}
  graphql.py URL TOKEN --raw BODY | --raw @FILE
      POSTs BODY, or FILE's bytes, as they are (for malformed or oversized requests)
"""

import json
import sys

import requests

url, token = sys.argv[1], sys.argv[2]
headers = {"Content-Type": "application/json"}
if token:
    headers["Authorization"] = "Bearer " + token
if sys.argv[3] == "--raw":
    data = sys.argv[4].encode()
    if data.startswith(b"@"):
        with open(data[1:], "rb") as f:
            data = f.read()
else:
    variables = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    data = json.dumps({"query": sys.argv[3], "variables": variables}).encode()
response = requests.post(url, data=data, headers=headers, timeout=60)
try:
    body = response.json()
except ValueError:
    body = response.text
print(json.dumps({"status": response.status_code, "body": body}))
