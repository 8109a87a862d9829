#!/usr/bin/env bash
# Regenerates tools/k8s/go.mod for one Kubernetes version (usage: gen-go-mod.sh v1.36.3).
# k8s.io/kubernetes maps its staging modules to ./staging/src with `replace`, which a
# dependency's go.mod cannot carry; this module maps each one to its published v0.Y.Z tag
# instead (the method kubernetes/autoscaler uses), read from upstream's own go.mod.
set -euo pipefail
KV=${1:?kubernetes version, e.g. v1.36.3}
SV="v0.${KV#v1.}"
cd "$(dirname "$0")"
export GOTOOLCHAIN=local
rm -f go.mod go.sum
go mod init local.invalid/pantau-k8s-tools >/dev/null 2>&1
upstream=$(go mod download -json "k8s.io/kubernetes@$KV" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
go mod edit -json "$upstream" | python3 -c '
import json, sys
sv = sys.argv[1]
d = json.load(sys.stdin)
args = ["-go=" + d["Go"]]
for r in d.get("Replace") or []:
    old, new = r["Old"]["Path"], r["New"]["Path"]
    if new.startswith("./staging/src/"):
        args.append(f"-replace={old}={old}@{sv}")
    else:
        sys.exit(f"upstream has a non-staging replace, handle it by hand: {r}")
print("\n".join(args))' "$SV" | xargs go mod edit
go mod edit -require="k8s.io/kubernetes@$KV"
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  go mod edit -tool="k8s.io/kubernetes/cmd/$t"
done
go mod tidy
