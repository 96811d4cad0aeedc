#!/usr/bin/env bash
# Render one prompt file once per caching method, same seeds, for side-by-side comparison.
#
#   scripts/compare_caches.sh PROMPTS OUT_DIR "none pab teacache" [extra vidcache gen flags...]
#
# Videos and reports go to OUT_DIR/<method>/; a table of seconds and compute ratio per method and
# video is printed at the end (from the JSON reports). For quality numbers use `vidcache bench`.
# Exit status: the worst vidcache exit status; stops on the first usage error (>= 2).
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 PROMPTS OUT_DIR \"METHOD ...\" [vidcache gen flags...]" >&2
  exit 2
fi
prompts=$1
out_dir=$2
read -r -a methods <<< "$3"
shift 3
read -r -a cmd <<< "${VIDCACHE:-vidcache}"

status=0
for method in "${methods[@]}"; do
  echo "== cache $method -> $out_dir/$method" >&2
  "${cmd[@]}" gen "$prompts" --cache "$method" --out "$out_dir/$method" "$@"
  rc=$?
  if [ $rc -ge 2 ]; then
    echo "error: vidcache exited $rc with --cache $method; stopping" >&2
    exit $rc
  fi
  [ $rc -eq 1 ] && status=1
done

python3 - "$out_dir" "${methods[@]}" <<'PY'
import json, sys
from pathlib import Path
out, methods = Path(sys.argv[1]), sys.argv[2:]
print(f"{'method':<16} {'video':<40} {'seconds':>9} {'compute':>8}")
for m in methods:
    run = json.loads((out / m / "run.json").read_text())
    for v in run["videos"]:
        secs = "-" if v["seconds"] is None else f"{v['seconds']:.2f}"
        ratio = "-" if v["compute_ratio"] is None else f"{v['compute_ratio']:.3f}"
        print(f"{m:<16} {v['name']:<40} {secs:>9} {ratio:>8}")
PY
exit $status
