"""Every reStructuredText document of the repository renders without errors.

A malformed table or a broken section in README.rst or docs/ silently turns into
literal text on the rendered page; docutils reports it, so the suite fails instead.
"""
import glob
import os

import docutils.core
import docutils.utils
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = sorted({
    os.path.relpath(p, REPO)
    for pattern in ("*.rst", "docs/*.rst", "*/README.rst", "image-builder/*.rst")
    for p in glob.glob(os.path.join(REPO, pattern))})


def test_documents_found():
    assert "README.rst" in DOCS and "docs/deploy.rst" in DOCS


@pytest.mark.parametrize("path", DOCS)
def test_document_renders_without_errors(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        text = f.read()
    try:
        docutils.core.publish_doctree(text, source_path=path, settings_overrides={
            "report_level": docutils.utils.Reporter.ERROR_LEVEL,
            "halt_level": docutils.utils.Reporter.ERROR_LEVEL,
            "warning_stream": False})
    except docutils.utils.SystemMessage as e:
        pytest.fail("%s: %s" % (path, e))
