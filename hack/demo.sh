#!/usr/bin/env bash
# make demo: bring up the local cluster (3 nodes), schedule a Deployment
# with kubectl through the real scheduler, print where each pod landed with
# its IP, and a probe matrix between all pods.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LC=$ROOT/hack/localcluster
NODES=${NODES:-3}
NS=weft-demo

"$LC" up --nodes "$NODES"
KUBECTL=("$ROOT/.localcluster/bin/kubectl" --kubeconfig "$ROOT/.localcluster/kubeconfig")

echo "== nodes (pod CIDRs from kube-controller-manager)"
"${KUBECTL[@]}" get nodes -o custom-columns=NAME:.metadata.name,STATUS:.status.conditions[-1].type,IP:.status.addresses[0].address,POD-CIDR:.spec.podCIDR

"${KUBECTL[@]}" create namespace "$NS" --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f - >/dev/null
"${KUBECTL[@]}" -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: weft.dev/echo:demo
        ports:
        - {containerPort: 80, protocol: TCP}
        - {containerPort: 53, protocol: UDP}
YAML
echo "== waiting for 6 pods"
"${KUBECTL[@]}" -n "$NS" rollout status deployment/web --timeout=180s
"${KUBECTL[@]}" -n "$NS" get pods -o wide

mapfile -t PODS < <("${KUBECTL[@]}" -n "$NS" get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
matrix() {
  echo "== TCP/80 probe matrix (row: from, column: to; ok = answered, -- = denied)"
  printf '%-22s' ""; for t in "${PODS[@]}"; do printf '%-8s' "${t: -5}"; done; echo
  for f in "${PODS[@]}"; do
    printf '%-22s' "$f"
    for t in "${PODS[@]}"; do
      r=$("$LC" probe --from "$NS/$f" --to "$NS/$t" --port 80 --proto tcp --timeout 1s 2>/dev/null || echo error)
      case $r in allowed) printf '%-8s' ok ;; denied) printf '%-8s' -- ;; *) printf '%-8s' ERR ;; esac
    done
    echo
  done
}
matrix
if grep -q '"cni": "static"' "$ROOT/.localcluster/state.json" 2>/dev/null; then
  echo "(static CNI fallback, no weftd: only pods on the same node reach each other)"
fi
if ! grep -q '"cni": "static"' "$ROOT/.localcluster/state.json" 2>/dev/null; then
  echo "== NetworkPolicy: only pods labelled role=frontend may reach app=web on TCP/80"
  "${KUBECTL[@]}" -n "$NS" label pod "${PODS[0]}" "${PODS[1]}" role=frontend --overwrite >/dev/null
  "${KUBECTL[@]}" -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-frontend}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
    ports: [{port: 80, protocol: TCP}]
YAML
  echo "(frontends: ${PODS[0]} ${PODS[1]})"
  sleep 2
  matrix
  "${KUBECTL[@]}" -n "$NS" delete networkpolicy web-from-frontend >/dev/null
  "${KUBECTL[@]}" -n "$NS" label pod "${PODS[0]}" "${PODS[1]}" role- >/dev/null
  echo "(policy deleted: every pod reaches every pod again)"
fi
echo "kubeconfig: $ROOT/.localcluster/kubeconfig   tear down: make cluster-down"
