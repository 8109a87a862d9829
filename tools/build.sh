#!/usr/bin/env bash
# Builds the Go test binaries of the local stack from the module proxy, once per version.
#
# Output: $PANTAU_CACHE/bin/<component>-<version>/<binary>, plus a stamp file written last,
# so an interrupted build is redone and a finished one is skipped. GOMODCACHE/GOCACHE live in
# the same cache (outside the repo). Pins are the go.mod/go.sum files beside this script.
#
# usage: tools/build.sh [component...]   (default: all; components: k8s etcd kwok helm jaeger)
# prints the bin directory of each component as it finishes: "ready <component> <dir>".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${PANTAU_CACHE:-$HOME/.cache/pantau}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gobuild
mkdir -p "$cache/bin" "$GOMODCACHE" "$GOCACHE"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# build <component> <version> <module dir> <ldflags> <out-name=package>...
build() {
  local comp=$1 ver=$2 dir=$3 ldflags=$4; shift 4
  local out="$cache/bin/$comp-$ver" stamp="$cache/bin/$comp-$ver/.built"
  if [[ -f $stamp && $(cat "$stamp") == "$(sha256sum "$here/$dir/go.sum" | cut -c1-16)" ]]; then
    log "$comp $ver: cached in $out"; echo "ready $comp $out"; return
  fi
  mkdir -p "$out"
  local start=$SECONDS n=0 total=$#
  (cd "$here/$dir" && log "$comp $ver: downloading modules" && go mod download)
  for spec in "$@"; do
    n=$((n + 1))
    local name=${spec%%=*} pkg=${spec#*=}
    log "$comp $ver: building $name ($n/$total; -v lists packages as they compile)"
    # -v prints each package as it is compiled: visible progress on a long cold build.
    (cd "$here/$dir" && go build -v -ldflags "-s -w $ldflags" -o "$out/$name" "$pkg" 2>&1 \
      | awk -v c="$comp/$name" '{ n++; if (n % 100 == 0) printf "  %s: %d packages compiled (%s)\n", c, n, $0 > "/dev/stderr" }
                                 END { printf "  %s: %d packages compiled\n", c, n > "/dev/stderr" }')
    [[ -x $out/$name ]] || { log "$comp: $name was not produced"; exit 1; }
  done
  if [[ $comp == kwok ]]; then kwok_stages "$out/stages.yaml"; fi
  sha256sum "$here/$dir/go.sum" | cut -c1-16 > "$stamp"
  log "$comp $ver: done in $((SECONDS - start)) s"
  echo "ready $comp $out"
}

# kwok does nothing without Stage objects; use the same "fast" set kwokctl installs, taken from
# the module source that `go mod download` already fetched.
kwok_stages() {
  local src; src=$(cd "$here/kwok" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$src/kustomize/stage/$f"; printf '\n---\n'
  done > "$1"
}

k8s_ldflags() {
  local f="" minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$f"
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(k8s etcd kwok jaeger helm)
for c in "${components[@]}"; do
  case $c in
    k8s) build k8s "$K8S_VERSION" k8s "$(k8s_ldflags)" \
           kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
           kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
           kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
           kubectl=k8s.io/kubernetes/cmd/kubectl ;;
    etcd) build etcd "$ETCD_VERSION" etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
           etcd=go.etcd.io/etcd/server/v3 ;;
    kwok) build kwok "$KWOK_VERSION" kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
           kwok=sigs.k8s.io/kwok/cmd/kwok ;;
    helm) build helm "$HELM_VERSION" helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
           helm=helm.sh/helm/v3/cmd/helm ;;
    jaeger) build jaeger "$JAEGER_VERSION" jaeger "" jaeger=github.com/jaegertracing/jaeger/cmd/jaeger ;;
    *) log "unknown component $c (known: k8s etcd kwok helm jaeger)"; exit 2 ;;
  esac
done
