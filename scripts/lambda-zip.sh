#!/usr/bin/env bash
# Builds the ingest Lambda (`pitboss-ingest-lambda`) for the `provided.al2023` runtime: the
# binary named `bootstrap` at the root of a zip, written to dist/lambda/ingest.zip (the path
# infra/terraform takes as `ingest_lambda_zip`).
#
#   scripts/lambda-zip.sh              # x86_64 (default)
#   LAMBDA_ARCH=arm64 scripts/lambda-zip.sh
#   LAMBDA_BUILDER=cargo scripts/lambda-zip.sh   # plain cargo + zip, no cargo-lambda/zig
#
# cargo-lambda (PyPI, a static binary plus ziglang) builds offline; it is installed when missing.
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
  x86_64) triple=x86_64-unknown-linux-gnu; arch_flag=--x86-64 ;;
  arm64) triple=aarch64-unknown-linux-gnu; arch_flag=--arm64 ;;
  *) echo "lambda-zip: LAMBDA_ARCH must be x86_64 or arm64, got '$ARCH'" >&2; exit 2 ;;
esac

lock=()
if [ -d /var/cache/pitboss ]; then lock=(flock /var/cache/pitboss/build.lock); fi
mkdir -p "$OUT_DIR"
zip_path="$OUT_DIR/ingest.zip"

case "$BUILDER" in
  cargo-lambda)
    if ! command -v cargo-lambda >/dev/null 2>&1; then
      python3 -m pip install --quiet "cargo-lambda==$CARGO_LAMBDA_VERSION"
    fi
    "${lock[@]}" cargo lambda build --release --locked "$arch_flag" \
      -p pitboss-ingest --bin pitboss-ingest-lambda --output-format zip
    cp "$CARGO_TARGET_DIR/lambda/pitboss-ingest-lambda/bootstrap.zip" "$zip_path"
    ;;
  cargo)
    if [ "$ARCH" != "$(uname -m | sed 's/aarch64/arm64/')" ]; then
      echo "lambda-zip: LAMBDA_BUILDER=cargo builds for this machine only ($(uname -m)); use cargo-lambda for $ARCH" >&2
      exit 2
    fi
    "${lock[@]}" cargo build --release --locked -p pitboss-ingest --bin pitboss-ingest-lambda
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    cp "$CARGO_TARGET_DIR/release/pitboss-ingest-lambda" "$stage/bootstrap"
    chmod 755 "$stage/bootstrap"
    rm -f "$zip_path"
    python3 - "$stage/bootstrap" "$zip_path" <<'PY'
import sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    info = zipfile.ZipInfo("bootstrap")
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(src, "rb") as f:
        z.writestr(info, f.read())
PY
    ;;
  *) echo "lambda-zip: LAMBDA_BUILDER must be cargo-lambda or cargo, got '$BUILDER'" >&2; exit 2 ;;
esac

python3 - "$zip_path" <<'PY'
import sys, zipfile, os
p = sys.argv[1]
with zipfile.ZipFile(p) as z:
    names = z.namelist()
    assert "bootstrap" in names, f"{p}: no bootstrap at the zip root ({names})"
    size = z.getinfo("bootstrap").file_size
print(f"{p}: zip {os.path.getsize(p)} bytes, bootstrap {size} bytes unzipped "
      f"(Lambda limits: 50 MB zipped upload, 250 MB unzipped)")
PY
