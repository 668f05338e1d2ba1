#!/usr/bin/env bash
# Screenshot a `csm-parity diff --report` page with headless Chromium.
# Usage: scripts/report-screenshot.sh REPORT_DIR OUT.png
# Installs Debian's chromium if missing (needs root and network). Fails if Chromium reports
# errors loading the page or the PNG is not written.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 REPORT_DIR OUT.png" >&2
  exit 2
fi
report=$1
out=$2
if [ ! -f "$report/index.html" ]; then
  echo "error: $report/index.html not found (expected a directory written by csm-parity diff --report)" >&2
  exit 2
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "chromium not found; installing it with apt-get" >&2
  apt-get install -y chromium >/dev/null
  browser=$(command -v chromium)
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
url="file://$(cd "$report" && pwd)/index.html"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"
log=$(mktemp)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --enable-logging=stderr --v=0 \
  --screenshot="$out_abs" --window-size=1400,4000 "$url" 2>"$log" || true
if [ ! -s "$out_abs" ]; then
  cat "$log" >&2
  echo "error: no screenshot written to $out" >&2
  exit 1
fi
# Page errors (JS console errors, failed resource loads) show up as CONSOLE/ERR_ lines.
if grep -E "CONSOLE\(|ERR_FILE_NOT_FOUND|Uncaught" "$log" >&2; then
  echo "error: the page logged errors (above)" >&2
  exit 1
fi
rm -f "$log"
echo "screenshot: $out ($(stat -c %s "$out_abs") bytes)"
