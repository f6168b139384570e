"""Scrapes /metrics and parses it with the official Python client's OpenMetrics parser.

  metrics_check.py URL   prints {"families": {name: type}, "samples": {"name{k=v}": value}}
  Exits 1 when the text does not parse.
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    text = r.read().decode()
families, samples = {}, {}
for family in text_string_to_metric_families(text):
    families[family.name] = family.type
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps({"families": families, "samples": samples}))
