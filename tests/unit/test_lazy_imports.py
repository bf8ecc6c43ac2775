"""roles/service_environment/files/mec_conpaas_lazy_imports.py, which every Python
process on an edge node imports at start when MEC_CONPAAS_LAZY_IMPORTS is set (the
services and, through sudo, their privsep daemons, as root): it may only defer a named
module's code, never change what runs.  Each case runs in a fresh interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FILES = os.path.join(REPO, "roles", "service_environment", "files")


@pytest.fixture
def tree(tmp_path):
    """A package whose __init__ imports a heavy submodule it does not use, as
    neutron_lib's imports neutron_lib.db.api."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.sub import heavy  # noqa\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "heavy.py").write_text(
        "import sys\nsys.stdout.write('heavy ran\\n')\nX = 41 + 1\n")
    return tmp_path


def run(tree, code, lazy=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FILES, str(tree)]))
    env.pop("MEC_CONPAAS_LAZY_IMPORTS", None)
    if lazy is not None:
        env["MEC_CONPAAS_LAZY_IMPORTS"] = lazy
    # what the .pth line the role installs does at start
    pth = ('import os; os.environ.get("MEC_CONPAAS_LAZY_IMPORTS") and '
           '__import__("mec_conpaas_lazy_imports")\n')
    out = subprocess.run([sys.executable, "-c", pth + textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_a_named_module_runs_at_its_first_use_not_at_its_import(tree):
    assert run(tree, """
        import pkg
        print("imported")
        print(pkg.sub.heavy.X)
    """, lazy="pkg.sub.heavy") == ["imported", "heavy ran", "42"]


def test_without_the_variable_nothing_is_deferred_or_loaded(tree):
    assert run(tree, """
        import sys, pkg
        print("imported")
        print("mec_conpaas_lazy_imports" in sys.modules)
    """) == ["heavy ran", "imported", "False"]


def test_only_the_named_modules_are_deferred_and_extension_modules_never(tree):
    # _json is a C extension (json.decoder imports it): left to its own loader
    assert run(tree, """
        import json, sys
        print(type(sys.modules["_json"]).__name__, type(sys.modules["json"]).__name__)
        print(json.loads("[1, 2]"))
        import pkg
        print(type(sys.modules["pkg.sub.heavy"]).__name__)
    """, lazy=" _json, pkg.sub.heavy ,") == ["module module", "[1, 2]", "_LazyModule"]


def test_a_name_no_finder_knows_changes_nothing(tree):
    assert run(tree, """
        import pkg
        print(pkg.sub.heavy.X)
    """, lazy="no.such.module") == ["heavy ran", "42"]
