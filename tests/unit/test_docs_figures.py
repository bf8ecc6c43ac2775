"""Every performance figure in the docs is read from a result file.

A figure is cited by a reStructuredText comment after the text that gives it
(README's "Benchmarks" section documents the convention)::

    ... the first paint took **123 ms** median (p95 192 ms) ...

    .. bench: dashboard.json first_map_paint_ms.median=123 first_map_paint_ms.p95=192

The comment names a file of ``bench/results/`` and ``key.path=figure`` pairs
(``key.path/60=24.4`` for a value the text gives in other units; ``.min``,
``.max`` and ``.median`` of a list; a string value must contain the figure).  A figure
is checked in both directions: the JSON value, rounded to the decimals the
figure is written with, must equal it, and the figure must be written in the
text between the previous citation (or section title) and the comment.  So
a re-run whose numbers changed fails here until the text says them, and a
figure cannot be edited by hand without its file.

In the sections that exist to give figures (``FIGURE_SECTIONS``) every number
with a unit of time or size must be cited, except targets (``target <= 1 s``,
``≤ 600 MB``: goals, not measurements) and ``literals``: a figure with no
file behind it is removed rather than kept.
"""
import decimal
import glob
import json
import os
import re
import statistics

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RESULTS = os.path.join(REPO, "bench", "results")
DOCS = sorted({
    os.path.relpath(p, REPO)
    for pattern in ("*.rst", "docs/*.rst", "*/README.rst")
    for p in glob.glob(os.path.join(REPO, pattern))})
# (document, section title): sections made of figures, where every number
# with a unit must be cited.
FIGURE_SECTIONS = {("README.rst", "Benchmarks"), ("README.rst", "Latest figures"),
                   ("docs/deploy.rst", "Benchmark"),
                   ("image-builder/README.rst",
                    "Full ``edge`` image, session 3 (2026-11-24): uninterrupted builds")}
UNIT = r"(?:ms|s|min|minutes|MB|MiB|GB|GiB)\b"
NUMBER_WITH_UNIT = re.compile(r"(?<![\w.,])(\d[\d,]*(?:\.\d+)?)(?:\s*-\s*[\d.,]+)?\s+"
                              + UNIT)
TARGET = re.compile(r"(?:target:?\s*)?(?:<=|≤)\s*[\d.,]+\s*" + UNIT)
TITLE_RULE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
PAIR = re.compile(r"^([A-Za-z0-9_.+\-/\[\]]+?)(?:([/*])([0-9.e+]+))?=(-?[\d,]+(?:\.\d+)?)$")


class Block:
    """Text between two citations or titles, with the citation ending it."""

    def __init__(self, doc, section, first_line):
        self.doc, self.section, self.first_line = doc, section, first_line
        self.lines, self.cite, self.cite_line = [], None, None

    @property
    def text(self):
        return "\n".join(self.lines)

    def where(self):
        return "%s:%d (section %r)" % (self.doc, self.cite_line or self.first_line,
                                       self.section)


def blocks(doc):
    """Split ``doc`` at section titles and ``.. bench:`` comments."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, section = [], None
    cur = Block(doc, section, 1)
    i = 0
    while i < len(lines):
        line = lines[i]
        if TITLE_RULE.match(line) and i > 0 and lines[i - 1].strip() and \
                not TITLE_RULE.match(lines[i - 1]):
            section = lines[i - 1].strip()
            cur.lines.pop()  # the title belongs to the new section
            out.append(cur)
            cur = Block(doc, section, i + 1)
        elif line.startswith(".. bench:"):
            cite = line[len(".. bench:"):].split()
            j = i + 1
            while j < len(lines) and lines[j].startswith((" ", "\t")) and lines[j].strip():
                cite += lines[j].split()
                j += 1
            cur.cite, cur.cite_line = cite, i + 1
            out.append(cur)
            cur = Block(doc, section, j + 1)
            i = j
            continue
        else:
            cur.lines.append(line)
        i += 1
    out.append(cur)
    return out


def lookup(data, path):
    for key in path.split("."):
        if isinstance(data, list) and key in ("min", "max", "median"):
            data = {"min": min, "max": max, "median": statistics.median}[key](data)
        elif isinstance(data, list):
            data = data[int(key)]
        elif isinstance(data, dict) and key in data:
            data = data[key]
        else:
            raise KeyError(path)
    return data


def written(text, figure):
    """Is ``figure`` (as written in the citation) a number of ``text``?"""
    return re.search(r"(?<![\w.,])%s(?![\w]|[.,]\d)" % re.escape(figure), text) is not None


def check_block(block):
    """Problems of one cited block, as sentences."""
    name, pairs = block.cite[0], block.cite[1:]
    path = os.path.join(RESULTS, name)
    if not name.endswith(".json") or not os.path.exists(path):
        return ["%s: cites %r, which is not a file of bench/results/" % (block.where(), name)]
    with open(path) as f:
        data = json.load(f)
    problems = []
    if not any(k in data for k in ("machine", "host_cpus")):
        problems.append("%s: %s does not say the machine it was measured on" % (
            block.where(), name))
    if not pairs:
        problems.append("%s: cites %s but no key=figure" % (block.where(), name))
    for pair in pairs:
        m = PAIR.match(pair)
        if not m:
            problems.append("%s: %r is not key.path=figure (or key.path/N=figure)" % (
                block.where(), pair))
            continue
        key, op, factor, figure = m.groups()
        try:
            value = lookup(data, key)
        except (KeyError, IndexError, ValueError):
            problems.append("%s: %s has no %s" % (block.where(), name, key))
            continue
        if isinstance(value, str) and op is None:
            if figure not in value:
                problems.append("%s: %s in %s is %r, which does not say %s" % (
                    block.where(), key, name, value, figure))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append("%s: %s in %s is %r, not a number" % (
                block.where(), key, name, value))
            continue
        else:
            check_number(block, name, key, op, factor, figure, value, problems)
        if not written(block.text, figure):
            problems.append("%s: %s=%s is cited but the text above does not say %s" % (
                block.where(), key, figure, figure))
    return problems


def check_number(block, name, key, op, factor, figure, value, problems):
    """The JSON value, in the figure's units and rounded to its decimals,
    equals the figure."""
    if op == "/":
        value = value / float(factor)
    elif op == "*":
        value = value * float(factor)
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    # Rounded as people do (half up), not as round() does (half to even).
    rounded = decimal.Decimal(repr(value)).quantize(
        decimal.Decimal(1).scaleb(-decimals), rounding=decimal.ROUND_HALF_UP)
    if rounded != decimal.Decimal(figure.replace(",", "")):
        problems.append("%s: the text says %s for %s, %s has %s" % (
            block.where(), figure, key, name, rounded))


def uncited(block):
    """Numbers with a unit in a figure section that no citation covers."""
    if (block.doc, block.section) not in FIGURE_SECTIONS:
        return []
    cited = {p.split("=", 1)[1] for p in (block.cite or [])[1:] if "=" in p}
    prose, literal = [], False
    for line in block.lines:  # literal blocks (after "::") are examples
        if literal and line.strip() and not line.startswith((" ", "\t")):
            literal = False
        if not literal:
            prose.append(line)
            literal = line.rstrip().endswith("::")
    text = re.sub(r"``[^`]*``", "", "\n".join(prose))  # literals: names, commands
    text = TARGET.sub("", text)
    return ["%s: %s has no result file cited after it" % (block.where(), m.group(0))
            for m in NUMBER_WITH_UNIT.finditer(text) if m.group(1) not in cited]


ALL = [b for doc in DOCS for b in blocks(doc)]
CITED = [b for b in ALL if b.cite]


def test_figures_are_cited():
    assert len(CITED) >= 5, "the convention is in use (README's Benchmarks)"
    assert {b.doc for b in CITED} >= {"README.rst", "docs/deploy.rst"}


@pytest.mark.parametrize("block", CITED, ids=[b.where() for b in CITED])
def test_figure_matches_its_result_file(block):
    assert check_block(block) == []


def test_figure_sections_have_no_uncited_figure():
    assert [p for b in ALL for p in uncited(b)] == []


def test_the_check_catches_a_wrong_figure(tmp_path):
    """A figure one digit off, a key the file does not have, and a cited
    figure the text does not give are each reported."""
    name = os.path.basename(sorted(glob.glob(os.path.join(RESULTS, "dashboard*.json")))[-1])
    with open(os.path.join(RESULTS, name)) as f:
        median = json.load(f)["first_map_paint_ms"]["median"]
    good = "%d" % int(median + 0.5)  # half up, as the check rounds
    block = Block("README.rst", "Benchmarks", 1)
    block.lines = ["the map took **%s ms** median" % good]
    block.cite = [name, "first_map_paint_ms.median=" + good]
    assert check_block(block) == []
    block.cite = [name, "first_map_paint_ms.median=%d" % (int(median + 0.5) + 1)]
    assert "the text says" in " ".join(check_block(block))
    block.cite = [name, "first_map_paint_ms.nope=" + good]
    assert "has no first_map_paint_ms.nope" in " ".join(check_block(block))
    block.lines = ["the map took **%s.5 ms** median, and 1%s ms" % (good, good)]
    block.cite = [name, "first_map_paint_ms.median=" + good]
    assert "does not say" in " ".join(check_block(block))
    assert uncited(block) != []
