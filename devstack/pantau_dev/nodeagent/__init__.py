"""The local node agent: a small kubelet stand-in for the dev stack (`python -m pantau_dev.nodeagent`).

It registers the Node `pantau-local` (no kwok annotation, so kwok leaves it alone) and keeps it
Ready with a Lease and status heartbeats. Pods bound to it (watched with the field selector
`spec.nodeName=pantau-local`; other nodes and their pods are never touched) run as local
processes:

* Image -> command: nothing is pulled. The container's `command` + `args` (after `$(VAR)`
  expansion) run as-is with PATH starting with `--python-bin-dir`, so `pantau ...` and
  `python ...` resolve to the project's environment. Without `command`, an image whose name
  (before `:tag`/`@digest`) is `pantau` or ends with `/pantau` runs `pantau` + `args`; any other
  image waits with reason CreateContainerConfigError. `workingDir` is used if it exists, else the
  pod's directory `<work-dir>/<pod-uid>`.
* Environment: a minimal base (PATH, HOME, LANG, PYTHONUNBUFFERED=1, HOSTNAME), the API server as
  KUBERNETES_SERVICE_HOST/PORT, then `envFrom` and `env` with `fieldRef` (downward API),
  `secretKeyRef`, `configMapKeyRef`, like a kubelet.
* Network: each pod gets its own loopback address (PREFIX10..PREFIX250), reported as
  `status.podIP`; processes bind it themselves (e.g. from `status.podIP` through a fieldRef).
* ServiceAccount: a bound token from the TokenRequest API, the CA and the namespace are written to
  `<work-dir>/<pod-uid>/serviceaccount/` (token refreshed at 80 % of its lifetime) and
  bind-mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount in the container's
  private mount namespace, so in-cluster clients work unchanged and RBAC applies to the pod's
  ServiceAccount. The directory is also exported as PANTAU_SERVICEACCOUNT_DIR (the only way in
  when mount namespaces are unavailable, i.e. not root).
* Probes (httpGet, tcpSocket, exec), restart policies with CrashLoopBackOff, phases,
  conditions, restart counts and exit codes as a kubelet reports them; graceful deletion with
  SIGTERM, SIGKILL after the grace period, then removal of the pod object.
* Processes are spawned through `pantau_dev.procs.ProcessTable` as `pod-<ns>-<pod>-<container>`
  (logs in `--log-dir` under the same name), so `pantau dev down` stops them by PID; the agent
  itself leaves them running when it exits and adopts them when it starts again.

Not supported: volumes other than the ServiceAccount token, resource limits, container ports
on the host, ephemeral containers, sidecar (restartable init) containers, lifecycle hooks.
"""
