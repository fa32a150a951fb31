#!/usr/bin/env bash
# Builds the Lambda functions for the `provided.al2023` runtime: each binary named `bootstrap`
# at the root of a zip, written to dist/lambda/ (the paths infra/terraform takes as
# `ingest_lambda_zip` and `antifraud_lambda_zip`, and localstack/ready.d deploys):
#   ingest.zip     the binary `pitboss-ingest-lambda` of package `pitboss-ingest`
#   antifraud.zip  the binary `pitboss-antifraud-lambda` of package `pitboss-antifraud`
#
#   scripts/lambda-zip.sh                        # both, x86_64 (default)
#   LAMBDA_FUNCTIONS=ingest scripts/lambda-zip.sh   # only these (space-separated: ingest antifraud)
#   LAMBDA_ARCH=arm64 scripts/lambda-zip.sh
#   LAMBDA_BUILDER=cargo scripts/lambda-zip.sh   # plain cargo + zip, no cargo-lambda/zig
#   LAMBDA_KEEP_DEBUG=1 scripts/lambda-zip.sh    # keep the line tables (backtraces with
#                                                # file:line; a 3x larger zip)
#
# cargo-lambda (PyPI: a static binary plus ziglang, links against an old glibc so the binary
# runs on AL2023) builds offline; it is installed when missing. By default the debug sections
# are stripped from `bootstrap` (objcopy --strip-debug, as the Docker image does): measured on
# the ingest function, 93.7 MB -> 24.5 MB unzipped, 28.9 MB -> 9.2 MB zipped (docs/deploy.md).
# Each package's `lambda` feature builds its Lambda binary (lambda_runtime / lambda_http, the AWS
# SDK, the Kinesis bus); it is off by default. On the shared build machine every cargo run takes
# /var/cache/pitboss/build.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LAMBDA_VERSION=1.9.2
ARCH=${LAMBDA_ARCH:-x86_64}
BUILDER=${LAMBDA_BUILDER:-cargo-lambda}
OUT_DIR=${LAMBDA_OUT_DIR:-dist/lambda}
read -r -a FUNCTIONS <<<"${LAMBDA_FUNCTIONS:-ingest antifraud}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
export CARGO_INCREMENTAL=0

case "$ARCH" in
  x86_64) arch_flag=--x86-64 ;;
  arm64) arch_flag=--arm64 ;;
  *) echo "lambda-zip: LAMBDA_ARCH must be x86_64 or arm64, got '$ARCH'" >&2; exit 2 ;;
esac
command -v objcopy >/dev/null || [[ -n ${LAMBDA_KEEP_DEBUG:-} ]] \
  || { echo "lambda-zip: objcopy (binutils) is needed to strip the binary" >&2; exit 1; }

lock=()
if [[ -d /var/cache/pitboss ]]; then lock=(flock /var/cache/pitboss/build.lock); fi

# package_of NAME, bin_of NAME: the cargo package and binary of each function.
package_of() { case $1 in ingest) echo pitboss-ingest ;; antifraud) echo pitboss-antifraud ;; esac; }
bin_of() { echo "pitboss-$1-lambda"; }
((${#FUNCTIONS[@]})) || { echo "lambda-zip: LAMBDA_FUNCTIONS is empty" >&2; exit 2; }
for f in "${FUNCTIONS[@]}"; do
  [[ -n $(package_of "$f") ]] \
    || { echo "lambda-zip: LAMBDA_FUNCTIONS lists '$f'; the functions are ingest and antifraud" >&2; exit 2; }
done

case "$BUILDER" in
  cargo-lambda)
    if ! command -v cargo-lambda >/dev/null 2>&1; then
      python3 -m pip install --quiet "cargo-lambda==$CARGO_LAMBDA_VERSION"
    fi
    ;;
  cargo)
    if [[ $ARCH != "$(uname -m | sed 's/aarch64/arm64/')" ]]; then
      echo "lambda-zip: LAMBDA_BUILDER=cargo builds for this machine only ($(uname -m)); use cargo-lambda for $ARCH" >&2
      exit 2
    fi
    ;;
  *) echo "lambda-zip: LAMBDA_BUILDER must be cargo-lambda or cargo, got '$BUILDER'" >&2; exit 2 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$OUT_DIR"

# build NAME: prints the path of the function's built binary.
build() {
  local pkg bin
  pkg=$(package_of "$1")
  bin=$(bin_of "$1")
  case "$BUILDER" in
    cargo-lambda)
      "${lock[@]}" cargo lambda build --release --locked "$arch_flag" -p "$pkg" --features lambda --bin "$bin" >&2
      echo "$CARGO_TARGET_DIR/lambda/$bin/bootstrap"
      ;;
    cargo)
      "${lock[@]}" cargo build --release --locked -p "$pkg" --features lambda --bin "$bin" >&2
      echo "$CARGO_TARGET_DIR/release/$bin"
      ;;
  esac
}

for f in "${FUNCTIONS[@]}"; do
  bin=$(build "$f")
  rm -f "$stage/bootstrap"
  cp "$bin" "$stage/bootstrap"
  chmod 755 "$stage/bootstrap"
  if [[ -z ${LAMBDA_KEEP_DEBUG:-} ]]; then
    objcopy --strip-debug "$stage/bootstrap"
  fi
  zip_path=$OUT_DIR/$f.zip
  python3 - "$stage/bootstrap" "$zip_path" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
tmp = dst + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))  # reproducible
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(src, "rb") as f:
        z.writestr(info, f.read())
os.replace(tmp, dst)
with zipfile.ZipFile(dst) as z:
    size = z.getinfo("bootstrap").file_size
print(f"{dst}: zip {os.path.getsize(dst)} bytes, bootstrap {size} bytes unzipped "
      f"(Lambda limits: 50 MB zipped direct upload, 250 MB unzipped)")
PY
done
