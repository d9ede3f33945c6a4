#!/usr/bin/env bash
# Screenshot a self-contained HTML report with headless Chromium (Debian package `chromium`), to check that it
# renders (tables, embedded figures) without any network access.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT] [SECTION]   (default 1400x4000)
# SECTION (a heading of the report, e.g. "Grad-CAM gallery") renders only that section, with the report's style.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT] [SECTION]" >&2; exit 2; fi
report=$(readlink -f "$1"); out=$(readlink -f "$2"); size=${3:-1400x4000}; section=${4:-}
[ -f "$report" ] || { echo "$0: no such file: $1" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then echo "$0: chromium not found (Debian: apt-get install -y chromium)" >&2; exit 1; fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
if [ -n "$section" ]; then  # the page's head (style) + the one <section> whose heading is SECTION
  page="$profile/section.html"
  python3 - "$report" "$section" "$page" <<'EOF'
import re, sys
html, heading, dest = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2], sys.argv[3]
found = [s for s in re.findall(r"<section\b.*?</section>", html, flags=re.S) if f"<h2>{heading}</h2>" in s]
if not found:
    sys.exit(f"no section headed {heading!r} in {sys.argv[1]}")
head = html[: html.index("<body>")]
open(dest, "w", encoding="utf-8").write(f"{head}<body><main>{found[0]}</main></body></html>")
EOF
  report=$page
fi
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" "file://$report" >/dev/null 2>&1
[ -s "$out" ] || { echo "$0: no screenshot written" >&2; exit 1; }
echo "$out"
