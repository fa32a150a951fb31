#!/usr/bin/env python3
"""Assertions on infra/terraform that checkov does not make, on the parsed HCL (python-hcl2):

- every Lambda event source mapping reports partial batch failures
  (function_response_types = ["ReportBatchItemFailures"]), bisects a failing batch on Kinesis
  and has an on-failure destination;
- no IAM action anywhere is a wildcard ("*", "service:*", "service:Get*"): policy documents,
  inline JSON policies;
- every ALB sets idle_timeout (WebSockets) and every target group has stickiness on;
- every CloudWatch log group has a retention and a KMS key;
- every variable without a default has a validation block, so an empty or malformed value
  fails naming it; and the example environment's variables all have one;
- no secret version holds a literal: secret_string comes from a variable or a generated value.

    python3 scripts/check_terraform.py [infra/terraform]

Prints each failure with its file; exits 1 if there is any.
"""
import json
import re
import sys
from pathlib import Path

import hcl2

root = Path(sys.argv[1] if len(sys.argv) > 1 else "infra/terraform")
failures = []


def fail(path, msg):
    failures.append(f"{path.relative_to(root.parent)}: {msg}")


def unquote(v):
    return v.strip('"') if isinstance(v, str) else v


def val(body, key, default=None):
    """An attribute's value; python-hcl2 wraps each attribute in a one-element list."""
    v = body.get(key, default)
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def blocks(doc, kind):
    """(type, name, body) of every `kind` block ("resource", "data") in a parsed file."""
    for entry in doc.get(kind, []):
        for rtype, named in entry.items():
            for name, body in named.items():
                yield unquote(rtype), unquote(name), body


def flatten(v):
    if isinstance(v, list):
        for x in v:
            yield from flatten(x)
    else:
        yield v


def walk_actions(value):
    """Every string under an `actions` key or an IAM JSON "Action", anywhere in value."""
    if isinstance(value, dict):
        for k, v in value.items():
            if unquote(k) in ("actions", "Action", "not_actions", "NotAction"):
                yield from (unquote(a) for a in flatten(v) if isinstance(a, str))
            else:
                yield from walk_actions(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_actions(v)


files = sorted(root.rglob("*.tf"))
if not files:
    sys.exit(f"no .tf files under {root}")
esm = albs = tgs = 0
for path in files:
    with path.open() as f:
        try:
            doc = hcl2.load(f)
        except Exception as e:  # the parser's own error types
            fail(path, f"does not parse: {e}")
            continue
    text = path.read_text()
    for action in walk_actions(doc):
        if "*" in action:
            fail(path, f"wildcard IAM action {action!r}")
    for m in re.finditer(r'"Action"\s*:\s*"([^"]*\*[^"]*)"', text):
        fail(path, f"wildcard IAM action {m.group(1)!r} in a JSON policy")
    for rtype, name, body in blocks(doc, "resource"):
        where = f"{rtype}.{name}"
        if rtype == "aws_lambda_event_source_mapping":
            esm += 1
            if val(body, "function_response_types") != ["ReportBatchItemFailures"]:
                fail(path, f"{where}: function_response_types must be [\"ReportBatchItemFailures\"]")
            if "true" not in str(val(body, "bisect_batch_on_function_error", "")).lower():
                fail(path, f"{where}: bisect_batch_on_function_error is not on")
            dest = body.get("destination_config", [{}])
            if not (dest and dest[0].get("on_failure")):
                fail(path, f"{where}: no destination_config.on_failure")
        if rtype == "aws_lb":
            albs += 1
            if "idle_timeout" not in body:
                fail(path, f"{where}: idle_timeout not set (WebSockets idle between pings)")
        if rtype == "aws_lb_target_group":
            tgs += 1
            st = body.get("stickiness", [{}])
            if not st or str(val(st[0], "enabled")).lower() != "true":
                fail(path, f"{where}: stickiness not enabled")
        if rtype == "aws_cloudwatch_log_group":
            for attr in ("retention_in_days", "kms_key_id"):
                if attr not in body:
                    fail(path, f"{where}: {attr} not set")
        if rtype == "aws_secretsmanager_secret_version":
            value = str(val(body, "secret_string", ""))
            if not re.search(r"(var\.|random_password\.|jsonencode|join)", value):
                fail(path, f"{where}: secret_string is a literal")
    example = "environments" in path.parts
    for entry in doc.get("variable", []):
        for name, body in entry.items():
            name = unquote(name)
            if ("default" not in body or example and val(body, "default") is not None) \
                    and "validation" not in body and name not in ("tags",):
                fail(path, f"variable {name}: no validation block (a wrong value must fail naming it)")

for what, n in (("event source mapping", esm), ("ALB", albs), ("target group", tgs)):
    if n == 0:
        failures.append(f"no {what} found under {root}: the assertions above checked nothing")
for f in failures:
    print(f"FAIL {f}")
print(f"terraform assertions: {len(files)} files, {esm} event source mappings, {albs} ALBs, "
      f"{tgs} target groups; {len(failures)} failures")
sys.exit(1 if failures else 0)
