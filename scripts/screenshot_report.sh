#!/usr/bin/env bash
# Screenshot a self-contained HTML report with headless Chromium (Debian package `chromium`), to check that it
# renders (tables, embedded figures) without any network access.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]   (default 1400x4000)
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2; exit 2; fi
report=$(readlink -f "$1"); out=$(readlink -f "$2"); size=${3:-1400x4000}
[ -f "$report" ] || { echo "$0: no such file: $1" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then echo "$0: chromium not found (Debian: apt-get install -y chromium)" >&2; exit 1; fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" "file://$report" >/dev/null 2>&1
[ -s "$out" ] || { echo "$0: no screenshot written" >&2; exit 1; }
echo "$out"
