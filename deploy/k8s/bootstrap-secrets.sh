#!/bin/sh
# One-shot bootstrap of the bus's keys for deploy/k8s (docs/security.md, docs/operations.md).
#
# Runs `meshssh-policy init` once, on an operator's machine (not in the cluster: the operator
# and account identity seeds it makes never go into the cluster), and turns its output into the
# Secrets the manifests mount:
#
#   meshssh-nats-auth   nats-auth.conf                        nats-server (operator, accounts)
#   meshssh-nats-tls    ca.crt server.crt server.key          nats-server; ca.crt: every client
#   meshssh-bus-policy  policy.creds system.creds             meshssh-policy: its identity, the
#                       operator-signing.nk account-signing.nk  peers' JWTs and revocations,
#                       account.jwt meta.json                   the map signing key and the
#                       map-signing.pem jwks-signing.pub        JWKS pins (public)
#   meshssh-bus-authn   authn.creds jwks-signing.pem          meshssh-authn: its identity and
#                                                             the JWKS signing key
#   (after `init --rotate map-signing|jwks-signing`, the key's .previous goes along, so the
#   old key endorses the new one until every peer has renewed: docs/security.md)
#
# Usage:
#   deploy/k8s/bootstrap-secrets.sh [-n NAMESPACE] [-d DIR] [--tls-host NAME ...] [--dry-run]
#
#   -n NAMESPACE  where meshssh runs (default meshssh); also names the NATS certificate's hosts
#   -d DIR        the bus directory: made by `meshssh-policy init` when it has no
#                 nats-auth.conf yet, else used as it is (to re-apply Secrets after a rotation)
#                 (default: a new temporary directory)
#   --tls-host NAME  one more name for the NATS certificate, e.g. the load balancer that
#                 peers outside the cluster connect to (the in-cluster names are always there)
#   --dry-run     print the Secrets as YAML instead of applying them (no cluster needed)
#
# Environment: MESHSSH_POLICY (default meshssh-policy), KUBECTL (default kubectl); each may be a
# command with arguments (e.g. MESHSSH_POLICY="uv run meshssh-policy").
#
# Afterwards DIR holds what must not stay on this machine nor go into the cluster:
# operator.nk, account.nk, system-account.nk and ca.key (rotation needs them: keep them
# offline) and admin.creds (full rights on the bus: for operators' scripts only).
set -eu

NAMESPACE=meshssh
DIR=
DRY_RUN=0
EXTRA_HOSTS=
NATS_NODES=3  # the StatefulSet's replicas: nats-0 .. nats-2

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--namespace) NAMESPACE=$2; shift 2 ;;
    -d|--dir) DIR=$2; shift 2 ;;
    --tls-host) EXTRA_HOSTS="$EXTRA_HOSTS $2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap-secrets: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

POLICY=${MESHSSH_POLICY:-meshssh-policy}
KUBECTL=${KUBECTL:-kubectl}

if [ -z "$DIR" ]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/meshssh-bus.XXXXXX")
  rmdir "$DIR"  # init makes it itself, mode 0700
fi

if [ -f "$DIR/nats-auth.conf" ]; then
  echo "bootstrap-secrets: using the bus directory $DIR as it is" >&2
else
  # The certificate names every way a client or a route reaches NATS: the Services `nats`
  # and `nats-cluster` (routes and the services' URLs name the pods nats-N.nats-cluster).
  set -- --tls-host nats --tls-host "nats.$NAMESPACE" --tls-host "nats.$NAMESPACE.svc" \
    --tls-host "nats.$NAMESPACE.svc.cluster.local"
  i=0
  while [ "$i" -lt "$NATS_NODES" ]; do
    set -- "$@" --tls-host "nats-$i.nats-cluster" \
      --tls-host "nats-$i.nats-cluster.$NAMESPACE.svc" \
      --tls-host "nats-$i.nats-cluster.$NAMESPACE.svc.cluster.local"
    i=$((i + 1))
  done
  for host in $EXTRA_HOSTS; do
    set -- "$@" --tls-host "$host"
  done
  $POLICY init --dir "$DIR" "$@" >&2
fi

# secret NAME FILE...: one Secret from files of the bus directory, as YAML
secret() {
  name=$1
  shift
  n=$#
  for f in "$@"; do
    [ -f "$DIR/$f" ] || { echo "bootstrap-secrets: $DIR/$f is missing" >&2; exit 1; }
    set -- "$@" "--from-file=$DIR/$f"
  done
  shift "$n"
  echo "---"
  $KUBECTL -n "$NAMESPACE" create secret generic "$name" "$@" --dry-run=client -o yaml
}

# previous KEY: KEY.previous when a rotation left one (it endorses the new key)
previous() {
  if [ -f "$DIR/$1.previous" ]; then echo "$1.previous"; fi
}

render() {
  secret meshssh-nats-auth nats-auth.conf
  secret meshssh-nats-tls ca.crt server.crt server.key
  # shellcheck disable=SC2046  # previous prints one file name or nothing
  secret meshssh-bus-policy policy.creds system.creds operator-signing.nk account-signing.nk \
    account.jwt meta.json map-signing.pem jwks-signing.pub $(previous map-signing.pem)
  # shellcheck disable=SC2046
  secret meshssh-bus-authn authn.creds jwks-signing.pem $(previous jwks-signing.pem)
}

if [ "$DRY_RUN" -eq 1 ]; then
  render
else
  manifest=$(render)
  printf '%s\n' "$manifest" | $KUBECTL apply -f -
fi

cat >&2 <<EOF
bootstrap-secrets: the Secrets are $( [ "$DRY_RUN" -eq 1 ] && echo "printed (dry run)" || echo "applied in namespace $NAMESPACE").
Move $DIR off this machine now (offline storage): operator.nk, account.nk,
system-account.nk and ca.key are the bus's root keys (rotation needs them), admin.creds has
full rights on the bus.
EOF
