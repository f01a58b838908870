"""The README and the flags: the stage-by-stage block is what `loop.py` runs, every --help shows every
flag with a help line and its default, and the docs speak of the software, not of its making."""
import glob
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_readmes_stage_commands_are_the_ones_loop_py_runs():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("<!-- loop-commands -->\n")[1].split("<!-- /loop-commands -->")[0]
    documented = [line.strip() for line in block.splitlines() if line.strip()]
    done = subprocess.run([sys.executable, "loop.py", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = [re.sub(r"^OMP_NUM_THREADS=\d+ ", "OMP_NUM_THREADS=1 ", line[2:])  # the README shows 2 cores' share
               for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert documented == printed


def parsers():
    import dpo
    import explore
    import loop
    import pairs
    import sft
    return {"sft.py": sft.build_parser(), "dpo.py": dpo.build_parser(), "explore.py": explore.build_parser(),
            "pairs.py": pairs.build_parser(), "loop.py": loop.build_parser()}


@pytest.mark.parametrize("script", ["sft.py", "dpo.py", "explore.py", "pairs.py", "loop.py"])
def test_every_flag_has_a_help_line_and_help_shows_the_defaults(script):
    parser = parsers()[script]
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert [action.dest for action in flags if not action.help] == []
    text = parser.format_help()
    for action in flags:
        shows_default = action.nargs != 0 and not action.required  # an on/off switch or a required flag has none
        if shows_default:
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest


HISTORY = [r"\bsessions?\b", r"\bissue \d+", r"\blever \d", r"\bprobe\b", r"\.\./shared", r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b",
           r"\b20\d\d-\d\d-\d\d\b", r"\bthis machine\b", r"\blent\b"]


@pytest.mark.parametrize("path", ["README.md", "docs/*.md", "research/README.md", "*.py", "plumbing/*.py",
                                  "research/*.py", "research/*.sh", "envs/*.py", "exercises/*.py",
                                  "exercises/README.md"])
def test_the_docs_and_docstrings_speak_of_the_software_not_its_history(path):
    for name in glob.glob(os.path.join(ROOT, path)):
        text = open(name, encoding="utf-8").read()
        for pattern in HISTORY:
            found = re.search(pattern, text)
            assert found is None, f"{os.path.relpath(name, ROOT)}: {found.group(0)!r}"


# words of a research log, not of a reference: a page says what the software does and what its data shows
PAGE_HISTORY = [r"\bso far\b", r"\bearlier\b", r"(?<!buy )\bnow\b", r"\bold default\b", r"\btried and\b",
                r"\breverted\b", r"\bno longer\b", r"\bpreviously\b", r"\btoday\b", r"\bused to\b"]
PAGES = ["README.md", "docs/*.md", "research/README.md", "exercises/*.md", "results/*/README.md"]


@pytest.mark.parametrize("path", PAGES)
def test_the_pages_read_as_a_reference_not_a_log(path):
    for name in glob.glob(os.path.join(ROOT, path)):
        text = open(name, encoding="utf-8").read()
        for pattern in PAGE_HISTORY:
            found = re.search(pattern, text, re.I)
            assert found is None, f"{os.path.relpath(name, ROOT)}: {found.group(0)!r} in " \
                                  f"{text[max(0, found.start() - 60):found.end() + 30]!r}"


def typed_figures(text):
    """Rows of markdown tables outside the generated markers that hold a measured-looking figure (a decimal
    number or a percentage): figures typed by hand."""
    inside, rows = False, []
    for line in text.splitlines():
        if line.startswith("<!-- table:"):
            inside = True
        elif line.startswith("<!-- /table:"):
            inside = False
        elif line.startswith("|") and not inside and re.search(r"\d\.\d|\d ?%", line):
            rows.append(line)
    return rows


@pytest.mark.parametrize("path", PAGES)
def test_every_table_with_figures_is_made_from_data(path):
    for name in glob.glob(os.path.join(ROOT, path)):
        rows = typed_figures(open(name, encoding="utf-8").read())
        assert rows == [], f"{os.path.relpath(name, ROOT)}: a table typed by hand: {rows[0]!r}"
    assert typed_figures("| a | 1.5 |\n") and not typed_figures("<!-- table:x -->\n| a | 1.5 |\n<!-- /table:x -->\n")


def anchor(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", PAGES)
def test_every_link_between_pages_reaches_a_file_and_heading(path):
    for name in glob.glob(os.path.join(ROOT, path)):
        text = open(name, encoding="utf-8").read()
        for target, fragment in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", text):
            file = os.path.normpath(os.path.join(os.path.dirname(name), target)) if target else name
            assert os.path.exists(file), f"{os.path.relpath(name, ROOT)}: a link to {target}, which is not there"
            if fragment:
                headings = [anchor(h) for h in re.findall(r"^#+ (.*)$", open(file, encoding="utf-8").read(), re.M)]
                assert fragment in headings, f"{os.path.relpath(name, ROOT)}: no heading #{fragment} in {target or 'itself'}"


def test_every_generated_table_on_a_page_is_what_its_data_gives():
    """research/pages.py writes the tables between <!-- table:NAME --> markers from results/; a figure typed
    over by hand, or a table whose data is gone, fails here."""
    sys.path.insert(0, os.path.join(ROOT, "research"))
    import pages
    marked = 0
    for path in pages.pages():
        text = open(path, encoding="utf-8").read()
        marked += len(pages.MARKER.findall(text))
        assert pages.render(text) == text, f"{os.path.relpath(path, ROOT)}: run python research/pages.py"
    assert marked >= 5  # the README's and docs/results.md's tables at least
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = pages.MARKER.search(readme, readme.index("<!-- table:default-printed -->"))
    edited = readme.replace(table.group(2), table.group(2).replace(".", ",", 1))  # one figure typed over
    assert pages.render(edited) != edited
    with pytest.raises(Exception, match="does not make"):
        pages.render("<!-- table:no-such-table -->\nx\n<!-- /table:no-such-table -->")


def test_the_reports_picture_is_captioned_with_the_run_it_shows():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    caption = readme.split("(docs/report.png)")[1].split("\n\n")[1]
    assert "runs/default" in caption and "--variants divergence-nll --eval-splits dev,test_seen,test_unseen" in \
        " ".join(caption.split())


def prose_paragraphs(text):
    """A page's prose, paragraph by paragraph (a list item is a paragraph): code blocks, indented blocks,
    tables and generated tables left out."""
    kept, generated, fence = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif line.startswith("<!-- table:"):
            generated = True
        elif line.startswith("<!-- /table:"):
            generated = False
        elif not (fence or generated or line.startswith(("    ", "|", "<!--"))):
            kept.append(line)
            continue
        kept.append("")
    return re.split(r"\n\s*\n|\n(?=\s*(?:[-*]|\d+\.|#) )", "\n".join(kept))


def prose_sentences(text):
    """The sentences of a page's prose, inline code and link targets counted as one word."""
    for paragraph in prose_paragraphs(text):
        paragraph = re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", "CODE", paragraph))
        yield from (s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*(\[])", " ".join(paragraph.split())) if s)


@pytest.mark.parametrize("path", ["README.md", "exercises/*.md", "docs/glossary.md"])
def test_no_sentence_runs_over_40_words(path):
    for name in glob.glob(os.path.join(ROOT, path)):
        long = [s for s in prose_sentences(open(name, encoding="utf-8").read()) if len(s.split()) > 40]
        assert long == [], f"{os.path.relpath(name, ROOT)}: a sentence of {len(long[0].split())} words: {long[0][:80]!r}"
    assert [len(s.split()) for s in prose_sentences("One two. Three `a b c` four.\n\n    code here. More.\n")] == [2, 3]


FIGURE = re.compile(r"(?<![\w.\-/:])(\d+(?:\.\d+)? ?(?:s|seconds|minutes|min|hours)\b|\d+(?:\.\d+)? ?%|\d+\.\d+)")
# a figure right after one of these is a setting, a version or a scale, not a measurement
SETTING = re.compile(r"(β|beta|\blr\b|learning rate|Python|transformers|torch|version|reward|≥|§|arXiv|\$|clip|"
                     r"temperature|ε|the paper|authors' script|at least|warm-up|arXiv:|default|at random)[^.;:]{0,12}$", re.I)


def figure_sentences(text):
    """Each prose sentence with the measured-looking figures in it (decimals, percentages, durations),
    quoted examples and inline code left out."""
    for paragraph in prose_paragraphs(text):
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z*(\[`])", " ".join(paragraph.split())):
            bare = re.sub(r'"[^"]*"|`[^`]*`', "X", sentence)
            figures = [m for m in FIGURE.finditer(bare) if not SETTING.search(bare[:m.start()])]
            if figures:
                yield sentence, [m.group(0) for m in figures]


@pytest.mark.parametrize("path", PAGES)
def test_a_measured_figure_in_prose_names_the_file_it_comes_from(path):
    """Outside the generated tables, a sentence that reports a measurement (a decimal, a percentage, a time)
    names the results file behind it; settings, versions and the reward scale are not measurements."""
    for name in glob.glob(os.path.join(ROOT, path)):
        for sentence, figures in figure_sentences(open(name, encoding="utf-8").read()):
            assert "results/" in sentence, f"{os.path.relpath(name, ROOT)}: {figures} with no results file: {sentence[:120]!r}"
    assert list(figure_sentences("It took 6.6 minutes. At lr 0.1 it ran.\n")) == [("It took 6.6 minutes.", ["6.6 minutes"])]
