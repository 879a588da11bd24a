#!/usr/bin/env bash
# Installing hwfault leaves the user's own torch in place.
#
# usage: bench/pip_keeps_torch.sh [TORCH_VERSION] [VENV]     (defaults: 2.13.0, a fresh /tmp folder)
#
# A scratch venv gets torch TORCH_VERSION first, then a plain, non-editable `pip install` of this
# checkout with normal dependency resolution; the script fails if pip changed torch. An empty
# constraints file replaces any machine-wide pip cap on torch (this project's machines set one), so a
# newer torch on the index is a real candidate. Needs the index for hwfault's other dependencies;
# takes a few minutes and about 1.7 GB (6 GB with a CUDA build of torch). Not part of `make bench`.
set -euo pipefail
TORCH=${1:-2.13.0}
VENV=${2:-$(mktemp -d /tmp/hwfault-pipcheck.XXXXXX)/venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
NOCAP=$(mktemp /tmp/hwfault-nocap.XXXXXX.txt)

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH"
before=$("$VENV/bin/pip" show torch | sed -n 's/^Version: //p')
echo "torch before: $before"
PIP_CONSTRAINT=$NOCAP "$VENV/bin/pip" install "$ROOT" | grep -Ei '^(Requirement already satisfied: torch|Successfully installed)' || true
after=$("$VENV/bin/pip" show torch | sed -n 's/^Version: //p')
echo "torch after:  $after"
"$VENV/bin/pip" check
(cd /tmp && "$VENV/bin/hwfault" chips check pcm-1day)
rm -f "$NOCAP"
if [ "$before" != "$after" ]; then
    echo "FAIL: pip install of hwfault changed torch $before -> $after" >&2
    exit 1
fi
echo "ok: torch $after kept ($VENV)"
