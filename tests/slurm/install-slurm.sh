#!/usr/bin/env bash
# Install Slurm (slurmctld, slurmd, client commands) and MUNGE from Debian packages, idempotently.
# Used by tests/slurm (docs/slurm.md). Exit 0 when the commands are there (already, or now);
# otherwise exit 1 with one line on stderr saying why. Needs root and apt-get; every step is
# time-bounded. Daemons are not started here (a temporary policy-rc.d forbids it during the
# install, when the image has none): the test starts its own, on its own configuration.
set -uo pipefail
need=(slurmctld slurmd sbatch scontrol squeue scancel sinfo munged munge)
missing() { local c; for c in "${need[@]}"; do PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null || { echo "$c"; return 0; }; done; return 1; }
if ! m=$(missing); then
    exit 0
fi
fail() { echo "install-slurm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "'$m' is not installed and installing Slurm needs root (apt-get install slurm-wlm munge)"
command -v apt-get >/dev/null || fail "'$m' is not installed and there is no apt-get (not Debian/Ubuntu)"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
cleanup() { [ -n "$made_policy" ] && rm -f "$policy"; }
trap cleanup EXIT
echo "install-slurm: apt-get install slurm-wlm munge (missing: $m)" >&2
timeout 300 apt-get update -qq >&2 || fail "apt-get update failed"
timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || fail "apt-get install -y slurm-wlm munge failed"
if m=$(missing); then
    fail "'$m' still missing after apt-get install slurm-wlm munge"
fi
echo "install-slurm: installed $(slurmctld -V 2>/dev/null) and $(munged -V 2>/dev/null | head -1)" >&2
exit 0
