#!/usr/bin/env bash
# Two "machines" on this one: network namespaces natgrad-h0 and natgrad-h1, joined by a veth pair
# (10.77.0.1 and 10.77.0.2) whose two ends are shaped to a link's bandwidth (tc tbf) and, if
# asked, its latency (tc netem). Open MPI then runs one rank in each, over TCP (its shared-memory
# transport cannot cross them), launched through an rsh agent that enters the namespace instead of
# ssh. The ranks still share this machine's cores: what the namespaces add is the network's cost,
# which is what the cost model in README.md predicts.
#
#   bash benches/scaling/two_hosts.sh up 1gbit [DELAY]    # as root; prints the mpirun to use
#   python3 benches/scaling/scaling.py --layouts 2x1 --link-gbps 1 \
#       --mpirun "$(bash benches/scaling/two_hosts.sh mpirun)"
#   bash benches/scaling/two_hosts.sh down
#
# RATE is tc's (1gbit, 10gbit, or "none" for the bare veth); DELAY, if given, is netem's one-way
# delay on each end (100us). Needs iproute2 and root (or CAP_NET_ADMIN).
set -euo pipefail
DIR="${TWO_HOSTS_DIR:-/tmp/natgrad-two-hosts}"
NS=(natgrad-h0 natgrad-h1)
IP=(10.77.0.1 10.77.0.2)
DEV=(ng-v0 ng-v1)

mpirun_prefix() {
  # mpirun runs in the first namespace (its daemons must reach it over the link): Open MPI sees
  # the first host's address as its own and starts that rank itself, the other through the agent
  # (--bind-to none: each "machine" would bind its rank to core 0, the same core)
  echo "ip netns exec ${NS[0]} mpirun --bind-to none --hostfile $DIR/hosts --mca plm_rsh_agent $DIR/agent --mca btl tcp,self" \
    "--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24"
}

down() {
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

up() {
  local rate="${1:-none}" delay="${2:-}"
  down
  mkdir -p "$DIR"
  ip netns add "${NS[0]}"
  ip netns add "${NS[1]}"
  ip link add "${DEV[0]}" type veth peer name "${DEV[1]}"
  for k in 0 1; do
    ip link set "${DEV[$k]}" netns "${NS[$k]}"
    ip -n "${NS[$k]}" addr add "${IP[$k]}/24" dev "${DEV[$k]}"
    ip -n "${NS[$k]}" link set "${DEV[$k]}" up
    ip -n "${NS[$k]}" link set lo up
    # each end shapes what it sends: the link's two directions, each at the rate
    if [ -n "$delay" ]; then
      ip netns exec "${NS[$k]}" tc qdisc add dev "${DEV[$k]}" root handle 1: netem delay "$delay"
      parent="parent 1:1 handle 10:"
    else
      parent="root"
    fi
    if [ "$rate" != none ]; then
      # shellcheck disable=SC2086
      ip netns exec "${NS[$k]}" tc qdisc add dev "${DEV[$k]}" $parent tbf rate "$rate" burst 1mb latency 20ms
    fi
  done
  printf '%s slots=1\n' "${IP[@]}" > "$DIR/hosts"
  cat > "$DIR/agent" <<EOF
#!/bin/sh
# Open MPI's rsh agent: "agent HOST COMMAND..." runs the command in the namespace holding HOST.
host="\$1"; shift
case "\$host" in
  ${IP[0]}) ns=${NS[0]} ;;
  ${IP[1]}) ns=${NS[1]} ;;
  *) echo "agent: no namespace holds \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" sh -c "\$*"
EOF
  chmod +x "$DIR/agent"
  mpirun_prefix
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  mpirun) mpirun_prefix ;;
  *) echo "usage: $0 up [RATE [DELAY]] | down | mpirun" >&2; exit 2 ;;
esac
