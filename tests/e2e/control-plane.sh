#!/usr/bin/env bash
# A real Kubernetes control plane for the end-to-end suite, the way
# controller-runtime's envtest does it: etcd, kube-apiserver and
# kube-controller-manager (and a matching kubectl) built from the Go module in
# control-plane/, run on loopback with generated certificates.
#
#   control-plane.sh build        build once into the cache; prints the bin dir
#   control-plane.sh start DIR    certificates, etcd, kube-apiserver (RBAC,
#                                 ServiceAccount tokens, audit log),
#                                 kube-controller-manager; waits until ready;
#                                 writes DIR/env (KUBECONFIG=..., ...)
#   control-plane.sh stop DIR     stops exactly the processes start recorded
#
# Cache: ${XKS_E2E_CACHE:-$HOME/.cache/xks-operator-e2e}/<hash of the module>/bin,
# outside the work tree, so `cargo clean` or a fresh checkout keeps it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
module="$here/control-plane"
cache_root="${XKS_E2E_CACHE:-$HOME/.cache/xks-operator-e2e}"
# Part of the cache key: change it when the build command below changes.
build_recipe="v1 -trimpath -ldflags=-s -w +version etcd kube-apiserver kube-controller-manager kubectl"

die() { echo "control-plane: $*" >&2; exit 1; }
log() { echo "control-plane: $*" >&2; }

cache_key() {
  { echo "$build_recipe"; cat "$module/go.mod" "$module/go.sum" "$module/etcd/main.go"; } \
    | sha256sum | cut -c1-16
}

bin_dir() { echo "$cache_root/$(cache_key)/bin"; }

# The k8s.io/kubernetes version the module pins, stamped into the binaries so
# that `kubectl version` and the API server's /version say what they are.
kube_version() {
  awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' "$module/go.mod"
}

cmd_build() {
  local out; out="$(bin_dir)"
  if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/etcd" && -x "$out/kubectl" ]]; then
    echo "$out"
    return
  fi
  command -v go >/dev/null || die "go is not on PATH (Go 1.26 builds the control plane)"
  mkdir -p "$cache_root"
  # One build at a time, also across concurrent runs.
  exec 9>"$cache_root/build.lock"
  flock 9
  if [[ -x "$out/kubectl" ]]; then echo "$out"; return; fi
  local v major minor
  v="$(kube_version)"; [[ -n "$v" ]] || die "no k8s.io/kubernetes version in go.mod"
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  local tmp="$cache_root/$(cache_key).tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  log "building etcd, kube-apiserver, kube-controller-manager, kubectl ($v) into $out"
  local start=$SECONDS
  # (the ~250 "go: downloading" lines of a cold module cache say nothing)
  (cd "$module" && go build -trimpath -ldflags="$ldflags" -o "$tmp/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl \
      ./etcd) 2> >(grep -v '^go: downloading ' >&2) || { rm -rf "$tmp"; die "go build failed"; }
  rm -rf "$(dirname "$out")"
  mv "$tmp" "$(dirname "$out")"
  log "built in $((SECONDS - start))s"
  echo "$out"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A key and a certificate signed by the CA: gen_cert NAME SUBJECT [SAN]
gen_cert() {
  local dir=$1 name=$2 subj=$3 san=${4:-}
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
  openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$dir/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# kubeconfig FILE SERVER CERT_NAME
kubeconfig() {
  local file=$1 server=$2 certs=$3 name=$4
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: xks-e2e
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 "$certs/ca.crt")
users:
  - name: $name
    user:
      client-certificate-data: $(base64 -w0 "$certs/$name.crt")
      client-key-data: $(base64 -w0 "$certs/$name.key")
contexts:
  - name: xks-e2e
    context: {cluster: xks-e2e, user: $name}
current-context: xks-e2e
EOF
  chmod 600 "$file"
}

# spawn DIR NAME BINARY ARGS...: background process, pid in DIR/pids/NAME
spawn() {
  local dir=$1 name=$2; shift 2
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}

alive() { local p; p="$(cat "$1/pids/$2" 2>/dev/null)" && kill -0 "$p" 2>/dev/null; }

# wait_for DIR NAME SECONDS CMD...: until CMD succeeds; fails when NAME died.
wait_for() {
  local dir=$1 name=$2 timeout=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$dir" "$name"; then
      tail -n 30 "$dir/logs/$name.log" >&2 || true
      die "$name exited during start (log: $dir/logs/$name.log)"
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$dir/logs/$name.log" >&2 || true; die "$name not ready after ${timeout}s"; }
    sleep 0.5
  done
}

cmd_start() {
  local dir=${1:?usage: control-plane.sh start DIR}
  local bin; bin="$(cmd_build)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [[ ! -e "$dir/pids" ]] || die "$dir already holds a control plane (stop it first)"
  mkdir -p "$dir/certs" "$dir/logs" "$dir/pids" "$dir/etcd-data"
  local started=$SECONDS
  local certs="$dir/certs"

  # CA, API server serving cert, clients: admin (system:masters) and the
  # controller manager (its bootstrap RBAC identity).
  openssl ecparam -name prime256v1 -genkey -noout -out "$certs/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$certs/ca.key" -subj "/CN=xks-e2e-ca" -days 2 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$certs/ca.crt" 2>/dev/null
  gen_cert "$certs" apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  gen_cert "$certs" admin "/O=system:masters/CN=xks-e2e-admin"
  gen_cert "$certs" kube-controller-manager "/CN=system:kube-controller-manager"
  # ServiceAccount token signing key (TokenRequest, `kubectl create token`).
  openssl ecparam -name prime256v1 -genkey -noout -out "$certs/sa.key" 2>/dev/null
  openssl ec -in "$certs/sa.key" -pubout -out "$certs/sa.pub" 2>/dev/null
  chmod 600 "$certs"/*.key

  local etcd_port etcd_peer api_port kcm_port
  etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"; kcm_port="$(free_port)"
  local api="https://127.0.0.1:$api_port"

  cat >"$dir/audit-policy.yaml" <<'EOF'
# Metadata of every request (who, verb, resource, response code): enough to
# find a 403 and to count writes, without request or response bodies.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
EOF

  spawn "$dir" etcd "$bin/etcd" \
    --name xks-e2e --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "xks-e2e=http://127.0.0.1:$etcd_peer" \
    --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
  wait_for "$dir" etcd 60 curl -fsS "http://127.0.0.1:$etcd_port/health"

  spawn "$dir" kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$dir/apiserver-certs" \
    --tls-cert-file "$certs/apiserver.crt" --tls-private-key-file "$certs/apiserver.key" \
    --client-ca-file "$certs/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$certs/sa.pub" \
    --service-account-signing-key-file "$certs/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --endpoint-reconciler-type none \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" \
    --audit-log-format json --audit-log-maxsize 0 \
    --profiling=false
  wait_for "$dir" kube-apiserver 120 curl -fsS --cacert "$certs/ca.crt" \
    --cert "$certs/admin.crt" --key "$certs/admin.key" "$api/readyz"

  kubeconfig "$dir/admin.kubeconfig" "$api" "$certs" admin
  kubeconfig "$dir/kube-controller-manager.kubeconfig" "$api" "$certs" kube-controller-manager

  # Only the controllers a real cluster's API behaviour depends on here:
  # namespace deletion, garbage collection, ServiceAccounts and their
  # tokens, the kube-root-ca.crt ConfigMap, and ClusterRole aggregation
  # (the chart's roles for people join view/edit that way).
  spawn "$dir" kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --controllers namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller \
    --use-service-account-credentials \
    --service-account-private-key-file "$certs/sa.key" \
    --root-ca-file "$certs/ca.crt" \
    --leader-elect=false
  wait_for "$dir" kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
  # The ServiceAccount controller has run once the default namespace's
  # ServiceAccount exists.
  wait_for "$dir" kube-controller-manager 60 \
    "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get serviceaccount default -n default

  cat >"$dir/env" <<EOF
KUBECONFIG=$dir/admin.kubeconfig
KUBECTL=$bin/kubectl
XKS_E2E_AUDIT_LOG=$dir/logs/audit.log
XKS_E2E_APISERVER=$api
EOF
  log "ready in $((SECONDS - started))s: $api (KUBECONFIG=$dir/admin.kubeconfig)"
}

# The process recorded in DIR/pids/NAME, if it is still the binary we started
# (a recycled pid belongs to someone else).
ours() {
  local pid=$1 name=$2
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1 | grep -q "/$name\$"
}

cmd_stop() {
  local dir=${1:?usage: control-plane.sh stop DIR}
  [[ -d "$dir/pids" ]] || return 0
  local name pid i
  for name in kube-controller-manager kube-apiserver etcd; do
    [[ -f "$dir/pids/$name" ]] || continue
    pid="$(cat "$dir/pids/$name")"
    if ours "$pid" "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do ours "$pid" "$name" || break; sleep 0.1; done
      if ours "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$dir/pids/$name"
  done
  rmdir "$dir/pids" 2>/dev/null || true
}

case "${1:-}" in
  build) cmd_build ;;
  bin-dir) bin_dir ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) die "usage: control-plane.sh build | bin-dir | start DIR | stop DIR" ;;
esac
