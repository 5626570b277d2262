"""Export the lesson notebooks to self-contained reveal.js slides: one HTML file each,
which opens offline on a projector (no CDN, no server, no kernel).

    python scripts/make_slides.py                 # every lesson notebook -> slides/ (Chinese: slides/zh/)
    python scripts/make_slides.py notebooks/03_ignore_index_masking.ipynb --out /tmp/s

nbconvert's slides exporter writes the slides from the cells' slideshow metadata
(scripts/add_slide_metadata.py), with their committed outputs; its page loads
reveal.js, require.js, jQuery and MathJax from CDNs. This script puts reveal.js 4 and
(for notebooks with formulas) MathJax 3's SVG renderer into the page instead, read from
the packages' npm tarballs. Those are fetched once from the npm registry, checked
against a pinned sha256 and cached in .cache/vendor/ (like `pip install`, the one step
that needs the registry); after that everything works offline.
"""

import argparse
import functools
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlib.plumbing.download import download_file  # noqa: E402
from ftlib.plumbing.fileio import atomic_write_text  # noqa: E402

CACHE = ROOT / ".cache" / "vendor"
VENDOR = {  # package: (version, sha256 of the npm tarball)
    "reveal.js": ("4.6.1", "4f4121ef2b8e7e9398bdecd7b3b6ce5e0ee3a2f5af221708eb6c4ce03bcae6be"),
    "mathjax": ("3.2.2", "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"),
}
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Placeholders given to nbconvert as URLs, then replaced in its output.
REVEAL, JQUERY, REQUIRE, MERMAID, MATHJAX = ("FTLIB-REVEAL", "FTLIB-JQUERY", "FTLIB-REQUIREJS",
                                             "FTLIB-MERMAID", "FTLIB-MATHJAX")


@functools.lru_cache(maxsize=None)
def vendor_file(package, member):
    """The text of `member` (a path inside the package) from its cached npm tarball; read
    once per process (the tarball is hashed and unpacked once, not for every notebook)."""
    version, sha256 = VENDOR[package]
    name = package.split("/")[-1]
    tarball = CACHE / f"{name}-{version}.tgz"
    download_file(f"https://registry.npmjs.org/{package}/-/{name}-{version}.tgz", tarball,
                  sha256=sha256, progress=False)
    with tarfile.open(tarball) as archive:
        return archive.extractfile(f"package/{member}").read().decode("utf-8")


def _replace_once(pattern, replacement, html, what):
    new, count = re.subn(pattern, lambda _: replacement, html, count=1, flags=re.DOTALL)
    if count != 1:
        raise RuntimeError(f"make_slides: nbconvert's page has no {what} to replace; "
                           "its reveal template changed (update scripts/make_slides.py)")
    return new


def _has_math(nb):
    return any(cell.cell_type == "markdown" and "$" in cell.source for cell in nb.cells)


def export(path):
    """The self-contained slides HTML of one notebook."""
    import nbformat
    from nbconvert import SlidesExporter

    nb = nbformat.read(path, as_version=4)
    # Saved widget state would make the page fetch the widget manager from a CDN; offline,
    # with no kernel, each widget shows its static fallback (text or HTML) instead.
    nb.metadata.pop("widgets", None)
    exporter = SlidesExporter(reveal_url_prefix=REVEAL, jquery_url=JQUERY, require_js_url=REQUIRE,
                              mathjax_url=MATHJAX, mermaid_js_url=MERMAID)
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    # scripts from CDNs: removed (reveal.js and MathJax come back inline below)
    html = _replace_once(rf'<script src="{JQUERY}">\s*</script>', "", html, "jQuery tag")
    html = _replace_once(rf'<script src="{REQUIRE}">\s*</script>', "", html, "require.js tag")
    html = _replace_once(rf'<script type="module">\s*import mermaid from \'{MERMAID}\';.*?</script>',
                         "", html, "mermaid module")
    html = re.sub(rf'<script[^>]*src="{MATHJAX}[^"]*"[^>]*>\s*</script>', "", html)
    # reveal.js's style sheets, inline (the theme nbconvert chose: "simple" by default)
    html = _replace_once(rf'<link[^>]*href="{REVEAL}/dist/reveal.css"[^>]*>',
                         f"<style>\n{vendor_file('reveal.js', 'dist/reveal.css')}\n</style>", html,
                         "reveal.css link")
    theme_name = re.search(rf'href="{REVEAL}/dist/theme/([\w-]+)\.css"', html)
    if theme_name is None:
        raise RuntimeError("make_slides: nbconvert's page links no reveal.js theme")
    theme = re.sub(r"@import url\([^)]*\);", "", vendor_file("reveal.js", f"dist/theme/{theme_name[1]}.css"))
    html = _replace_once(rf'<link[^>]*href="{REVEAL}/dist/theme/[\w-]+\.css"[^>]*>',
                         f'<style id="theme">\n{theme}\n</style>', html, "theme link")
    # reveal.js itself, started without require.js; MathJax 3 (SVG, no font files) if needed
    start = ("<script>\n" + vendor_file("reveal.js", "dist/reveal.js") + "\n</script>\n"
             "<script>\nReveal.initialize({controls: true, progress: true, history: true, center: false, "
             "transition: 'slide', slideNumber: 'c/t', width: 960, height: 700});\n</script>\n"
             # a slide longer than the screen scrolls (the wheel, or a touchpad) instead of being cut
             "<style>.reveal .slides section {height: 700px; overflow-y: auto;}</style>")
    if _has_math(nb):
        start = ("<script>\nwindow.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']]}, "
                 "svg: {fontCache: 'global'}};\n</script>\n<script>\n"
                 + vendor_file("mathjax", "es5/tex-svg.js") + "\n</script>\n" + start)
    html = _replace_once(r"<script>\s*require\(\s*\{.*?\}\s*\);\s*</script>", start, html,
                         "require() call that starts reveal.js")
    left = [u for u in (REVEAL, JQUERY, REQUIRE, MERMAID, MATHJAX) if u in html]
    if left:
        raise RuntimeError(f"make_slides: {path.name}: {left} still in the page")
    return html


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson notebook")
    parser.add_argument("--out", type=Path, default=ROOT / "slides", help="folder (default slides/)")
    args = parser.parse_args(argv)
    if args.notebooks:
        jobs = [(path, args.out) for path in args.notebooks]
    else:
        jobs = [(path, args.out) for path in LESSONS]
        jobs += [(path, args.out / "zh") for path in sorted((ROOT / "notebooks" / "zh").glob("[0-9][0-9]_*.ipynb"))]
    for path, folder in jobs:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{path.stem}.slides.html"
        atomic_write_text(target, export(path))
        sections = json.loads(path.read_text(encoding="utf-8"))["cells"]
        slides = sum(c["metadata"].get("slideshow", {}).get("slide_type") == "slide" for c in sections)
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: "
              f"{slides} slides, {target.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
