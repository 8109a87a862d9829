#!/usr/bin/env bash
# `make images`: the container images, built here without a Docker daemon or a registry.
#
#   base     localhost/pantau-base:bookworm-<hash>   Debian bookworm minbase + python3 (mmdebstrap)
#   product  localhost/pantau:<version>-<hash>       Containerfile (operator + ingest), FROM base
#   triton   localhost/pantau-triton:<pytriton>-<hash>  tools/images/triton.Containerfile, FROM base
#
# Each is written as an OCI archive to $PANTAU_CACHE/images/<name>_<tag>.oci.tar, with a sidecar
# <archive>.json (digest, size), and all three are listed in $PANTAU_CACHE/images/images.json.
# <hash> is the content hash of the image's inputs, so the tag changes whenever the content does (a
# kubelet with imagePullPolicy IfNotPresent/Never then uses the new build), and an archive that
# exists for the current hash is reused: a run with nothing changed only hashes files (seconds).
#   base:    package list, mmdebstrap options, the Debian sources
#   product: Containerfile, .containerignore, pyproject.toml, README.md, operator/, base digest
#   triton:  tools/versions.env's Triton versions, its Containerfile, the files laid into its
#            context (names and sizes), the model sources, base digest
#
# buildah runs as root with its own storage under $PANTAU_CACHE/images/storage (the system's image
# store is left alone), RUN steps with `--isolation chroot`: there is no OCI runtime (runc/crun) and
# no daemon here, and chroot isolation needs neither (nor cgroup v2). The storage driver is overlay,
# with vfs as the fallback where overlay mounts fail (e.g. when the cache itself lives on an overlay
# filesystem, inside a container); vfs works everywhere but copies every layer in full.
#
# Environment: PANTAU_CACHE (~/.cache/pantau), PANTAU_DEBIAN_SOURCES (one "deb URI SUITE COMPONENTS"
# line per source; default: the host's Debian sources for the suite, as apt is configured here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck disable=SC1091 # KEY=VALUE lines: PYTRITON_VERSION, ONNXRUNTIME_VERSION, PILLOW_VERSION
source tools/versions.env

CACHE=${PANTAU_CACHE:-$HOME/.cache/pantau}
OUT=$CACHE/images
WORK=$OUT/work
TRITON_DIR=$CACHE/pytriton-$PYTRITON_VERSION-ort-$ONNXRUNTIME_VERSION-pillow-$PILLOW_VERSION
SUITE=bookworm
PY_VERSION=3.11 # bookworm's python3; the Triton Python-backend stub must match it

START=$SECONDS
log() { printf '[%s %+5ds] %s\n' "$(date +%H:%M:%S)" $((SECONDS - START)) "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root: buildah builds with root-owned storage and chroot isolation here"
for tool in buildah mmdebstrap python3 flock; do
  command -v "$tool" >/dev/null || die "$tool not found (make images installs the Debian packages)"
done
mkdir -p "$OUT" "$WORK" "$OUT/logs"
exec 9>"$OUT/.lock"
flock 9 # one build at a time per cache

# ---- buildah with its own storage ---------------------------------------------------------------
STORAGE=$OUT/storage
RUNROOT=/run/pantau-images-$(printf '%s' "$OUT" | sha256sum | cut -c1-8)
if [[ ! -s $OUT/storage.driver ]]; then
  driver=vfs
  if probe=$(buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver overlay from scratch 2>/dev/null); then
    if buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver overlay mount "$probe" >/dev/null 2>&1; then
      driver=overlay
    fi
    buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver overlay rm "$probe" >/dev/null 2>&1 || true
  fi
  if [[ $driver == vfs ]]; then rm -rf "$STORAGE"; fi
  echo "$driver" >"$OUT/storage.driver"
fi
DRIVER=$(<"$OUT/storage.driver")
bah() { buildah --root "$STORAGE" --runroot "$RUNROOT" --storage-driver "$DRIVER" "$@"; }

# The host's CA bundle, mounted over the image's during RUN steps (pip and apt behind a
# TLS-intercepting proxy); the images themselves keep Debian's bundle.
CA_MOUNT=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  CA_MOUNT=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi

# ---- helpers --------------------------------------------------------------------------------------
sha() { sha256sum | cut -c1-64; }

# Content hash of files (paths relative to the repo root), ignoring bytecode and build metadata.
hash_tree() {
  find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha
}

# Streams a build's output to its log file, showing buildah's steps with timestamps.
progress() {
  local logfile=$1 line
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$logfile"
    case $line in
    *"STEP "* | *COMMIT* | "I: "*) log "    ${line:0:140}" ;;
    esac
  done
}

# Writes an image to its OCI archive and the sidecar JSON (manifest digest, uncompressed size).
export_image() {
  local role=$1 ref=$2 archive=$3 key=$4 seconds=$5
  rm -f "$archive" "$archive.json"
  log "  writing $archive"
  bah push --quiet "$ref" "oci-archive:$archive.tmp:$ref" >/dev/null
  python3 - "$archive.tmp" "$role" "$ref" "$key" "$seconds" "$archive" <<'EOF'
import gzip, json, sys, tarfile, time
path, role, ref, key, seconds, final = sys.argv[1:]
def blob(tar, digest):
    return tar.extractfile(tar.getmember("blobs/" + digest.replace(":", "/")))
with tarfile.open(path) as tar:
    index = json.load(tar.extractfile("index.json"))
    digest = index["manifests"][0]["digest"]
    manifest = json.load(blob(tar, digest))
    config = json.load(blob(tar, manifest["config"]["digest"]))
    size = 0
    for layer in manifest["layers"]:
        f = blob(tar, layer["digest"])
        if "gzip" in layer["mediaType"]:
            f = gzip.GzipFile(fileobj=f)
        while chunk := f.read(1 << 20):
            size += len(chunk)
name, _, tag = ref.rpartition(":")
entry = {
    "role": role, "image": name, "tag": tag, "ref": ref, "digest": digest,
    "size_mb": round(size / 1e6, 1),
    "archive": final, "archive_mb": round(sum(m.size for m in tarfile.open(path).getmembers()) / 1e6, 1),
    "layers": len(manifest["layers"]), "user": config.get("config", {}).get("User", ""),
    "key": key, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "build_seconds": int(seconds),
}
json.dump(entry, open(final + ".json", "w"), indent=2)
EOF
  mv "$archive.tmp" "$archive"
}

# Makes sure an image that was built before (its archive exists) is in the buildah storage, for the
# builds FROM it; a fresh storage is filled from the archive.
ensure_stored() {
  local ref=$1 archive=$2 id
  if ! bah inspect --type image "$ref" >/dev/null 2>&1; then
    log "  loading $ref from its archive"
    id=$(bah pull --quiet "oci-archive:$archive")
    bah tag "$id" "$ref"
  fi
}

# Drops older archives and tags of an image name, keeping the current one (layer caches stay).
prune_old() {
  local name=$1 keep=$2 f tag
  for f in "$OUT/${name##*/}"_*.oci.tar; do
    [[ -e $f && $f != "$(archive_of "$name" "$keep")" ]] || continue
    tag=${f##*/"${name##*/}"_}
    tag=${tag%.oci.tar}
    rm -f "$f" "$f.json" "$(log_of "$name" "$tag")"
    bah rmi "$name:$tag" >/dev/null 2>&1 || true
  done
}

archive_of() { echo "$OUT/${1##*/}_$2.oci.tar"; }
log_of() { echo "$OUT/logs/${1##*/}_$2.log"; }

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# ---- base: mmdebstrap -> buildah ------------------------------------------------------------------
# python3 (3.11) and python3-venv: the product's interpreter and its venv; ca-certificates: TLS to
# registries' and users' endpoints; libstdc++6: the C++ runtime that manylinux wheels (onnxruntime,
# grpcio, PyAV's ffmpeg) take from the system. Everything else they need is bundled in the wheels
# (tests/test_images.py runs ldd on every shared object of the images).
BASE_PACKAGES=(python3 python3-venv ca-certificates libstdc++6)
MMDEBSTRAP_OPTS=(
  --variant=minbase
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr # merged /usr without the usrmerge package (and its perl)
  --skip=output/dev                                 # no device nodes in the tarball: runtimes provide /dev
  --aptopt='Acquire::Retries "3"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
)
if [[ -n ${PANTAU_DEBIAN_SOURCES:-} ]]; then
  SOURCES=$PANTAU_DEBIAN_SOURCES
else
  # The mirrors this host's apt uses for the suite (deb822 or one-line sources alike).
  # shellcheck disable=SC2016 # $(...) are apt's format fields
  SOURCES=$(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
    'Identifier: Packages' 2>/dev/null | awk -v s="$SUITE" '$2 == s || index($2, s "-") == 1' |
    sort -u | awk '{c[$1" "$2] = c[$1" "$2] " " $3} END {for (k in c) print "deb " k c[k]}' | sort)
  [[ -n $SOURCES ]] || SOURCES="deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main"
fi
mapfile -t SOURCE_LINES <<<"$SOURCES"

base_key=$(printf '%s\n' base-1 "$SUITE" "${BASE_PACKAGES[@]}" "${MMDEBSTRAP_OPTS[@]}" "${SOURCE_LINES[@]}" | sha)
BASE_NAME=localhost/pantau-base
BASE_TAG=$SUITE-${base_key:0:12}
BASE_REF=$BASE_NAME:$BASE_TAG
BASE_ARCHIVE=$(archive_of "$BASE_NAME" "$BASE_TAG")
log "base     $BASE_REF"
if [[ -f $BASE_ARCHIVE && -f $BASE_ARCHIVE.json ]]; then
  log "  cached: $BASE_ARCHIVE"
else
  t0=$SECONDS
  log "  mmdebstrap $SUITE (minbase + ${BASE_PACKAGES[*]}) from: ${SOURCE_LINES[*]}"
  rm -f "$WORK/base.tar"
  mmdebstrap "${MMDEBSTRAP_OPTS[@]}" --include="$(
    IFS=,
    echo "${BASE_PACKAGES[*]}"
  )" \
    --format=tar "$SUITE" "$WORK/base.tar" "${SOURCE_LINES[@]}" 2>&1 | progress "$(log_of "$BASE_NAME" "$BASE_TAG")"
  log "  importing the root filesystem"
  c=$(bah from scratch)
  bah add --quiet "$c" "$WORK/base.tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["/bin/bash"]' --label org.opencontainers.image.title=pantau-base \
    --label "org.opencontainers.image.description=Debian $SUITE minbase + ${BASE_PACKAGES[*]}" "$c"
  bah commit --quiet --rm "$c" "$BASE_REF" >/dev/null
  rm -f "$WORK/base.tar"
  export_image base "$BASE_REF" "$BASE_ARCHIVE" "$base_key" $((SECONDS - t0))
  prune_old "$BASE_NAME" "$BASE_TAG"
  log "  built in $((SECONDS - t0)) s"
fi
BASE_DIGEST=$(field "$BASE_ARCHIVE.json" digest)

# ---- product: Containerfile -------------------------------------------------------------------------
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
product_key=$( (
  echo product-1 "$BASE_DIGEST"
  hash_tree Containerfile .containerignore pyproject.toml README.md operator
) | sha)
PRODUCT_NAME=localhost/pantau
PRODUCT_TAG=$VERSION-${product_key:0:12}
PRODUCT_REF=$PRODUCT_NAME:$PRODUCT_TAG
PRODUCT_ARCHIVE=$(archive_of "$PRODUCT_NAME" "$PRODUCT_TAG")
log "product  $PRODUCT_REF"
if [[ -f $PRODUCT_ARCHIVE && -f $PRODUCT_ARCHIVE.json ]]; then
  log "  cached: $PRODUCT_ARCHIVE"
else
  t0=$SECONDS
  ensure_stored "$BASE_REF" "$BASE_ARCHIVE"
  log "  buildah bud -f Containerfile --build-arg BASE=$BASE_REF (log: $(log_of "$PRODUCT_NAME" "$PRODUCT_TAG"))"
  bah bud --isolation chroot --layers --pull=never "${CA_MOUNT[@]}" --build-arg "BASE=$BASE_REF" \
    -f Containerfile -t "$PRODUCT_REF" . 2>&1 | progress "$(log_of "$PRODUCT_NAME" "$PRODUCT_TAG")"
  export_image product "$PRODUCT_REF" "$PRODUCT_ARCHIVE" "$product_key" $((SECONDS - t0))
  prune_old "$PRODUCT_NAME" "$PRODUCT_TAG"
  log "  built in $((SECONDS - t0)) s"
fi

# ---- triton: tools/images/triton.Containerfile ------------------------------------------------------
[[ -f $TRITON_DIR/.installed ]] || die "$TRITON_DIR missing: run make triton"
T=$TRITON_DIR
TRITON_BIN=(pytriton/tritonserver/bin/tritonserver)
TRITON_BACKEND=(pytriton/tritonserver/backends/python/libtriton_python.so
  pytriton/tritonserver/backends/python/triton_python_backend_utils.py
  "pytriton/tritonserver/python_backend_stubs/$PY_VERSION/triton_python_backend_stub")
# What the Python-backend models import (with their own dependencies and dist-info): numpy<2,
# onnxruntime (its C-API library and tools left out, as in the product image), Pillow.
TRITON_PYTHON=(numpy numpy.libs 'numpy-*.dist-info' onnxruntime 'onnxruntime-*.dist-info'
  flatbuffers 'flatbuffers-*.dist-info' packaging 'packaging-*.dist-info' google 'protobuf-*.dist-info'
  PIL pillow.libs 'pillow-*.dist-info')
TRITON_PYTHON_DROP=(onnxruntime/capi/libonnxruntime.so.* onnxruntime/transformers onnxruntime/quantization
  onnxruntime/tools numpy/distutils numpy/f2py)
mapfile -t TRITON_PYTHON_PATHS < <(cd "$T" && for p in "${TRITON_PYTHON[@]}"; do compgen -G "$p" || echo "MISSING:$p"; done)
[[ " ${TRITON_PYTHON_PATHS[*]}" != *" MISSING:"* ]] || die "not in $T: ${TRITON_PYTHON_PATHS[*]}"
triton_inputs() {
  (
    cd "$T"
    find "${TRITON_BIN[@]}" "${TRITON_BACKEND[@]}" pytriton/tritonserver/caches nvidia_pytriton.libs \
      "${TRITON_PYTHON_PATHS[@]}" -type f ! -path '*/__pycache__/*' -printf '%p %s\n' | LC_ALL=C sort
  )
  printf '%s\n' "${TRITON_PYTHON_DROP[@]}"
}
triton_key=$( (
  echo triton-3 "$BASE_DIGEST" "$PYTRITON_VERSION" "$ONNXRUNTIME_VERSION" "$PILLOW_VERSION" "$PY_VERSION"
  triton_inputs
  hash_tree tools/images/triton.Containerfile operator/pantau/triton/backends operator/pantau/triton/yolox.py
) | sha)
TRITON_NAME=localhost/pantau-triton
TRITON_TAG=$PYTRITON_VERSION-${triton_key:0:12}
TRITON_REF=$TRITON_NAME:$TRITON_TAG
TRITON_ARCHIVE=$(archive_of "$TRITON_NAME" "$TRITON_TAG")
log "triton   $TRITON_REF"
if [[ -f $TRITON_ARCHIVE && -f $TRITON_ARCHIVE.json ]]; then
  log "  cached: $TRITON_ARCHIVE"
else
  t0=$SECONDS
  ensure_stored "$BASE_REF" "$BASE_ARCHIVE"
  log "  laying out the build context from $T (hard links)"
  ctx=$WORK/triton-context
  o=$ctx/opt/tritonserver
  rm -rf "$ctx"
  mkdir -p "$o/bin" "$o/backends/python" "$o/caches" "$o/python" "$o/model-sources"
  cp -al "$T/${TRITON_BIN[0]}" "$o/bin/"
  cp -al "$T/nvidia_pytriton.libs" "$o/lib"
  for f in "${TRITON_BACKEND[@]}"; do cp -al "$T/$f" "$o/backends/python/"; done
  cp -al "$T/pytriton/tritonserver/caches/local" "$o/caches/"
  for p in "${TRITON_PYTHON_PATHS[@]}"; do cp -al "$T/$p" "$o/python/"; done
  for d in "${TRITON_PYTHON_DROP[@]}"; do
    # shellcheck disable=SC2086 # globs
    rm -rf "$o"/python/$d # unlinks only: the `make triton` directory is untouched
  done
  find "$o/python" -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} +
  # Of the wheel's bundled libraries, only those the server, the backend, the 3.11 stub and the cache
  # load (ldd, transitively): the wheel also carries libpython3.13 for its 3.13 stub, for instance.
  mapfile -t used < <(LD_LIBRARY_PATH=$o/lib ldd "$o/bin/tritonserver" "$o"/backends/python/*.so \
    "$o/backends/python/triton_python_backend_stub" "$o"/caches/local/*.so | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
    xargs -r realpath -e | awk -v d="$o/lib/" 'index($0, d) == 1' | sort -u)
  [[ ${#used[@]} -gt 0 ]] || die "ldd found none of the bundled libraries in use"
  for f in "$o"/lib/*; do
    [[ " ${used[*]} " == *" $f "* ]] || rm -f "$f"
  done
  log "  kept ${#used[@]} of the wheel's bundled libraries"
  cp -r operator/pantau/triton/backends/. "$o/model-sources/"
  cp operator/pantau/triton/yolox.py "$o/model-sources/"
  find "$o/model-sources" -name __pycache__ -prune -exec rm -rf {} +
  log "  buildah bud -f tools/images/triton.Containerfile (log: $(log_of "$TRITON_NAME" "$TRITON_TAG"))"
  bah bud --isolation chroot --layers --pull=never "${CA_MOUNT[@]}" --build-arg "BASE=$BASE_REF" \
    -f "$ROOT/tools/images/triton.Containerfile" -t "$TRITON_REF" "$ctx" 2>&1 |
    progress "$(log_of "$TRITON_NAME" "$TRITON_TAG")"
  rm -rf "$ctx"
  export_image triton "$TRITON_REF" "$TRITON_ARCHIVE" "$triton_key" $((SECONDS - t0))
  prune_old "$TRITON_NAME" "$TRITON_TAG"
  log "  built in $((SECONDS - t0)) s"
fi

# ---- summary ---------------------------------------------------------------------------------------
python3 - "$OUT/images.json" "$BASE_ARCHIVE.json" "$PRODUCT_ARCHIVE.json" "$TRITON_ARCHIVE.json" <<'EOF'
import json, sys, time
out, *sidecars = sys.argv[1:]
rows = [json.load(open(s)) for s in sidecars]
json.dump({"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "images": {r["role"]: r for r in rows}}, open(out + ".tmp", "w"), indent=2)
import os; os.replace(out + ".tmp", out)
head = ("image", "tag", "digest", "MB", "archive")
table = [head] + [(r["image"], r["tag"], r["digest"], f'{r["size_mb"]:.0f}', r["archive"]) for r in rows]
widths = [max(len(row[i]) for row in table) for i in range(len(head))]
for row in table:
    print("  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
print(f"(MB: uncompressed layers; table as JSON: {out})")
EOF
log "done"
