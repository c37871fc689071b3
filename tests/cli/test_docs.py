"""The manual a user navigates: a short README, docs/ pages whose links all lead somewhere,
and a CLI reference and man page that are exactly what the commands' --help says."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "vagrant" / "README.md"]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


@pytest.mark.parametrize("path", [gen_docs.CLI_MD, gen_docs.MAN_PAGE], ids=lambda p: p.name)
def test_the_generated_reference_is_what_help_says(path):
    assert path.read_text() == gen_docs.generated()[path], (
        f"{path.relative_to(REPO)} is stale: run scripts/gen_docs.py")


def test_the_check_names_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "cli.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen_docs, "CLI_MD", stale)
    monkeypatch.setattr(gen_docs, "REPO", tmp_path)
    monkeypatch.setattr(gen_docs, "MAN_PAGE", tmp_path / "ccxdp.8")
    (tmp_path / "ccxdp.8").write_text(gen_docs.man_page())
    assert gen_docs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cli.md: stale") and err.count("\n") == 1, err
    assert stale.read_text() == "old\n"  # --check writes nothing
    assert gen_docs.main([]) == 0 and gen_docs.main(["--check"]) == 0


def test_the_check_passes_on_this_tree():
    cp = subprocess.run([sys.executable, REPO / "scripts" / "gen_docs.py", "--check"],
                        capture_output=True, text=True, timeout=120)
    assert (cp.returncode, cp.stderr) == (0, "")


def test_the_man_pages_description_is_the_readmes_text():
    paragraphs = gen_docs.description()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert len(paragraphs) == 2 and all(par in readme for par in paragraphs)
    assert paragraphs[0].startswith("ccxdp is an XDP DNS filter")


def test_every_command_has_its_section_in_the_reference_and_the_man_page():
    names = [name for name, _ctx in gen_docs.commands()]
    assert len(names) == len(set(names)) > 30
    cli_md, man = gen_docs.CLI_MD.read_text(), gen_docs.MAN_PAGE.read_text()
    for name in names:
        assert f"\n## {name}\n" in cli_md, name
        assert f'\n.SS "{gen_docs._roff(name)}"\n' in man, name
    assert "ccxdp feed sync" in names and "ccxdp lab sinkhole-log" in names


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: {target}: no such file"
        if anchor and dest.suffix == ".md":
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                     for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            assert anchor in slugs, f"{page.name}: {target}: no such heading"


def test_the_man_page_renders_without_warnings():
    groff = shutil.which("groff")
    assert groff, "scripts/setup.sh installs groff-base"
    cp = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(gen_docs.MAN_PAGE)],
                        capture_output=True, text=True, timeout=60)
    assert (cp.returncode, cp.stderr) == (0, "")
    out = subprocess.run(["man", "-l", str(gen_docs.MAN_PAGE)], capture_output=True,
                         text=True, timeout=60, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert (out.returncode, out.stderr) == (0, "")
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT",
                    "FILES", "SEE ALSO"):
        assert f"\n{heading}\n" in out.stdout, heading
    assert "\n   ccxdp feed sync\n" in out.stdout
    assert "--pin-dir" in out.stdout  # an option reads as typed, hyphens and all


def test_set_up_installed_the_man_page():
    """scripts/setup.sh installs docs/ccxdp.8 (of whichever checkout ran it last), so that
    'man ccxdp' works."""
    cp = subprocess.run(["man", "-w", "ccxdp"], capture_output=True, text=True, timeout=60,
                        env={"PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0, "no ccxdp(8): run scripts/setup.sh"
    assert Path(cp.stdout.strip()).resolve() == Path("/usr/local/share/man/man8/ccxdp.8")
