#!/usr/bin/env bash
# Screenshot check of the documentation site: build it with --strict, render the quickstart, one concept
# page (InRa) and the API reference in a real headless browser, and fail when a screenshot is blank.
#
#   docs/screenshot.sh [OUT_DIR]          # PNGs in OUT_DIR (default: site-screenshots/)
#
# Needs the docs extra (pip install -e ".[docs]"), Pillow, and Chromium (apt-get install -y chromium;
# CHROMIUM=/path/to/chrome to use another). A page counts as rendered when at least 1% of its pixels
# differ from its most common colour: an empty page, a missing stylesheet's white, or an error page in
# one colour fail; the Material theme's header and the page's text pass. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-site-screenshots}")"
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$chromium" ] || { echo "chromium not found: apt-get install -y chromium, or set CHROMIUM" >&2; exit 2; }
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
mkdir -p "$out"

python -m mkdocs build --strict --quiet --site-dir "$site"
pages=(quickstart inra api)
for page in "${pages[@]}"; do
    # --virtual-time-budget lets the theme's scripts and fonts settle before the shot
    "$chromium" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,3000 \
        --virtual-time-budget=5000 --screenshot="$out/$page.png" "file://$site/$page/index.html" 2>/dev/null
done

python - "$out" "${pages[@]}" <<'EOF'
import sys
from pathlib import Path

from PIL import Image

failed = []
for png in (Path(sys.argv[1]) / f"{page}.png" for page in sys.argv[2:]):
    if not png.is_file():
        failed.append(f"{png.name} (not written)")
        continue
    image = Image.open(png).convert("RGB")
    counts = image.getcolors(maxcolors=image.width * image.height)
    share = 1 - max(counts)[0] / (image.width * image.height)  # pixels not in the most common colour
    ok = share >= 0.01
    print(f"{png}: {image.width}x{image.height}, {len(counts)} colours, {share:.1%} not background: {'ok' if ok else 'BLANK'}")
    failed += [] if ok else [png.name]
sys.exit(f"blank screenshots: {', '.join(failed)}" if failed else 0)
EOF
