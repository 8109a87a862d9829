#!/usr/bin/env bash
# Builds the Go binaries of the local stack from the module proxy, once per version.
#
# Output: $PANTAU_CACHE/bin/<component>-<version>/<binary>, plus a stamp file written last,
# so an interrupted build is redone and a finished one is skipped. GOMODCACHE/GOCACHE live in
# the same cache (outside the repo). Pins are the go.mod/go.sum files beside this script.
#
# usage: tools/build.sh [component...]
#   default: k8s etcd kwok jaeger helm runc containerd cni crictl coredns (what the stack uses;
#            the last five for its node: runtime, pod network, cluster DNS)
# prints the bin directory of each component as it finishes: "ready <component> <dir>".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/versions.env"
cache=${PANTAU_CACHE:-$HOME/.cache/pantau}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"
export GOMODCACHE=$cache/gomod GOCACHE=$cache/gobuild
mkdir -p "$cache/bin" "$GOMODCACHE" "$GOCACHE"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# build [--tags t1,t2] [--cgo] <component> <version> <module dir> <ldflags> <out-name=package>...
#
# The stamp's first line is a hash of everything the binaries are made from (go.mod, go.sum, Go
# version, tags, cgo, ldflags, the list of binaries): when it matches, nothing is checked further.
# When it does not (a binary was added, a pin changed, an older stamp), each binary is checked on
# its own: it is kept when the module versions, Go version, CGO_ENABLED and tags recorded in it
# (`go version -m`) are the ones `go list -deps` says a build would use now, and built otherwise.
# -trimpath keeps ldflags out of that record, so the stamp's second line holds their hash, written
# before the first binary is built: different ldflags rebuild every binary. (A stamp without that
# line is from before this scheme, which built with the same ldflags.)
# So adding kubelet to k8s builds kubelet alone, while a version change rebuilds everything.
build() {
  local tags="" cgo=0
  while [[ $1 == --* ]]; do
    case $1 in --tags) tags=$2; shift 2 ;; --cgo) cgo=1; shift ;; *) log "build: bad option $1"; exit 2 ;; esac
  done
  local comp=$1 ver=$2 dir=$3 ldflags=$4; shift 4
  local out="$cache/bin/$comp-$ver" stamp="$cache/bin/$comp-$ver/.built"
  local key; key=$( { cat "$here/$dir/go.mod" "$here/$dir/go.sum"; go env GOVERSION
                      echo "tags=$tags cgo=$cgo ldflags=$ldflags"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
  local spec all=1
  for spec in "$@"; do [[ -x $out/${spec%%=*} ]] || all=0; done
  if [[ $all == 1 && -f $stamp && $(head -n1 "$stamp") == "$key" ]]; then
    log "$comp $ver: cached in $out"; echo "ready $comp $out"; return
  fi
  mkdir -p "$out"
  local start=$SECONDS n=0 total=$# ld; ld="ldflags $(echo "$ldflags" | sha256sum | cut -c1-16)"
  local old_ld; old_ld=$(sed -n 2p "$stamp" 2>/dev/null || true)
  printf 'building\n%s\n' "$ld" > "$stamp"
  (cd "$here/$dir" && log "$comp $ver: downloading modules" && go mod download)
  for spec in "$@"; do
    n=$((n + 1))
    local name=${spec%%=*} pkg=${spec#*=}
    if [[ -x $out/$name && ( -z $old_ld || $old_ld == "$ld" ) ]] \
       && [[ $(CGO_ENABLED=$cgo built_from "$dir" "$tags" "$out/$name") == \
                                  "$(CGO_ENABLED=$cgo to_build_from "$dir" "$tags" "$pkg")" ]]; then
      log "$comp $ver: $name ($n/$total) is up to date"; continue
    fi
    log "$comp $ver: building $name ($n/$total; -v lists packages as they compile)"
    # -v prints each package as it is compiled: visible progress on a long cold build.
    (cd "$here/$dir" && CGO_ENABLED=$cgo go build -v -tags "$tags" -ldflags "-s -w $ldflags" -o "$out/$name" "$pkg" 2>&1 \
      | awk -v c="$comp/$name" '{ n++; if (n % 100 == 0) printf "  %s: %d packages compiled (%s)\n", c, n, $0 > "/dev/stderr" }
                                 END { printf "  %s: %d packages compiled\n", c, n > "/dev/stderr" }')
    [[ -x $out/$name ]] || { log "$comp: $name was not produced"; exit 1; }
  done
  if [[ $comp == kwok ]]; then kwok_stages "$out/stages.yaml"; fi
  printf '%s\n%s\n' "$key" "$ld" > "$stamp"
  log "$comp $ver: done in $((SECONDS - start)) s"
  echo "ready $comp $out"
}

# What a binary was built from, as recorded in it: module versions (after replace), Go version,
# CGO_ENABLED, tags. Empty when it has no readable build info (e.g. a truncated file).
built_from() {
  go version -m "$3" 2>/dev/null | awk -F'\t' '
    NR == 1 { n = split($0, a, " "); go = a[n] }
    $2 == "mod" || $2 == "dep" { m[$3] = $4; last = $3 }
    $2 == "=>" { m[last] = "=> " $3 " " $4 }
    $2 == "build" && $3 ~ /^(CGO_ENABLED|-tags)=/ { s[$3] = 1 }
    END { if (!go) exit; for (k in m) print k, m[k]; print "go", go
          print "CGO_ENABLED=" (("CGO_ENABLED=1" in s) ? 1 : 0)
          t = ""; for (k in s) if (k ~ /^-tags=/) t = substr(k, 7); print "tags=" t }' | sort
}

# The same, for what `go build` of <package> would use now.
to_build_from() {
  (cd "$here/$1" && go list -deps -tags "$2" \
     -f '{{with .Module}}{{.Path}} {{with .Replace}}=> {{.Path}} {{.Version}}{{else}}{{.Version}}{{end}}{{end}}' "$3" \
   | sort -u
   echo "go $(go env GOVERSION)"; echo "CGO_ENABLED=$CGO_ENABLED"; echo "tags=$2") | sort
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
[[ ${#components[@]} -gt 0 ]] || components=(k8s etcd kwok jaeger helm runc containerd cni crictl coredns)
for c in "${components[@]}"; do
  case $c in
    k8s) build k8s "$K8S_VERSION" k8s "$(k8s_ldflags)" \
           kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
           kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
           kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
           kubectl=k8s.io/kubernetes/cmd/kubectl \
           kubelet=k8s.io/kubernetes/cmd/kubelet \
           kube-proxy=k8s.io/kubernetes/cmd/kube-proxy ;;
    etcd) build etcd "$ETCD_VERSION" etcd "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
           etcd=go.etcd.io/etcd/server/v3 ;;
    kwok) build kwok "$KWOK_VERSION" kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
           kwok=sigs.k8s.io/kwok/cmd/kwok ;;
    helm) build helm "$HELM_VERSION" helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
           helm=helm.sh/helm/v3/cmd/helm ;;
    jaeger) build jaeger "$JAEGER_VERSION" jaeger "" jaeger=github.com/jaegertracing/jaeger/cmd/jaeger ;;
    # The node. runc needs cgo for
    # seccomp (Debian libseccomp-dev + pkg-config); its Makefile's third tag, libpathrs, needs a
    # Rust library Debian 12 lacks, so runc uses its pure-Go path code.
    runc) build --cgo --tags seccomp,urfave_cli_no_docs runc "$RUNC_VERSION" runc "" \
           runc=github.com/opencontainers/runc ;;
    containerd) c_pkg=github.com/containerd/containerd/v2
      build --tags no_btrfs,urfave_cli_no_docs containerd "$CONTAINERD_VERSION" containerd \
           "-X $c_pkg/version.Version=$CONTAINERD_VERSION -X $c_pkg/version.Package=$c_pkg" \
           containerd=$c_pkg/cmd/containerd \
           containerd-shim-runc-v2=$c_pkg/cmd/containerd-shim-runc-v2 \
           ctr=$c_pkg/cmd/ctr ;;
    cni) p_pkg=github.com/containernetworking/plugins
      build cni "$CNI_VERSION" cni "-X $p_pkg/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
           bridge=$p_pkg/plugins/main/bridge host-local=$p_pkg/plugins/ipam/host-local \
           loopback=$p_pkg/plugins/main/loopback portmap=$p_pkg/plugins/meta/portmap ;;
    crictl) build crictl "$CRICTL_VERSION" crictl "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
           crictl=sigs.k8s.io/cri-tools/cmd/crictl ;;
    coredns) build coredns "$COREDNS_VERSION" coredns "" coredns=github.com/coredns/coredns ;;
    *) log "unknown component $c (known: k8s etcd kwok helm jaeger runc containerd cni crictl coredns)"; exit 2 ;;
  esac
done
