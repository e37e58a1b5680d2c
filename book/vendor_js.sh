#!/usr/bin/env bash
# Fetch the JavaScript the book's pages load (MathJax, require.js, the Jupyter widgets HTML
# manager) from the npm registry into book/_vendor/, so the built HTML works offline.
# _config.yml serves _vendor/ at the site root (html_extra_path). Idempotent: a no-op when
# book/_vendor/ is already complete. Set VENDOR_FORCE=1 to fetch again.
set -euo pipefail

MATHJAX=mathjax@3.2.2
REQUIREJS=requirejs@2.3.8
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6

book="$(cd "$(dirname "$0")" && pwd)"
vendor="$book/_vendor"
stamp="$vendor/VERSIONS.txt"   # written last: its presence means complete
want="$MATHJAX $REQUIREJS $HTML_MANAGER fonts-at-@jupyter-widgets"   # the last word: layout version

if [ "${VENDOR_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

command -v npm >/dev/null || { echo "vendor_js.sh: npm is required (install Node.js)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$MATHJAX" "$REQUIREJS" "$HTML_MANAGER" >/dev/null)
for tgz in "$tmp"/*.tgz; do
  name="$(basename "$tgz" .tgz)"
  mkdir -p "$tmp/$name"
  tar -xzf "$tgz" -C "$tmp/$name" --strip-components=1   # every npm tarball has a package/ root
done
mj="$tmp/mathjax-3.2.2"
rq="$tmp/requirejs-2.3.8"
hm="$tmp/jupyter-widgets-html-manager-1.0.6"

# Build the new tree beside the old one and swap, so an interrupted run leaves no half tree.
new="$book/_vendor.new"
rm -rf "$new"
mkdir -p "$new/mathjax/output" "$new/@jupyter-widgets/html-manager/dist"

# MathJax: the combined TeX+MathML → CHTML component and what it loads lazily (fonts included).
cp "$mj/es5/tex-mml-chtml.js" "$new/mathjax/"
cp -r "$mj/es5/input" "$mj/es5/ui" "$mj/es5/adaptors" "$mj/es5/a11y" "$new/mathjax/"
cp -r "$mj"/es5/output/chtml* "$new/mathjax/output/"

# require.js, which myst-nb loads before the widget manager.
cp "$rq/require.js" "$new/require.js"

# The widget manager, laid out as on the CDN (<root>/@jupyter-widgets/html-manager/dist/...)
# so the font URLs it computes from data-jupyter-widgets-cdn resolve.
(cd "$hm/dist" && find . -type f ! -name '*.map' ! -name 'embed.js' ! -name 'libembed-amd.js' \
   -exec cp --parents {} "$new/@jupyter-widgets/html-manager/dist/" \;)
# Its icon fonts (the Play widget's buttons) are requested from <root>/@jupyter-widgets/<hash>.*,
# one folder above dist/, whatever the CDN setting: put a copy there too (~1 MB).
find "$hm/dist" -maxdepth 1 -type f \( -name '*.woff' -o -name '*.woff2' -o -name '*.ttf' \
   -o -name '*.eot' -o -name '*.svg' \) -exec cp {} "$new/@jupyter-widgets/" \;

echo "$want" > "$new/VERSIONS.txt"
rm -rf "$vendor"
mv "$new" "$vendor"
echo "vendor_js.sh: $(du -sh "$vendor" | cut -f1) in $vendor"
