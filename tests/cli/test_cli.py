"""The ``ccxdp`` command: docs, help and examples are tested; errors are one clear line, a
non-zero exit status and no traceback.

Docs and help are checked in-process over the whole click tree (hidden commands excluded).
Errors are checked by running the real console script in a subprocess, always with a fresh
``--pin-dir /sys/fs/bpf/ccxdp-test-<hex>`` and a temporary ``--state-dir``, so nothing real is
touched; every test leaves no pin folder and no network namespace behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ccxdp.cli import cli
from tests.conftest import BPFFS, make_pin_dir, one_line_error, remove_pins

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MANUAL = [README, *sorted((REPO / "docs").glob("*.md"))]
# The console script of the venv running the tests (not resolved: it is a venv symlink).
CCXDP = Path(sys.executable).parent / "ccxdp"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
TIMEOUT = 180  # an attach compiles the program: seconds, not minutes


# -- the command tree ---------------------------------------------------------------------


def _walk(
    cmd: click.Command = cli, path: tuple[str, ...] = ("ccxdp",), include_hidden: bool = False
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            sub = cmd.commands[name]
            if sub.hidden and not include_hidden:
                continue
            yield from _walk(sub, (*path, name), include_hidden)


COMMANDS = dict(_walk())
LEAVES = {p: c for p, c in COMMANDS.items() if not isinstance(c, click.Group)}


def _ids(paths) -> list[str]:
    return [" ".join(p) for p in paths]


def _example_blocks(help_text: str) -> list[list[str]]:
    """The ``\\b`` (no rewrap) blocks of a help text, each a list of stripped lines."""
    blocks, lines, i = [], help_text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "\b":
            block, i = [], i + 1
            while i < len(lines) and lines[i].strip():
                block.append(lines[i].strip())
                i += 1
            blocks.append(block)
        else:
            i += 1
    return blocks


def _command_argv(line: str) -> list[str] | None:
    """argv of a ``ccxdp ...`` example line (comment and pipe cut off), or None."""
    words = shlex.split(line, comments=True)
    if "|" in words:
        words = words[: words.index("|")]
    return words if words[:1] == ["ccxdp"] else None


def _help_examples() -> list[tuple[tuple[str, ...], list[str]]]:
    out = []
    for path, cmd in COMMANDS.items():
        for block in _example_blocks(cmd.help or ""):
            for line in block:
                argv = _command_argv(line)
                if argv:
                    out.append((path, argv))
    return out


def _readme_examples() -> list[list[str]]:
    out = []
    text = "\n".join(p.read_text() for p in MANUAL)
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            argv = _command_argv(line) if line.strip() else None
            if argv:
                out.append(argv)
    return out


def _resolve(argv: list[str]) -> tuple[str, ...]:
    """The longest command path that argv starts with."""
    words = tuple(w for w in argv if not w.startswith("-"))
    best = ()
    for path in COMMANDS:
        if words[: len(path)] == path and len(path) > len(best):
            best = path
    return best


def _long_options(cmd: click.Command) -> set[str]:
    return {
        o
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden
        for o in (*p.opts, *p.secondary_opts)
        if o.startswith("--")
    }


# -- docs and help --------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(COMMANDS), ids=_ids(COMMANDS))
def test_commands_are_documented(path):
    assert re.search(re.escape(" ".join(path)) + r"(?![\w-])", README.read_text()), (
        f"README.md's overview never mentions '{' '.join(path)}'"
    )


@pytest.mark.parametrize(
    "path",
    list(COMMANDS),
    ids=_ids(COMMANDS),
)
def test_commands_have_help(path):
    cmd = COMMANDS[path]
    assert (cmd.help or "").strip(), "no docstring"
    assert (cmd.short_help or cmd.help).strip()
    examples = [line for b in _example_blocks(cmd.help) for line in b if line.startswith("ccxdp")]
    assert examples, "no \\b block with a 'ccxdp ...' example"


@pytest.mark.parametrize("path", list(COMMANDS), ids=_ids(COMMANDS))
def test_help(path):
    result = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="ccxdp")
    assert result.exit_code == 0, result.output
    assert result.exception is None
    usage = result.output.splitlines()[0]
    assert usage.startswith(f"Usage: {' '.join(path)} "), usage


@pytest.fixture
def parse_only(monkeypatch):
    """Run the CLI parser on an argv with every callback replaced by a no-op: options and
    arguments are checked and converted, nothing is done."""
    for _path, cmd in _walk(include_hidden=True):
        monkeypatch.setattr(cmd, "callback", lambda *args, **kwargs: None)

    def parse(argv: list[str]) -> None:
        assert argv[0] == "ccxdp"
        cli.main(argv[1:], prog_name="ccxdp", standalone_mode=False)

    return parse


HELP_EXAMPLES = _help_examples()


@pytest.mark.parametrize(
    "path, argv", HELP_EXAMPLES, ids=[" ".join(argv) for _p, argv in HELP_EXAMPLES]
)
def test_help_examples_parse(parse_only, path, argv):
    resolved = _resolve(argv)
    assert resolved[: len(path)] == path, f"an example of '{' '.join(path)}' runs another command"
    if path in LEAVES:
        assert resolved == path
    parse_only(argv)


README_EXAMPLES = _readme_examples()  # README.md and docs/*.md


def test_the_manual_has_examples_of_every_command():
    assert len(README_EXAMPLES) >= len(LEAVES)
    assert {_resolve(argv) for argv in README_EXAMPLES} >= set(LEAVES)


@pytest.mark.parametrize("argv", README_EXAMPLES, ids=[" ".join(a) for a in README_EXAMPLES])
def test_the_manuals_examples_parse(parse_only, argv):
    assert _resolve(argv) in LEAVES, f"{' '.join(argv)} names no command"
    parse_only(argv)


@pytest.mark.parametrize("path", list(LEAVES), ids=_ids(LEAVES))
def test_the_command_table_lists_every_option(path):
    rows = [
        m.group(1)
        for page in MANUAL  # the hand-written tables: docs/commands.md, docs/lab.md
        for m in re.finditer(r"^\|\s*`(ccxdp [^`]*)`\s*\|", page.read_text(), re.M)
        if _resolve(m.group(1).split()) == path
    ]
    assert len(rows) == 1, f"the manual's command tables have {len(rows)} rows for this command"
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rows[0]))
    assert documented == _long_options(LEAVES[path])


def test_global_options_are_documented():
    text = README.read_text()
    for option in _long_options(cli) - {"--version"}:
        assert option in text, f"README.md never mentions {option}"


HELP_IMPORTS = """
import sys
from ccxdp.cli import cli
for argv in {paths!r}:
    code = cli.main([*argv, "--help"], prog_name="ccxdp", standalone_mode=False)
    assert code == 0, (argv, code)
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "bcc")
assert not loaded, loaded
print("ok")
"""


def test_help_does_not_import_bcc():
    paths = [list(p[1:]) for p in COMMANDS]
    proc = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS.format(paths=paths)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_console_script_help_imports_no_bcc():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(CCXDP), "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ccxdp ")
    modules = {
        m.group(1).strip().split(".")[0]
        for m in re.finditer(r"^import time:\s*\d+ \|\s*\d+ \|(.*)$", proc.stderr, re.M)
    }
    assert "click" in modules  # the import log was read
    assert "bcc" not in modules


# -- errors ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CCXDP_")}


@dataclass
class Sandbox:
    pin_dir: Path
    state_dir: Path
    extra: list[Path] = field(default_factory=list)

    def argv(self, *args: str, pin_dir: Path | None = None) -> list[str]:
        pin = self.pin_dir if pin_dir is None else pin_dir
        return ["--pin-dir", str(pin), "--state-dir", str(self.state_dir), *args]

    def run(self, *args: str, pin_dir: Path | None = None, as_nobody: bool = False):
        cmd = [str(CCXDP), *self.argv(*args, pin_dir=pin_dir)]
        if as_nobody:
            cmd = [*AS_NOBODY, *cmd]
        return self._run(cmd)

    def run_python(self, code: str, *args: str):
        return self._run([sys.executable, "-c", code, *self.argv(*args)])

    @staticmethod
    def _run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, capture_output=True, text=True, env=_env(), cwd="/", timeout=TIMEOUT
        )


@pytest.fixture
def sandbox(tmp_path) -> Iterator[Sandbox]:
    box = Sandbox(make_pin_dir(), tmp_path / "state")
    try:
        yield box
    finally:
        remove_pins(box.pin_dir)
        for path in box.extra:
            shutil.rmtree(path, ignore_errors=True)
    assert not box.pin_dir.exists()


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (only a down lo), removed afterwards."""
    name = f"ccxdp-test-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert name not in _netns_names()


_DIAGNOSTIC = re.compile(r"^\S+:\d+:\d+: (?:warning|note|error): ")
_DIAGNOSTICS_END = re.compile(r"^\d+ (?:warning|error)s? generated\.$")


def _without_compiler_output(stderr: str) -> str:
    """stderr less clang's diagnostics (each with its source and caret lines)."""
    out, in_diagnostic = [], False
    for line in stderr.splitlines():
        if _DIAGNOSTIC.match(line):
            in_diagnostic = True
        elif _DIAGNOSTICS_END.match(line):
            in_diagnostic = False
        elif in_diagnostic and not line.startswith("Error: "):
            pass
        else:
            in_diagnostic = False
            out.append(line)
    return "\n".join(out)


def assert_error(
    proc: subprocess.CompletedProcess, status: int, *words: str, compiles: bool = False
) -> str:
    """Exit status, exactly one 'Error:' line holding every word, no traceback. Exit 1 (ours)
    prints that line alone; exit 2 (click's usage errors) adds click's usage hint. With
    ``compiles`` the command compiled the program first: clang's diagnostics are left out here
    (test_attach_error_is_the_only_output holds them to account)."""
    stderr = _without_compiler_output(proc.stderr) if compiles else proc.stderr
    return one_line_error(proc, status, *words, stderr=stderr)


LONG_LABEL = "a" * 64 + ".example"
LONG_NAME = ".".join(["a" * 63] * 4)  # 4 * 64 + 1 = 257 bytes in wire form


@pytest.mark.parametrize(
    "args, reason",
    [
        (["block", "add", "bad name!"], "has characters other than a-z 0-9 - _"),
        (["block", "add", LONG_LABEL], "longer than 63 bytes"),
        (["block", "add", "a..b"], "empty label"),
        (["block", "add", LONG_NAME], "longer than 255 bytes"),
        (["block", "add", "ok.example", "bad_-.example!"], "has characters other than"),
        (["block", "remove", "a..b"], "empty label"),
    ],
    ids=["characters", "long-label", "empty-label", "long-name", "one-of-two", "remove"],
)
def test_invalid_domain_name(sandbox, args, reason):
    proc = sandbox.run(*args)
    assert_error(proc, 2, "Invalid value for 'NAMES...'", "invalid domain name", reason)
    assert not sandbox.state_dir.exists(), "refused before anything was written"
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
def test_attach_unknown_interface(sandbox):
    # This compiles and pins the program before it looks for the interface: the sandbox
    # removes those pins (see test_failed_attach_leaves_nothing_pinned).
    assert_error(sandbox.run("attach", "nosuchif0"), 1, "no interface nosuchif0", compiles=True)


@pytest.mark.root
def test_attach_unknown_netns(sandbox):
    assert_error(
        sandbox.run("attach", "lo", "--netns", "nosuchns"),
        1,
        "no network namespace 'nosuchns'",
        "ip netns list",
        compiles=True,
    )


@pytest.mark.root
def test_attach_error_is_the_only_output(sandbox):
    """The first attach compiles the C: clang's warnings must not reach the user either."""
    proc = sandbox.run("attach", "nosuchif0")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: no interface nosuchif0"


@pytest.mark.root
def test_detach_nothing_attached(sandbox, netns):
    proc = sandbox.run("detach", "lo", "--netns", netns)
    assert_error(proc, 1, f"nothing attached on lo in netns {netns}")
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
def test_detach_unknown_interface(sandbox):
    assert_error(sandbox.run("detach", "nosuchif0"), 1, "no interface nosuchif0")
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
def test_detach_unknown_netns(sandbox):
    proc = sandbox.run("detach", "lo", "--netns", "nosuchns")
    assert_error(proc, 1, "no network namespace 'nosuchns'")
    assert not sandbox.pin_dir.exists()


def test_detach_needs_an_interface_or_purge(sandbox):
    assert_error(sandbox.run("detach"), 2, "give an interface, or --purge")
    assert not sandbox.pin_dir.exists()


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_stats_not_loaded(sandbox, json_flag):
    proc = sandbox.run("stats", *json_flag)
    assert_error(proc, 1, "ccxdp is not loaded", "ccxdp attach IFACE")
    assert proc.stdout == ""
    assert not sandbox.pin_dir.exists()


def test_block_remove_not_listed(sandbox):
    proc = sandbox.run("block", "remove", "never-listed.example")
    assert_error(proc, 1, "not listed: never-listed.example")
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
@pytest.mark.parametrize("args", [["attach", "lo"], ["detach", "lo"]], ids=["attach", "detach"])
def test_no_bpffs(sandbox, tmp_path, args):
    parent = tmp_path / "not-bpffs"
    parent.mkdir()
    pin_dir = parent / "ccxdp"
    proc = sandbox.run(*args, pin_dir=pin_dir)
    assert_error(proc, 1, f"{pin_dir} is not on a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf")
    assert not pin_dir.exists()
    assert not sandbox.pin_dir.exists()


HIDE_BCC = """
import sys


class HideBcc:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "bcc":
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None


sys.meta_path.insert(0, HideBcc())
from ccxdp.cli import main

main()
"""


@pytest.mark.root
def test_bcc_missing(sandbox, netns):
    proc = sandbox.run_python(HIDE_BCC, "attach", "lo", "--netns", netns)
    assert_error(proc, 1, "bcc", "python3-bpfcc", "scripts/setup.sh")


@pytest.mark.root
@pytest.mark.parametrize(
    "scenario",
    ["unknown-interface", "unknown-netns", "bcc-missing"],
)
def test_failed_attach_leaves_nothing_pinned(sandbox, netns, scenario):
    if scenario == "unknown-interface":
        proc = sandbox.run("attach", "nosuchif0", "--netns", netns)
    elif scenario == "unknown-netns":
        proc = sandbox.run("attach", "lo", "--netns", "nosuchns")
    else:
        proc = sandbox.run_python(HIDE_BCC, "attach", "lo", "--netns", netns)
    assert proc.returncode == 1, proc.stderr
    if sandbox.pin_dir.exists():
        leftovers = sorted(p.name for p in sandbox.pin_dir.iterdir())
        pytest.fail(f"{sandbox.pin_dir} left behind, holding {leftovers}")


# -- not root -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nobody_can_run_ccxdp():
    """setpriv runs the venv's python as nobody: the checkout and venv must be readable."""
    proc = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import ccxdp.cli"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=TIMEOUT,
    )
    if proc.returncode != 0:
        reason = (
            f"user nobody cannot run {sys.executable} with ccxdp (the checkout or venv is not "
            f"world-readable): {proc.stderr.strip().splitlines()[-1:]}"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def shared_dir(sandbox) -> Path:
    """A root-owned folder that nobody may enter, for state folders of either owner."""
    base = Path(tempfile.mkdtemp(prefix="ccxdp-test-nobody-"))
    sandbox.extra.append(base)
    base.chmod(0o755)
    return base


ALL_KINDS = [
    ["attach", "lo"],
    ["detach", "lo"],
    ["status"],
    ["stats"],
    ["block", "list"],
    ["block", "add", "evil.example"],
    ["allow", "add", "cdn.evil.example"],
    ["exempt", "add", "198.18.7.0/24"],
    ["config", "show"],
    ["config", "set", "answer_ttl", "60"],
]


@pytest.mark.root
@pytest.mark.parametrize("args", ALL_KINDS, ids=[" ".join(a) for a in ALL_KINDS])
def test_not_root(sandbox, shared_dir, nobody_can_run_ccxdp, args):
    """A fresh machine: no state folder yet, and only root may make it."""
    sandbox.state_dir = shared_dir / "state"
    proc = sandbox.run(*args, as_nobody=True)
    assert_error(proc, 1, "ccxdp needs root", "run it as root")
    assert not sandbox.state_dir.exists()
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
@pytest.mark.parametrize("args", ALL_KINDS, ids=[" ".join(a) for a in ALL_KINDS])
def test_not_root_installed(sandbox, shared_dir, nobody_can_run_ccxdp, args):
    """As installed: the state folder is root's (0700); the filter is not loaded."""
    sandbox.state_dir = shared_dir / "state"
    sandbox.state_dir.mkdir(mode=0o700)
    (sandbox.state_dir / "lock").touch(mode=0o600)
    proc = sandbox.run(*args, as_nobody=True)
    assert not sandbox.pin_dir.exists()
    assert_error(proc, 1, "root")


@pytest.mark.root
@pytest.mark.parametrize(
    "args",
    ALL_KINDS,
    ids=[" ".join(a) for a in ALL_KINDS],
)
def test_not_root_with_own_state_dir(sandbox, shared_dir, nobody_can_run_ccxdp, args):
    sandbox.state_dir = shared_dir / "state"
    sandbox.state_dir.mkdir(mode=0o700)
    os.chown(sandbox.state_dir, NOBODY, NOBODY)
    proc = sandbox.run(*args, as_nobody=True)
    assert_error(proc, 1, "ccxdp needs root", "run it as root")
    assert not sandbox.pin_dir.exists()


@pytest.mark.root
def test_not_root_while_loaded(sandbox, shared_dir, nobody_can_run_ccxdp):
    sandbox.pin_dir.mkdir(mode=0o700)  # what load() leaves: root's, 0700, on bpffs
    assert sandbox.pin_dir.parent == BPFFS
    sandbox.state_dir = shared_dir / "state"  # absent: the state folder is not in the way
    proc = sandbox.run("stats", as_nobody=True)
    assert_error(proc, 1, "root")
