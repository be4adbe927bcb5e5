#!/bin/sh
# Hydra's "ssh" stand-in for the test nodes (mpiexec -launcher ssh -launcher-exec THIS), also used
# to start mpiexec itself in node 0. Hydra calls it as `THIS [-x ...] HOST CMD...`, CMD meant for
# a shell. The host's line in $RADMM_NETNS_MAP ("ADDRESS NAMESPACE HOSTNAME") names the node's
# network namespace; the node also gets its own hostname (UTS), System V IPC, process ids and
# /dev/shm, as a separate machine has, so that MPI sees other nodes as remote and reaches them
# over TCP only. Every process of a node dies with the node's first process (its pid 1).
while [ $# -gt 0 ]; do
    case $1 in -*) shift ;; *) break ;; esac
done
host=$1
shift
cmd="$*"
entry=$(grep "^$host " "${RADMM_NETNS_MAP:?}") || { echo "ns-launch: no node has address $host" >&2; exit 1; }
set -- $entry
exec ip netns exec "$2" unshare --uts --ipc --pid --fork --mount-proc \
    sh -c "mount -t tmpfs -o mode=1777 shm /dev/shm && hostname $3 && exec $cmd"
