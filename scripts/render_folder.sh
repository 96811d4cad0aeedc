#!/usr/bin/env bash
# Render every prompt file (*.txt, *.jsonl) in a folder, one `vidcache gen` call (one model load) each.
#
#   scripts/render_folder.sh PROMPT_DIR OUT_DIR [extra vidcache gen flags...]
#   scripts/render_folder.sh prompts/ renders/ --model wan --cache teacache
#
# Each file's videos go to OUT_DIR/<file stem>/. Re-running resumes: finished videos are skipped.
# Exit status: 0 all rendered; 1 some videos failed (the rest were rendered and reported);
# stops at once on the first usage error (exit >= 2: a bad prompt file, flag or model) and returns it.
# VIDCACHE overrides the command (default: vidcache), e.g. VIDCACHE="python -m vidcache".
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 PROMPT_DIR OUT_DIR [vidcache gen flags...]" >&2
  exit 2
fi
prompt_dir=$1
out_dir=$2
shift 2
read -r -a cmd <<< "${VIDCACHE:-vidcache}"

shopt -s nullglob
files=()
for f in "$prompt_dir"/*; do  # one sorted list, whatever the extension
  case "$f" in *.txt|*.jsonl) [ -f "$f" ] && files+=("$f") ;; esac
done
if [ ${#files[@]} -eq 0 ]; then
  echo "error: no .txt or .jsonl prompt files in $prompt_dir" >&2
  exit 2
fi

status=0
for file in "${files[@]}"; do
  stem=$(basename "${file%.*}")
  echo "== $file -> $out_dir/$stem" >&2
  "${cmd[@]}" gen "$file" --out "$out_dir/$stem" "$@"
  rc=$?
  if [ $rc -ge 2 ]; then
    echo "error: vidcache exited $rc on $file; stopping" >&2
    exit $rc
  fi
  [ $rc -eq 1 ] && status=1
done
exit $status
