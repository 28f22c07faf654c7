"""Sphinx configuration of the course website (``make docs``).

The source directory is the repository root, so that the notebooks are read where they live
(``notebooks/``) and a notebook's relative link to ``../docs/official.md`` works in the site as on
GitHub. Only ``docs/``, the course notebooks and the quickstart and ablation notebooks of
``reproduce/`` are read. Notebooks are rendered with their committed outputs, never re-executed:
nbval checks that the course's outputs are current. The site's own additions, the exercises'
solutions behind toggles and the landing page's figure, are made by ``docs/_ext/course_site.py``.

Everything the pages load is in the build: MathJax comes from the ``sphinx-mathjax-offline``
package, the theme bundles its own fonts and scripts, and no ipywidgets loader is linked, so the
site works with no network at all.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc documents this checkout's densflow, not an installed one
sys.path.insert(0, str(ROOT / "docs" / "_ext"))  # course_site: the site's notebook reader

from course_site import landing_figure  # noqa: E402

import densflow  # noqa: E402

project = "densflow"
author = "densflow contributors"
copyright = "densflow contributors, MIT licence"
release = version = densflow.__version__

root_doc = "docs/index"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # copies MathJax 3 into _static/mathjax and points mathjax_path at it
]

# Read only the course, the docs and two reproduction notebooks; every other top-level folder is
# pruned from the walk so that a large .venv or outputs/ costs nothing.
REPRODUCE_PAGES = ["reproduce/quickstart.ipynb", "reproduce/ablations.ipynb"]
include_patterns = ["docs/**", "notebooks/*.ipynb", "notebooks/*.md", *REPRODUCE_PAGES]
READ = ("docs", "notebooks", "reproduce")
PRUNED = [
    "docs/_build",
    "docs/_ext",
    "docs/_extra",
    "docs/_templates",
    "notebooks/.ipynb_checkpoints",
]
exclude_patterns = (
    sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in READ) + PRUNED
)

# Notebooks: committed outputs only, read by the course's reader (each exercise's solution inside
# its cell, collapsed).
nb_execution_mode = "off"
nb_custom_formats = {".ipynb": "course_site.read_notebook"}
nb_merge_streams = True
# A notebook executed headless holds no widget (densflow.utils.widgets shows the figure as an image
# and adds controls only for a live front end); with no loader the pages never ask a CDN for
# require.js or the widget manager.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# Jupyter renders a $$…$$ that continues a paragraph (inside a list item, say) as display math;
# so must the site.
myst_dmath_double_inline = True

# API reference: one page per module, generated from the docstrings (Google-style sections are read
# by napoleon, the rest is reStructuredText).
autosummary_generate = True
# docs/api/ is generated output (ignored by git): pages of modules renamed or removed since
# the last build would otherwise stay, fail to import and fail the build.
shutil.rmtree(ROOT / "docs" / "api", ignore_errors=True)
autosummary_imported_members = False
autosummary_ignore_module_all = False  # a module page lists what the module exports
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_book_theme"
html_title = "densflow"
html_extra_path = ["_extra"]  # index.html at the site's root, forwarding to docs/index.html
# The landing page's figure: Fig. 3 as notebook 07 drew it, taken from its committed output.
_generated = Path(tempfile.mkdtemp(prefix="densflow-site-"))
landing_figure(
    ROOT / "notebooks" / "07_full_denseflow.ipynb",
    "draw_architecture(DenseFlowConfig.paper(), ax)",
    _generated / "course-fig3.png",
)
html_static_path = [str(_generated)]
html_copy_source = True
html_show_sourcelink = False
# Light by default: the notebooks' matplotlib figures have white backgrounds. (Also gives the
# theme's mode switch a value on a first visit, which otherwise logs a console error.)
html_context = {"default_mode": "light"}
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # the sidebar has the search field; one is enough
}

# A notebook's link to a repository folder or file that is not a page of the site (``../reproduce``,
# a test module) reads right on GitHub; in the site it becomes the plain path rather than a dead
# link. Links to paths that do not exist still fail the build (``make docs`` runs with -W).
suppress_warnings = ["myst.header"]  # a notebook's heading levels are its authors' choice


def _unlink_repository_paths(app, doctree):
    from docutils import nodes
    from sphinx import addnodes

    docname = app.env.docname
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain") == "doc":
            continue
        target = node.get("reftarget", "").split("#", 1)[0]
        if not target or "://" in target:
            continue
        path = (ROOT / docname).parent.joinpath(target).resolve()
        if path.is_relative_to(ROOT) and path.exists():
            node.replace_self(node.children or [nodes.literal(target, target)])


def setup(app):
    # doctree-read comes before any reference is resolved, so myst never sees these links.
    app.connect("doctree-read", _unlink_repository_paths)
