"""Sphinx configuration of the scatac documentation site.

Build it from the repository root, with the project's and the docs' requirements installed:

    .venv/bin/pip install -r docs/requirements.txt
    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is generated from the numpydoc docstrings (autodoc, autosummary, napoleon); the tutorial
notebook is executed on every build (myst-nb), so its figures are what the code draws now.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scatac package of this checkout, installed or not
os.environ.setdefault("MPLBACKEND", "Agg")

import scatac  # noqa: E402

project = "scatac"
author = "the scatac authors"
copyright = "the scatac authors"
release = version = scatac.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and executed notebooks (it brings myst_parser with it)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "requirements.txt"]
templates_path = ["_templates"]

# MyST: headings get anchors, so that pages link to each other's sections as they do on GitHub
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# the tutorial runs at every build; an error in it fails the build
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_show_tb = True
nb_merge_streams = True

# API reference: one generated page per function and class, from numpydoc docstrings
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures read as written; the types are in the docstrings' Parameters
autodoc_mock_imports = ["snapatac2"]  # an optional reference, never needed to document scatac
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes as a field list: the class template documents only methods as objects
# "Writes": the AnnData keys a function fills in, rendered as its own section after Returns; "Other Parameters" (the
# methods' options) as a list of its own, not merged into Parameters
napoleon_custom_sections = ["Writes", ("Other Parameters", "params_style")]
# `name` in a docstring is code, as in the Markdown pages
default_role = "code"

html_theme = "furo"
html_title = f"scatac {release}"
html_static_path = []
smartquotes = False  # "--flag" in a docstring stays two hyphens
