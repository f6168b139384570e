"""Reads a YAML file's documents (PyYAML), prints them as one JSON array.

  yaml_to_json.py FILE
"""

import json
import sys

import yaml

with open(sys.argv[1]) as f:
    print(json.dumps(list(yaml.safe_load_all(f))))
