#!/usr/bin/env python3
"""Assertions on infra/terraform that checkov does not make, on the parsed HCL (python-hcl2):

- every Lambda event source mapping reports partial batch failures
  (function_response_types = ["ReportBatchItemFailures"]), bisects a failing batch, has an
  on-failure destination, and on Kafka runs in provisioned mode (which those controls need);
- no IAM action anywhere is a wildcard ("*", "service:*", "service:Get*"): policy documents,
  inline JSON policies;
- every policy statement that lets a role publish to Kinesis (kinesis:PutRecord/PutRecords)
  also grants kinesis:ListShards: the bus lists a stream's shards before its first publish to
  it, so without it every publish is refused;
- every ALB sets idle_timeout (WebSockets) and every target group has stickiness on;
- every CloudWatch log group has a retention and a KMS key;
- every variable without a default has a validation block, so an empty or malformed value
  fails naming it; and the example environment's variables all have one;
- no secret version holds a literal: secret_string comes from a variable or a generated value;
- no plain environment (a module call's `environment`, a Lambda's `environment.variables`)
  holds a credential (PITBOSS_KAFKA_OPTIONS, *PASSWORD*, *SECRET_ACCESS_KEY): those come
  through Secrets Manager (ECS `secrets`, the Lambdas' PITBOSS_KAFKA_OPTIONS_SECRET). Keys
  written in the file only (not those of a local or variable it passes), upper case as
  environment variables are; values are not inspected;
- references, what `terraform validate` would reject without needing the providers (it cannot
  run here: no provider registry): in each directory of .tf files, every var.X, local.X, data.T.N,
  resource T.N (T of a provider in required_providers), module.N and module.N.OUT is declared
  (OUT an output of the module's source directory); an instance key only on what has count or
  for_each, and one where it has; every module call passes variables the module declares, and
  every one it declares without a default.

    python3 scripts/check_terraform.py [infra/terraform]
    python3 scripts/check_terraform.py --self-test

Prints each failure with its file; exits 1 if there is any. --self-test runs the reference check
on scripts/testdata/terraform-bad and the assertions on scripts/testdata/terraform-insecure; each
must fail with exactly the messages of its expected.txt (the check catches what it should, and
flags none of the valid forms there).
"""
import json
import re
import sys
from pathlib import Path

import hcl2

failures = []
# The directory whose parent paths are reported relative to (set before each check).
root = Path("infra/terraform")


def fail(path, msg):
    failures.append(f"{path.resolve().relative_to(root.resolve().parent)}: {msg}")


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


def action_lists(value):
    """Every `actions` list of a policy document statement, anywhere in value (dynamic ones too)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if unquote(k) == "actions":
                yield [unquote(a) for a in flatten(v) if isinstance(a, str)]
            else:
                yield from action_lists(v)
    elif isinstance(value, list):
        for v in value:
            yield from action_lists(v)


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


# ------------------------------------------------------------------ references
# python-hcl2 gives each expression back as text: "${...}" around an expression, templates as
# they are ("${var.name}-ingest"), string literals inside an expression quoted with " or '
# (object keys too: {'name': '${k}'}), "$${" for a literal "${". code_of() keeps the expression
# text only, string literals' own text dropped, their interpolations kept.

META_ARGS = {"source", "version", "count", "for_each", "depends_on", "providers"}
ALWAYS = {"each", "count", "self", "path", "terraform"}
IDENT = r"[A-Za-z_][\w-]*"
CHAIN = re.compile(rf"(?<![\w.])({IDENT})((?:\.(?:{IDENT}|\d+|\*)|\[(?:[^\[\]]|\[[^\[\]]*\])*\])*)(\s*\()?")
PART = re.compile(rf"\.({IDENT}|\d+|\*)|\[((?:[^\[\]]|\[[^\[\]]*\])*)\]")
FOR_VARS = re.compile(rf"\bfor\s+({IDENT})(?:\s*,\s*({IDENT}))?\s+in\b")


def code_of(s):
    """The expression text of a python-hcl2 value: what is inside ${...} and %{...}, at any
    depth of nesting in string literals, each string literal's own text replaced by ""."""
    out, stack, i = [], [["str", None]], 0  # frames: ["str", quote or None (a template)], ["expr", depth]
    while i < len(s):
        frame, c = stack[-1], s[i]
        if frame[0] == "str":
            if c == "\\" and frame[1]:
                i += 2
            elif s.startswith(("$${", "%%{"), i):
                i += 3
            elif s.startswith(("${", "%{"), i):
                stack.append(["expr", 0])
                out.append(" ")
                i += 2
            else:
                if c == frame[1]:
                    stack.pop()
                    out.append('""')
                i += 1
        else:
            i += 1
            if c in "\"'":
                stack.append(["str", c])
                continue
            if c == "{":
                frame[1] += 1
            elif c == "}":
                if frame[1] == 0:
                    stack.pop()
                    out.append(" ")
                    continue
                frame[1] -= 1
            out.append(c)
    return "".join(out)


def references(s):
    """(root, [parts]) of every reference in a python-hcl2 value; a part is ("attr", name) or
    ("index", text); function calls and names without a traversal are left out."""
    code = code_of(s)
    local_names = {n for m in FOR_VARS.finditer(code) for n in m.groups() if n}
    for m in CHAIN.finditer(code):
        root, rest, call = m.groups()
        if call or not rest or root in local_names:
            continue
        parts = [("attr", a) if a else ("index", ix.strip()) for a, ix in PART.findall(rest)]
        yield root, parts


def load_dir(d):
    """Declarations of one directory of .tf files (a module)."""
    decl = {"variable": {}, "locals": set(), "output": set(), "resource": {}, "data": {}, "module": {},
            "providers": set(), "files": []}
    for path in sorted(d.glob("*.tf")):
        try:
            with path.open() as f:
                doc = hcl2.load(f)
        except Exception:  # reported by the file loop below
            continue
        decl["files"].append((path, doc))
        for entry in doc.get("variable", []):
            for name, body in entry.items():
                decl["variable"][unquote(name)] = body
        for entry in doc.get("output", []):
            decl["output"].update(unquote(n) for n in entry)
        for entry in doc.get("locals", []):
            decl["locals"].update(k for k in entry if not k.startswith("__"))
        for kind in ("resource", "data"):
            for rtype, name, body in blocks(doc, kind):
                decl[kind][(rtype, name)] = body
        for entry in doc.get("module", []):
            for name, body in entry.items():
                decl["module"][unquote(name)] = body
        for tf in doc.get("terraform", []):
            for rp in tf.get("required_providers", []):
                decl["providers"].update(k for k in rp if not k.startswith("__"))
    return decl


def module_source(d, body):
    src = unquote(val(body, "source", ""))
    return (d / src).resolve() if isinstance(src, str) and src.startswith(("./", "../")) else None


def walk_values(value, scope, key=None):
    """(attribute, string, names in scope) of every string under a block body: dynamic blocks
    bring their iterator's name into scope (the block's label, or its `iterator`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k.startswith("__") or k in ("provider", "providers", "ignore_changes"):
                continue
            if k == "dynamic":
                for entry in v:
                    for label, body in entry.items():
                        it = code_of(str(val(body, "iterator", "${%s}" % unquote(label)))).strip()
                        yield from walk_values(body, scope | {it}, "dynamic " + unquote(label))
            else:
                yield from walk_values(v, scope, k if key is None else key)
    elif isinstance(value, list):
        for v in value:
            yield from walk_values(v, scope, key)
    elif isinstance(value, str):
        yield key, value, scope


REFS_CHECKED = {}


def check_references(root):
    """Messages for what `terraform validate` would reject in the modules under root; counts
    the references it checked by kind in REFS_CHECKED."""
    root = root.resolve()
    out, dirs, cache = [], sorted({p.parent for p in root.rglob("*.tf") if ".terraform" not in p.parts}), {}

    def decl_of(d):
        if d not in cache:
            cache[d] = load_dir(d)
        return cache[d]

    for d in dirs:
        decl = decl_of(d)
        prefixes = tuple(p + "_" for p in decl["providers"])

        def instance(what, body, parts, i):
            """An instance key where `what` has count/for_each, none where it has not."""
            multi = "count" in body or "for_each" in body
            nxt = parts[i] if i < len(parts) else None
            if nxt and nxt[0] == "index" and nxt[1] != "*" and not multi:
                return f"{what} has no count or for_each: [{nxt[1]}] is not an instance of it"
            if nxt and nxt[0] == "attr" and nxt[1] != "*" and multi:
                return f"{what} has count or for_each: .{nxt[1]} needs an instance key ([0], [key], [*])"
            return None

        for path, doc in decl["files"]:
            rel = path.relative_to(root.parent)
            for kind, entries in doc.items():
                if kind in ("terraform", "moved", "removed", "import"):
                    continue
                for entry in entries:
                    if kind == "locals":
                        named = [("locals", entry)]
                    elif kind in ("resource", "data"):
                        named = [(("data." if kind == "data" else "") + f"{unquote(t)}.{unquote(n)}", b)
                                 for t, bs in entry.items() for n, b in bs.items()]
                    else:
                        named = [(f"{kind}.{unquote(n)}", b) for n, b in entry.items()]
                    for where, body in named:
                        line = body.get("__start_line__") if isinstance(body, dict) else None
                        if line is None:  # python-hcl2 gives no line for some blocks (output)
                            m = re.search(r'^%s\s+"?%s"?' % tuple(map(re.escape, where.split(".", 1))),
                                          path.read_text(), re.M)
                            line = path.read_text().count("\n", 0, m.start()) + 1 if m else "?"
                        seen = set()

                        def bad(msg):
                            if msg not in seen:
                                seen.add(msg)
                                out.append(f"{rel}:{line}: {where}: {msg}")

                        for attr, s, scope in walk_values(body, set()):
                            for rootname, parts in references(s):
                                names = [p[1] if p[0] == "attr" else None for p in parts]
                                first = names[0] if names else None
                                if rootname in ALWAYS or rootname in scope:
                                    continue
                                kind_of = rootname if rootname in ("var", "local", "data", "module") else "resource"
                                REFS_CHECKED[kind_of] = REFS_CHECKED.get(kind_of, 0) + 1
                                if rootname == "var":
                                    if first not in decl["variable"]:
                                        bad(f"{attr}: var.{first}: no variable \"{first}\" in {d.relative_to(root.parent)}")
                                elif rootname == "local":
                                    if first not in decl["locals"]:
                                        bad(f"{attr}: local.{first}: no such key in a locals block of {d.relative_to(root.parent)}")
                                elif rootname == "data":
                                    n = names[1] if len(names) > 1 else None
                                    body2 = decl["data"].get((first, n))
                                    if body2 is None:
                                        bad(f"{attr}: data.{first}.{n} is not declared (no data \"{first}\" \"{n}\")")
                                    elif msg := instance(f"data.{first}.{n}", body2, parts, 2):
                                        bad(f"{attr}: {msg}")
                                elif rootname == "module":
                                    call = decl["module"].get(first)
                                    if call is None:
                                        bad(f"{attr}: module.{first} is not declared")
                                        continue
                                    if msg := instance(f"module.{first}", call, parts, 1):
                                        bad(f"{attr}: {msg}")
                                    outs = [p[1] for p in parts[1:] if p[0] == "attr" and p[1] != "*"][:1]
                                    src = module_source(d, call)
                                    if outs and src is not None and src.is_dir() and outs[0] not in decl_of(src)["output"]:
                                        bad(f"{attr}: module.{first}.{outs[0]}: no output \"{outs[0]}\" in {src.relative_to(root.parent.resolve())}")
                                elif rootname.startswith(prefixes):
                                    body2 = decl["resource"].get((rootname, first))
                                    if body2 is None:
                                        bad(f"{attr}: {rootname}.{first} is not declared (no resource \"{rootname}\" \"{first}\")")
                                    elif msg := instance(f"{rootname}.{first}", body2, parts, 1):
                                        bad(f"{attr}: {msg}")
                                else:
                                    bad(f"{attr}: {rootname}.{first}: {rootname!r} is not a variable, local, data source, "
                                        f"module, resource type (providers: {', '.join(sorted(decl['providers'])) or 'none'}) or iterator here")
                        if kind == "module":
                            src = module_source(d, body)
                            if src is None:
                                continue
                            if not src.is_dir():
                                bad(f"source {val(body, 'source')!r}: no such directory")
                                continue
                            called = decl_of(src)["variable"]
                            args = {k for k in body if not k.startswith("__") and k not in META_ARGS}
                            for a in sorted(args - called.keys()):
                                bad(f"argument {a}: the module ({src.relative_to(root.parent.resolve())}) declares no variable \"{a}\"")
                            for v in sorted(k for k, b in called.items() if "default" not in b and k not in args):
                                bad(f"variable {v} of {src.relative_to(root.parent.resolve())} has no default and is not passed")
    return out


CREDENTIAL_KEY = re.compile(r"\b(PITBOSS_KAFKA_OPTIONS|\w*PASSWORD\w*|\w*SECRET_ACCESS_KEY)\b")


def plain_environments(doc):
    """(where, text) of every plain environment in a parsed file."""
    for entry in doc.get("module", []):
        for name, body in entry.items():
            if "environment" in body:
                yield f"module.{unquote(name)}", str(val(body, "environment"))
    for rtype, name, body in blocks(doc, "resource"):
        if rtype == "aws_lambda_function":
            for env in body.get("environment", []):
                yield f"{rtype}.{name}", str(env.get("variables", ""))


def check_assertions(files):
    """The security and shape assertions over `files`; returns the counts of what they saw."""
    esm = albs = tgs = 0
    mappings = {}  # directory (module) -> its event source mappings

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
        for actions in action_lists(doc):
            if {"kinesis:PutRecord", "kinesis:PutRecords"} & set(actions) \
                    and "kinesis:ListShards" not in actions:
                fail(path, f"a statement allows {', '.join(a for a in actions if a.startswith('kinesis:Put'))} without kinesis:ListShards (the bus lists a stream's shards before it publishes)")
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
                # Kafka (MSK) honours batchItemFailures, bisection, retries and record age only
                # in provisioned mode.
                if "topics" in body and "provisioned_poller_config" not in str(body):
                    fail(path, f"{where}: a Kafka mapping without provisioned_poller_config ignores partial batch responses")
                dest = body.get("destination_config", [{}])
                if not (dest and dest[0].get("on_failure")):
                    fail(path, f"{where}: no destination_config.on_failure")
                mappings.setdefault(path.parent, []).append((path, where, str(body)))
            if rtype == "aws_kinesis_stream" and "ON_DEMAND" in str(body):
                fail(path, f"{where}: on-demand (its shards split by themselves; the bus needs events' and its companions' counts fixed and equal)")
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
        for where, env in plain_environments(doc):
            for key in sorted(set(CREDENTIAL_KEY.findall(env))):
                fail(path, f"{where}: plain environment holds {key} (a credential: pass it through Secrets Manager)")
        example = "environments" in path.parts
        for entry in doc.get("variable", []):
            for name, body in entry.items():
                name = unquote(name)
                if ("default" not in body or example and val(body, "default") is not None) \
                        and "validation" not in body and name not in ("tags",):
                    fail(path, f"variable {name}: no validation block (a wrong value must fail naming it)")
    # Ingest moves a hot player's excess to events_overflow: a module whose function reads the
    # events must read that stream too, or the rules miss what a fast bot sends.
    for ms in mappings.values():
        if not any("events_overflow" in body for _, _, body in ms):
            for path, where, _ in ms:
                fail(path, f"{where}: no mapping of its module reads events_overflow (a hot player's excess)")
    return esm, albs, tgs


if sys.argv[1:2] == ["--self-test"]:
    ok = True
    fixtures = Path(__file__).resolve().parent / "testdata"
    for name, run in (("terraform-bad", lambda f: check_references(f)),
                      ("terraform-insecure", None)):
        fixture = fixtures / name
        root = fixture
        if run is None:
            failures.clear()
            check_assertions(sorted(fixture.rglob("*.tf")))
            got = list(failures)
        else:
            got = run(fixture)
        want = [l for l in (fixture / "expected.txt").read_text().splitlines() if l and not l.startswith("#")]
        for m in sorted(set(want) - set(got)):
            print(f"FAIL self-test: not reported: {m}")
        for m in sorted(set(got) - set(want)):
            print(f"FAIL self-test: reported, not expected: {m}")
        same = set(got) == set(want) and len(got) == len(want)
        ok &= same
        print(f"self-test on {fixture.name}: {len(got)} findings, {len(want)} expected: "
              f"{'as expected' if same else 'MISMATCH'}")
    sys.exit(0 if ok else 1)

root = Path(sys.argv[1] if len(sys.argv) > 1 else "infra/terraform")
files = sorted(root.rglob("*.tf"))
if not files:
    sys.exit(f"no .tf files under {root}")
esm, albs, tgs = check_assertions(files)
refs = check_references(root)
failures.extend(refs)
for what, n in (("event source mapping", esm), ("ALB", albs), ("target group", tgs),
                ("var. reference", REFS_CHECKED.get("var", 0)), ("module output reference", REFS_CHECKED.get("module", 0))):
    if n == 0:
        failures.append(f"no {what} found under {root}: the assertions above checked nothing")
for f in failures:
    print(f"FAIL {f}")
print(f"terraform assertions: {len(files)} files, {esm} event source mappings, {albs} ALBs, "
      f"{tgs} target groups, {sum(REFS_CHECKED.values())} references ("
      f"{', '.join(f'{n} {k}' for k, n in sorted(REFS_CHECKED.items()))}) in {len({p.parent for p in files})} "
      f"module directories; "
      f"{len(failures)} failures")
sys.exit(1 if failures else 0)
