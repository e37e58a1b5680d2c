"""What the book's pages need so that their widgets work on the static site.

Three things that the theme and its extensions put into every page break the widgets
(ipywidgets' html-manager), each found by moving the sliders in a browser:

1. sphinx-thebe registers its configuration script twice; the second copy declares the same
   ``const`` again, a SyntaxError. Every page keeps one copy of each script.
2. The theme's Font Awesome replaces every ``<i class="fa ...">`` icon by an ``<svg>``; the Play
   widget later sets the class of an ``<i>`` that is gone and throws, which also stops the link
   from the slider to the frames. With ``autoReplaceSvg: "nest"`` the ``<svg>`` goes inside the
   ``<i>``, which stays.
3. html-manager typesets widget labels through MathJax 2's ``MathJax.Hub.Queue``; the book
   loads MathJax 3, which has no ``Hub``. A small ``Hub.Queue`` hands the work to MathJax 3.

And one that only looks wrong: a progress bar that closed itself while the page was built
(tqdm's ``leave=False``) is saved hidden but still takes its room, a blank band on the page.
Such bars are not drawn at all.
"""

FONT_AWESOME = 'window.FontAwesomeConfig = {autoReplaceSvg: "nest"};'

MATHJAX_HUB = """document.addEventListener("DOMContentLoaded", function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {Queue: function () {
      if (window.MathJax.typesetPromise) { window.MathJax.typesetPromise(); }
    }};
  }
});"""


HIDDEN_BARS = """document.head.insertAdjacentHTML("beforeend", "<style>" +
  ".widget-subarea:has(> .widget-box[style*='visibility: hidden']) { display: none; }" +
  "</style>");"""


def keep_one_copy_of_each_script(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # the same inline script may come once with filename None and once with "" (sphinx-thebe)
        key = (str(getattr(script, "filename", script) or ""),
               repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    if "script_files" in context:
        context["script_files"][:] = kept


def setup(app):
    # inline and not deferred: they run while the page is parsed, before the deferred
    # Font Awesome and MathJax scripts and before the widgets render
    app.add_js_file(None, body=FONT_AWESOME, priority=1)
    app.add_js_file(None, body=MATHJAX_HUB, priority=1)
    app.add_js_file(None, body=HIDDEN_BARS, priority=1)
    app.connect("html-page-context", keep_one_copy_of_each_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
