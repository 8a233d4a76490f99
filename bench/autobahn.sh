#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn TestSuite's fuzzingclient cases 1-10, 12 and
# 13 (permessage-deflate) against fanfare's diagnostic echo route
# (config/autobahn.yaml, compression on), and prints the tally. About 5 minutes.
#
# The original `autobahntestsuite` runner needs Python 2, which Debian no longer ships
# and which PyPI does not offer for Python 3. `kosoku` (PyPI) drives Autobahn's own case files
# (auto-translated to Python 3 where needed) with a Rust runner; that is what runs.
#
# usage: bench/autobahn.sh [REPORT_DIR=target/autobahn]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/autobahn}
venv=target/autobahn-venv
if [ ! -x "$venv/bin/kosoku" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kosoku==0.1.0'
fi
cargo build --release --quiet
work=$(mktemp -d)
. bench/lib.sh
EDGE=$(free_port); ADMIN=$(free_port)
sed -e "s/127.0.0.1:9001/127.0.0.1:$EDGE/" -e "s/127.0.0.1:9002/127.0.0.1:$ADMIN/" \
  config/autobahn.yaml > "$work/autobahn.yaml"
target/release/fanfare --config "$work/autobahn.yaml" 2>"$work/fanfare.log" & FF=$!
trap 'kill $FF 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_port "$EDGE"
rm -rf "$out"
"$venv/bin/kosoku" -p 2 -o "$out" \
  -i '1.*' -i '2.*' -i '3.*' -i '4.*' -i '5.*' -i '6.*' -i '7.*' -i '9.*' -i '10.*' \
  -i '12.*' -i '13.*' \
  "127.0.0.1:$EDGE"
python3 - "$out" <<'PY'
import collections, glob, json, sys
behavior, close, odd = collections.Counter(), collections.Counter(), []
for f in sorted(glob.glob(sys.argv[1] + "/*case_*.json")):
    d = json.load(open(f))
    behavior[d["behavior"]] += 1
    close[d["behaviorClose"]] += 1
    if d["behavior"] not in ("OK", "INFORMATIONAL"):
        odd.append(f'{d["id"]}: {d["behavior"]} / close {d["behaviorClose"]}')
print("cases:", sum(behavior.values()))
print("behavior:", dict(behavior))
print("close behavior:", dict(close))
for o in odd:
    print("  ", o)
sys.exit(1 if behavior.get("FAILED") or close.get("FAILED") else 0)
PY
