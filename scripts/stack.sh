#!/usr/bin/env bash
# The Pitboss test stack: installs (idempotently) and runs the real services the tests use,
# on loopback and free ports, as plain processes (no Docker):
#   - Apache Kafka (KRaft; the broker jars resolved from Maven Central with Maven),
#     one broker, and on request a 3-broker cluster (RF 3, min.insync.replicas 2);
#   - ClickHouse (Debian's clickhouse-server, own config and data directory), and on request
#     a 2-shard x 2-replica cluster named `pitboss` of four more servers with ZooKeeper (Debian),
#     reachable only as user `pitboss` with a random password (no `default` user);
#   - moto server (Kinesis API).
#
#   scripts/stack.sh install              install what is missing
#   scripts/stack.sh start [--cluster]    start everything (--cluster: also the 3-broker Kafka and
#                                         the 2x2 ClickHouse cluster), wait until ready, write $STACK/env
#   scripts/stack.sh stop                 stop everything started (by PID) and delete its data
#   scripts/stack.sh status               what is running
#
# $PITBOSS_STACK_DIR (default: .stack in the repository) holds configs, data, logs and `env`,
# a file of `export PITBOSS_TEST_*=…` lines for the tests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=${PITBOSS_STACK_DIR:-$ROOT/.stack}
CACHE=${PITBOSS_CACHE_DIR:-$HOME/.cache/pitboss}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# A port free now, below the kernel's ephemeral range and not handed out before in this start.
# About 30 are picked before any server binds one: a port from the ephemeral range can be
# taken meanwhile by any outgoing connection (the brokers', moto's, a test's), and the kernel
# can hand the same closed port out twice; either way a server fails with "Address already
# in use", as one CI run did. Called in $(subshells): the ports handed out are kept in a file.
free_port() {
  local p _
  for _ in $(seq 1 50); do
    p=$(python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
s = socket.socket()
port = random.randrange(10000, max(low, 10001))
try:
    s.bind(("127.0.0.1", port))
    print(port)
except OSError:
    print(0)
s.close()')
    [[ $p != 0 ]] || continue
    if ! grep -qx "$p" "$STACK/ports.given" 2>/dev/null; then
      echo "$p" >>"$STACK/ports.given"
      echo "$p"
      return 0
    fi
  done
  die "no free port in 50 tries"
}

# ---------------------------------------------------------------- install
install_apt() {
  local missing=()
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  [[ -f /usr/share/java/zookeeper.jar ]] || missing+=(zookeeper)
  # nginx in front of the gateways (tests/gateway_live.rs); run as a plain process.
  [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  # Headless Chromium for the console test (tests/browser, driven by npm playwright-core).
  command -v chromium >/dev/null || missing+=(chromium)
  # FUSE for the power-cut file system (scripts/powercut_fs.py, tests/up_live.rs).
  command -v fusermount3 >/dev/null || missing+=(fuse3)
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_moto() {
  if ! command -v moto_server >/dev/null; then
    log "pip install moto[server]"
    python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5.1,<6' 2>&1 | grep -v 'WARNING: Running pip as' >&2 || true
    hash -r
    command -v moto_server >/dev/null || die "moto_server not on PATH after pip install"
  fi
}

# mfusepy: the Python binding of libfuse 3 that scripts/powercut_fs.py (a file system losing
# what was not fsynced: power cuts in tests/up_live.rs) is written with.
MFUSEPY_VERSION=3.1.1
install_mfusepy() {
  if [[ $(python3 -c 'import importlib.metadata as m; print(m.version("mfusepy"))' 2>/dev/null) != "$MFUSEPY_VERSION" ]]; then
    log "pip install mfusepy==$MFUSEPY_VERSION"
    python3 -m pip install -q --disable-pip-version-check "mfusepy==$MFUSEPY_VERSION" 2>&1 | grep -v 'WARNING: Running pip as' >&2 || true
    python3 -c 'import mfusepy' || die "mfusepy not importable after pip install"
  fi
}

# chDB: the current ClickHouse engine in-process, for the schema check on a current release
# (tests/current_clickhouse.rs); 18.16 from Debian is the only server here.
CHDB_VERSION=26.9.0
install_chdb() {
  if [[ $(python3 -c 'import importlib.metadata as m; print(m.version("chdb-core"))' 2>/dev/null) != "$CHDB_VERSION" ]]; then
    log "pip install chdb-core==$CHDB_VERSION"
    python3 -m pip install -q --disable-pip-version-check "chdb-core==$CHDB_VERSION" 2>&1 | grep -v 'WARNING: Running pip as' >&2 || true
    python3 -c 'import chdb' || die "chdb not importable after pip install"
  fi
}

install_kafka() {
  if [[ ! -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
    rm -rf "$KAFKA_LIBS.tmp"
    mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIBS.tmp" -DincludeScope=runtime >&2
    rm -rf "$KAFKA_LIBS"
    mkdir -p "$(dirname "$KAFKA_LIBS")"
    mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  fi
}

cmd_install() {
  install_apt
  install_moto
  install_mfusepy
  install_chdb
  install_kafka
  install_grpcurl
  log "installed: kafka $KAFKA_VERSION, $(clickhouse-client --version 2>/dev/null | head -1), moto $(python3 -c 'import moto; print(moto.__version__)')"
}

# grpcurl, the client docs/api.md shows for gRPC (tests/up.rs runs its examples), built from the
# Go module proxy with the machine's Go into the cache.
GRPCURL_VERSION=1.9.3
GRPCURL=$CACHE/grpcurl-$GRPCURL_VERSION/grpcurl
install_grpcurl() {
  if [[ ! -x $GRPCURL ]]; then
    # A non-login shell may not have the machine's Go on PATH.
    command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || PATH=$PATH:/usr/local/go/bin
    command -v go >/dev/null || die "go not found: grpcurl is built with Go (install Go from go.dev)"
    log "go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v$GRPCURL_VERSION"
    GOBIN=$(dirname "$GRPCURL") go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@v$GRPCURL_VERSION" >&2
    [[ -x $GRPCURL ]] || die "grpcurl not built"
  fi
}

# ---------------------------------------------------------------- processes
spawn() { # name, logfile, command...
  local name=$1 logfile=$2
  shift 2
  mkdir -p "$STACK/pids"
  setsid "$@" >"$logfile" 2>&1 < /dev/null &
  echo $! >"$STACK/pids/$name.pid"
}

wait_for() { # description, seconds, command...
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "$what not ready after ${secs}s"; return 1; }
    sleep 0.3
  done
}

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- kafka
kafka_node() { # dir, node id, broker port, controller port, voters, cluster id, replication[, SASL_SSL port]
  local dir=$1 id=$2 port=$3 cport=$4 voters=$5 cid=$6 rf=$7 sport=${8:-}
  mkdir -p "$dir/data"
  local isr=$(( rf >= 3 ? 2 : 1 ))
  local listeners="PLAINTEXT://127.0.0.1:$port" scram=()
  if [[ -n $sport ]]; then
    # A SASL_SSL listener with SCRAM-SHA-512, as MSK serves clients (crates/bus/tests/kafka.rs,
    # `tls`): a throwaway CA, a server certificate for 127.0.0.1, and the user `pitboss` with a
    # random password, set when the storage is formatted.
    kafka_tls "$dir"
    listeners+=",SASL_SSL://127.0.0.1:$sport"
    scram=(--add-scram "SCRAM-SHA-512=[name=pitboss,password=$(cat "$dir/tls/password")]")
  fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.segment.bytes=67108864
EOF
  if [[ -n $sport ]]; then
    cat >>"$dir/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/server.pem
EOF
  fi
  cat >"$dir/log4j.properties" <<EOF
log4j.rootLogger=INFO, F
log4j.appender.F=org.apache.log4j.FileAppender
log4j.appender.F.File=$dir/server.log
log4j.appender.F.layout=org.apache.log4j.PatternLayout
log4j.appender.F.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.raft=WARN
EOF
  java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" "${scram[@]}" \
    >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
  spawn "kafka-$id" "$dir/stdout.log" java -Xms256m -Xmx768m -XX:+UseG1GC \
    -Dlog4j.configuration="file:$dir/log4j.properties" -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
}

kafka_tls() { # dir: tls/{ca.pem, server.pem (key, then certificate), password}
  local t=$1/tls
  mkdir -p "$t"
  (
    cd "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pitboss test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile san.ext -out server.crt 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in server.key >server.pem
    cat server.crt >>server.pem
    python3 -c 'import secrets; print(secrets.token_hex(16), end="")' >password
    chmod 600 ca.key server.key server.pem password
  ) || die "could not make the test TLS certificates"
}

kafka_ready() { # dir, port
  grep -q 'Kafka Server started' "$1/server.log" 2>/dev/null && port_open "$2"
}

# A random KRaft cluster id. Like Kafka's own Uuid.randomUuid, never one that starts with '-':
# the storage tool would read it as an option ("argument --cluster-id: expected one argument").
cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

start_kafka() {
  local port cport sport
  port=$(free_port); cport=$(free_port); sport=$(free_port)
  kafka_node "$STACK/kafka" 1 "$port" "$cport" "1@127.0.0.1:$cport" "$(cluster_id)" 1 "$sport"
  {
    echo "export PITBOSS_TEST_KAFKA=127.0.0.1:$port"
    echo "export PITBOSS_TEST_KAFKA_SASL_SSL=127.0.0.1:$sport"
    echo "export PITBOSS_TEST_KAFKA_SASL_PASSWORD=$(cat "$STACK/kafka/tls/password")"
    echo "export PITBOSS_TEST_KAFKA_CA=$STACK/kafka/tls/ca.pem"
  } >>"$STACK/env"
  KAFKA_WAIT+=("$STACK/kafka:$port")
}

start_kafka_cluster() {
  local cid voters="" ports=() cports=() i
  cid=$(cluster_id)
  for i in 1 2 3; do ports+=("$(free_port)"); cports+=("$(free_port)"); done
  # Node ids 11-13 (pid files kafka-11.pid …), apart from the single broker's node 1.
  for i in 0 1 2; do voters+="${voters:+,}$((i + 11))@127.0.0.1:${cports[$i]}"; done
  for i in 0 1 2; do
    kafka_node "$STACK/kafka-cluster-$((i + 11))" $((i + 11)) "${ports[$i]}" "${cports[$i]}" "$voters" "$cid" 3
    KAFKA_WAIT+=("$STACK/kafka-cluster-$((i + 11)):${ports[$i]}")
  done
  echo "export PITBOSS_TEST_KAFKA_CLUSTER=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}" >>"$STACK/env"
  echo "export PITBOSS_TEST_KAFKA_CLUSTER_PIDS=$STACK/pids" >>"$STACK/env"
}

# ---------------------------------------------------------------- clickhouse
clickhouse_config() { # dir, http port, tcp port, extra XML, users config
  local dir=$1 http=$2 tcp=$3 extra=${4:-} users=${5:-/etc/clickhouse-server/users.xml}
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas}
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/server.log</log>
        <errorlog>$dir/error.log</errorlog>
        <console>0</console>
    </logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$users</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
$extra
</yandex>
EOF
}

# A test CA and a certificate it signed for 127.0.0.1 (not a CA itself: TLS clients refuse a CA
# certificate as a server's), for ClickHouse's HTTPS port.
clickhouse_tls() { # dir
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 \
    -subj "/CN=Pitboss test CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.pem" -days 3650 -extfile "$dir/ext.cnf" 2>/dev/null
  chmod 600 "$dir/server.key" "$dir/ca.key"
}

start_clickhouse() {
  local dir=$STACK/clickhouse http tcp https
  http=$(free_port); tcp=$(free_port); https=$(free_port)
  # HTTPS too (docs/deploy.md: ClickHouse Cloud answers HTTPS alone), with a test CA that
  # clients trust through SSL_CERT_FILE.
  clickhouse_tls "$dir/tls"
  clickhouse_config "$dir" "$http" "$tcp" "    <https_port>$https</https_port>
    <openSSL>
        <server>
            <certificateFile>$dir/tls/server.pem</certificateFile>
            <privateKeyFile>$dir/tls/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>"
  spawn clickhouse "$dir/stdout.log" clickhouse-server --config-file="$dir/config.xml"
  echo "export PITBOSS_TEST_CLICKHOUSE=http://127.0.0.1:$http" >>"$STACK/env"
  echo "export PITBOSS_TEST_CLICKHOUSE_HTTPS=https://127.0.0.1:$https" >>"$STACK/env"
  echo "export PITBOSS_TEST_CLICKHOUSE_CA=$dir/tls/ca.pem" >>"$STACK/env"
  # For fault tests that stop and restart ClickHouse (tests/processor_faults.rs).
  echo "export PITBOSS_TEST_CLICKHOUSE_PIDFILE=$STACK/pids/clickhouse.pid" >>"$STACK/env"
  echo "export PITBOSS_TEST_CLICKHOUSE_CONFIG=$dir/config.xml" >>"$STACK/env"
  CLICKHOUSE_WAIT+=("$dir:$http")
}

# ZooKeeper (Debian's jar, standalone) for the replicated tables of the ClickHouse cluster.
start_zookeeper() {
  local dir=$STACK/zookeeper
  ZOOKEEPER_PORT=$(free_port)
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<EOF
tickTime=500
dataDir=$dir/data
clientPort=$ZOOKEEPER_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok
EOF
  spawn zookeeper "$dir/stdout.log" java -Xms64m -Xmx256m -cp /usr/share/java/zookeeper.jar \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg"
}

zookeeper_ok() {
  local answer
  answer=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && echo ruok >&3 && cat <&3' _ "$ZOOKEEPER_PORT")
  [[ $answer == imok ]]
}

# Cluster `pitboss`: shard 1 = servers 1, 2; shard 2 = servers 3, 4 (macros shard 1|2, replica
# ch1…ch4); and cluster `pitboss_replicas`, each of the four servers a shard of its own, through
# which the processor reads its high-water marks from every replica. As in the compose stack
# (deploy/clickhouse), the servers have no `default` user: the only one is `pitboss`, with a
# random password, which both clusters carry for the servers' queries to each other — a query
# that connects without credentials (remote() without a user, a cluster without one) fails.
# Replicas fetch parts from each other over the interserver port only with the interserver
# credentials (another random password, as deploy/clickhouse/config.d does it): a request
# without them is refused (401). Those ports go to PITBOSS_TEST_CLICKHOUSE_CLUSTER_INTERSERVER.
# The HTTP URLs, in server order, with user and password in the query string (the `clickhouse`
# crate keeps it), go to PITBOSS_TEST_CLICKHOUSE_CLUSTER.
start_clickhouse_cluster() {
  local i s r http=() tcp=() inter=() urls="" shards="" replicas="" password credentials interserver
  password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  interserver=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  credentials="<user>pitboss</user><password>$password</password>"
  for i in 0 1 2 3; do http+=("$(free_port)"); tcp+=("$(free_port)"); inter+=("$(free_port)"); done
  for s in 0 1; do
    shards+="<shard><internal_replication>true</internal_replication>"
    for r in 0 1; do
      shards+="<replica><host>127.0.0.1</host><port>${tcp[$((s * 2 + r))]}</port>$credentials</replica>"
    done
    shards+="</shard>"
  done
  for i in 0 1 2 3; do
    replicas+="<shard><replica><host>127.0.0.1</host><port>${tcp[$i]}</port>$credentials</replica></shard>"
  done
  for i in 0 1 2 3; do
    local dir=$STACK/clickhouse-cluster-$((i + 1))
    # Debian's users.xml (profiles, quotas) with users.d on top, as in deploy/clickhouse.
    mkdir -p "$dir/users.d"
    cp /etc/clickhouse-server/users.xml "$dir/users.xml"
    (
      umask 077
      cat >"$dir/users.d/pitboss.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <users>
        <default remove="remove"/>
        <pitboss>
            <password>$password</password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </pitboss>
    </users>
</yandex>
EOF
    )
    clickhouse_config "$dir" "${http[$i]}" "${tcp[$i]}" "
    <interserver_http_port>${inter[$i]}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_credentials><user>interserver</user><password>$interserver</password></interserver_http_credentials>
    <zookeeper><node><host>127.0.0.1</host><port>$ZOOKEEPER_PORT</port></node></zookeeper>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <macros><shard>$((i / 2 + 1))</shard><replica>ch$((i + 1))</replica></macros>
    <remote_servers><pitboss>$shards</pitboss><pitboss_replicas>$replicas</pitboss_replicas></remote_servers>" \
      "$dir/users.xml"
    chmod 600 "$dir/config.xml"
    spawn "clickhouse-cluster-$((i + 1))" "$dir/stdout.log" clickhouse-server --config-file="$dir/config.xml"
    CLICKHOUSE_WAIT+=("$dir:${http[$i]}")
    urls+="${urls:+,}http://127.0.0.1:${http[$i]}/?user=pitboss&password=$password"
  done
  echo "export PITBOSS_TEST_CLICKHOUSE_CLUSTER='$urls'" >>"$STACK/env"
  echo "export PITBOSS_TEST_CLICKHOUSE_CLUSTER_NAME=pitboss" >>"$STACK/env"
  echo "export PITBOSS_TEST_CLICKHOUSE_CLUSTER_INTERSERVER='$(IFS=,; echo "${inter[*]/#/http://127.0.0.1:}")'" >>"$STACK/env"
  # For fault tests that kill and restart a replica: pids/clickhouse-cluster-N.pid and
  # clickhouse-cluster-N/config.xml under it.
  echo "export PITBOSS_TEST_CLICKHOUSE_CLUSTER_STACK=$STACK" >>"$STACK/env"
}

# ---------------------------------------------------------------- moto
start_moto() {
  local port
  port=$(free_port)
  mkdir -p "$STACK/moto"
  spawn moto "$STACK/moto/server.log" moto_server -H 127.0.0.1 -p "$port"
  echo "export PITBOSS_TEST_KINESIS=http://127.0.0.1:$port" >>"$STACK/env"
  MOTO_PORT=$port
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local cluster=0
  for a in "$@"; do
    case $a in
      --cluster) cluster=1 ;;
      *) die "unknown option $a" ;;
    esac
  done
  [[ -d $STACK/pids ]] && cmd_stop
  rm -rf "$STACK"
  mkdir -p "$STACK"
  : >"$STACK/env"
  chmod 600 "$STACK/env" # with --cluster, it holds the ClickHouse cluster's password
  echo "export PITBOSS_TEST_GRPCURL=$GRPCURL" >>"$STACK/env"
  KAFKA_WAIT=()
  CLICKHOUSE_WAIT=()
  local t0=$SECONDS
  start_kafka
  ((cluster)) && start_kafka_cluster
  start_clickhouse
  if ((cluster)); then
    start_zookeeper
    wait_for zookeeper 60 zookeeper_ok \
      || { tail -20 "$STACK/zookeeper/stdout.log" >&2 || true; die "zookeeper did not start"; }
    start_clickhouse_cluster
  fi
  start_moto
  local c
  for c in "${CLICKHOUSE_WAIT[@]}"; do
    wait_for "clickhouse ${c%%:*}" 60 curl -sf "http://127.0.0.1:${c##*:}/ping" \
      || { tail -20 "${c%%:*}/error.log" "${c%%:*}/stdout.log" >&2 || true; die "clickhouse did not start"; }
  done
  wait_for moto 60 curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" \
    || { tail -20 "$STACK/moto/server.log" >&2; die "moto did not start"; }
  local k
  for k in "${KAFKA_WAIT[@]}"; do
    wait_for "kafka ${k%%:*}" 120 kafka_ready "${k%%:*}" "${k##*:}" \
      || { tail -30 "${k%%:*}/server.log" "${k%%:*}/stdout.log" >&2 || true; die "kafka did not start"; }
  done
  log "ready in $((SECONDS - t0))s:"
  sed -e 's/^export /  /' -e "s/password=[^&,']*/password=…/g" "$STACK/env" >&2
}

cmd_stop() {
  [[ -d $STACK/pids ]] || return 0
  local f pid
  for f in "$STACK"/pids/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local alive=0
    for f in "$STACK"/pids/*.pid; do
      [[ -e $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.2
  done
  for f in "$STACK"/pids/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$STACK/pids"
  log "stopped"
}

cmd_status() {
  [[ -d $STACK/pids ]] || { echo "not running"; return 0; }
  local f
  for f in "$STACK"/pids/*.pid; do
    local name pid
    name=$(basename "$f" .pid); pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: dead (pid $pid)"; fi
  done
  cat "$STACK/env"
}

case ${1:-} in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start [--cluster]|stop|status" >&2; exit 2 ;;
esac
