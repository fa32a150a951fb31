#!/usr/bin/env bash
# Builds the ingest Lambda (`pitboss-ingest-lambda`) for the `provided.al2023` runtime: the
# binary named `bootstrap` at the root of a zip, written to dist/lambda/ingest.zip (the path
# infra/terraform takes as `ingest_lambda_zip`).
#
#   scripts/lambda-zip.sh                        # x86_64 (default)
#   LAMBDA_ARCH=arm64 scripts/lambda-zip.sh
#   LAMBDA_BUILDER=cargo scripts/lambda-zip.sh   # plain cargo + zip, no cargo-lambda/zig
#   LAMBDA_KEEP_DEBUG=1 scripts/lambda-zip.sh    # keep the line tables (backtraces with
#                                                # file:line; a 3x larger zip)
#
# cargo-lambda (PyPI: a static binary plus ziglang, links against an old glibc so the binary
# runs on AL2023) builds offline; it is installed when missing. By default the debug sections
# are stripped from `bootstrap` (objcopy --strip-debug, as the Docker image does): measured on
# the ingest function, 93.7 MB -> 24.5 MB unzipped, 28.9 MB -> 9.2 MB zipped (docs/deploy.md).
# On the shared build machine every cargo run takes /var/cache/pitboss/build.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LAMBDA_VERSION=1.9.2
ARCH=${LAMBDA_ARCH:-x86_64}
BUILDER=${LAMBDA_BUILDER:-cargo-lambda}
OUT_DIR=${LAMBDA_OUT_DIR:-dist/lambda}
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

case "$BUILDER" in
  cargo-lambda)
    if ! command -v cargo-lambda >/dev/null 2>&1; then
      python3 -m pip install --quiet "cargo-lambda==$CARGO_LAMBDA_VERSION"
    fi
    "${lock[@]}" cargo lambda build --release --locked "$arch_flag" \
      -p pitboss-ingest --bin pitboss-ingest-lambda
    bin=$CARGO_TARGET_DIR/lambda/pitboss-ingest-lambda/bootstrap
    ;;
  cargo)
    if [[ $ARCH != "$(uname -m | sed 's/aarch64/arm64/')" ]]; then
      echo "lambda-zip: LAMBDA_BUILDER=cargo builds for this machine only ($(uname -m)); use cargo-lambda for $ARCH" >&2
      exit 2
    fi
    "${lock[@]}" cargo build --release --locked -p pitboss-ingest --bin pitboss-ingest-lambda
    bin=$CARGO_TARGET_DIR/release/pitboss-ingest-lambda
    ;;
  *) echo "lambda-zip: LAMBDA_BUILDER must be cargo-lambda or cargo, got '$BUILDER'" >&2; exit 2 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/bootstrap"
chmod 755 "$stage/bootstrap"
if [[ -z ${LAMBDA_KEEP_DEBUG:-} ]]; then
  objcopy --strip-debug "$stage/bootstrap"
fi
mkdir -p "$OUT_DIR"
zip_path=$OUT_DIR/ingest.zip
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
