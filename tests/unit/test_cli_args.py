"""Every `edge-sync ...` and `edge-cloud ...` command line the documents show parses as written;
the exit codes the README promises for refused requests; the stop loop both programs share.

The command lines are extracted from README.md and docs/*.md (shell code blocks, inline code in
prose and tables) and from the service files in scripts/ (ExecStart=, command=), then run
through the real argparse parser of the matching program (``build_parser()``), which must
accept them (no SystemExit) and reach the subcommand they name.

Synopsis rows such as ``edge-sync events [--status pending|deployed|dead|all] [--limit N]`` are
expanded into concrete command lines: without any optional group, with all of them, and with
each one alone (once per alternative of an ``a|b`` choice); placeholders (FILE, NAME, N, UUID,
KEY=VALUE, ``...``) get concrete values.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_sync.cli import cloud, common, edge

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LOG_LISTS = {"logs.md"}  # its inline code is log messages ("edge-sync started"), not commands
SERVICE_FILES = [ROOT / "scripts" / "edge-sync.service",
                 ROOT / "scripts" / "supervisord-edge-sync.conf"]
PROGRAMS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "edge-sync": edge.build_parser,
    "edge-cloud": cloud.build_parser,
}
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")
_SHELL_OPERATORS = {"|", "||", "&", "&&", ";", "(", ")"}

# Written out next to the extraction: --config on either side of the subcommand, and nested.
EXTRA_EXAMPLES = [
    "edge-sync --config site.yml run",
    "edge-sync run --config site.yml",
    "edge-sync --config a.yml status --config b.yml --json",
    "edge-sync device --config site.yml create --name pump-1",
    "edge-sync device create --name pump-1 --config site.yml",
    "edge-cloud --config cloud.yml serve",
    "edge-cloud serve --config cloud.yml",
    "edge-cloud edge --config cloud.yml list",
    "edge-cloud attr set --device pump-1 --config cloud.yml --key a --value 1",
    "edge-sync rules check --config site.yml chain.json",
    "edge-sync rules --config site.yml check chain.json",
    "edge-sync --config site.yml rules check chain.json",
]


# -- extraction --------------------------------------------------------------------------------


def _program_command(words: list[str]) -> list[str] | None:
    """``words`` from the program's name on (leading VAR=value dropped), or None."""
    while words and _ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if len(words) < 2 or Path(words[0]).name not in PROGRAMS:
        return None
    return [Path(words[0]).name, *words[1:]]


def _shell_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line (comments dropped, split at | & && ;)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    current: list[str] = []
    for token in lexer:
        if token in _SHELL_OPERATORS:
            yield current
            current = []
        else:
            current.append(token)
    yield current


def _code_block_lines(text: str) -> Iterator[str]:
    """Lines of the fenced code blocks, backslash continuations joined."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        yield from block.replace("\\\n", " ").splitlines()


def _inline_spans(text: str) -> Iterator[str]:
    """Inline code outside the fenced blocks; a table's escaped pipe is a pipe."""
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        yield span.replace("\\|", "|")


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every command line of the documents and service files."""
    found: list[tuple[str, str]] = []
    for path in DOCUMENTS:
        text = path.read_text()
        for line in _code_block_lines(text):
            for words in _shell_commands(line):
                command = _program_command(words)
                if command:
                    found.append((path.name, shlex.join(command)))
        for span in _inline_spans(text) if path.name not in LOG_LISTS else ():
            command = _program_command(span.rstrip(" &").split())
            if command:  # a synopsis: keep its brackets and alternatives for expansion
                found.append((path.name, " ".join(command)))
    for path in SERVICE_FILES:
        for line in path.read_text().splitlines():
            m = re.match(r"^(?:ExecStart|command)=(.*)$", line)
            if m:
                command = _program_command(shlex.split(m.group(1)))
                assert command, f"{path.name}: {line!r} does not run a program of the project"
                found.append((path.name, shlex.join(command)))
    return found


# -- synopsis expansion ------------------------------------------------------------------------


def _concrete(word: str, previous: str) -> str:
    """A concrete value for a placeholder word; other words as they are."""
    if word == "...":
        return previous.replace("1", "2") if "=" in previous else previous
    if word == "KEY=VALUE":
        return "key=1"
    if not _PLACEHOLDER.match(word):
        return word
    return {"FILE": "site.yml", "N": "5", "UUID": "0b9a4e36-1f0e-4f60-9a55-6f2a4f0b1c2d",
            "ID": "0b9a4e36-1f0e-4f60-9a55-6f2a4f0b1c2d"}.get(word, f"x-{word.lower()}")


def _alternatives(word: str) -> list[str]:
    return word.split("|") if "|" in word and not word.startswith("-") else [word]


def expand(synopsis: str) -> list[list[str]]:
    """Concrete argument lists for one synopsis (see the module docstring)."""
    items: list[tuple[bool, list[str]]] = []  # (optional, words)
    for required, optional in re.findall(r"([^\[\]]+)|\[([^\[\]]*)\]", synopsis):
        if required.strip():
            items += [(False, [word]) for word in required.split()]
        if optional.strip():
            items.append((True, optional.split()))
    groups = [i for i, (opt, _) in enumerate(items) if opt]
    selections = [set(), set(groups)] + [{g} for g in groups]
    variants: list[list[str]] = []
    for chosen in selections:
        words = [w for i, (opt, ws) in enumerate(items) if not opt or i in chosen for w in ws]
        choices = [_alternatives(w) for w in words]
        # every alternative of every choice, one at a time (the others at their first)
        picks = [[c[0] for c in choices]]
        for n, c in enumerate(choices):
            picks += [[*(x[0] for x in choices[:n]), alt, *(x[0] for x in choices[n + 1:])]
                      for alt in c[1:]]
        for pick in picks:
            out: list[str] = []
            for word in pick:
                out.append(_concrete(word, out[-1] if out else ""))
            if out not in variants:
                variants.append(out)
    return variants


def _command_path(program: str, args: argparse.Namespace) -> list[str]:
    nested = f"{args.command}_command" if program == "edge-sync" else "sub"
    return [args.command] + ([getattr(args, nested)] if getattr(args, nested, None) else [])


def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix}
    return set(itertools.chain.from_iterable(
        _leaf_commands(p, (*prefix, name)) for name, p in subs[0].choices.items()))


def _subcommand_words(program: str, words: list[str]) -> list[str]:
    """The leading words of ``words`` that name (nested) subcommands of ``program``."""
    parser, out = PROGRAMS[program](), []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        out.append(word)
        parser = subs[0].choices[word]
    return out


def _parse(program: str, argv: list[str]) -> argparse.Namespace:
    try:
        return PROGRAMS[program]().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`{program} {shlex.join(argv)}` is refused (exit {exc.code})") from None


# -- the tests ---------------------------------------------------------------------------------

COMMANDS = documented_commands()


def test_the_documents_show_commands_of_both_programs() -> None:
    programs = {line.split()[0] for _where, line in COMMANDS}
    assert programs == set(PROGRAMS), COMMANDS
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_subcommand_is_documented(program: str) -> None:
    shown = set()
    for _where, line in COMMANDS:
        words = line.split()
        if words[0] == program:
            shown.add(tuple(_subcommand_words(program, words[1:])))
    missing = _leaf_commands(PROGRAMS[program]()) - shown
    assert not missing, f"{program}: not shown in README.md or docs/: {sorted(missing)}"


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}: {c}" for w, c in COMMANDS])
def test_documented_command_parses(where: str, line: str) -> None:
    program, _, synopsis = line.partition(" ")
    intended = _subcommand_words(program, synopsis.split())
    for argv in expand(synopsis):
        args = _parse(program, argv)
        assert _command_path(program, args) == intended, (where, argv)


@pytest.mark.parametrize("line", EXTRA_EXAMPLES)
def test_config_before_or_after_the_subcommand(line: str) -> None:
    program, *argv = shlex.split(line)
    args = _parse(program, argv)
    assert args.config is not None and args.config.suffix == ".yml"
    if "b.yml" in line:
        assert args.config.name == "b.yml"  # given after the subcommand, it wins


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_command_takes_config_after_its_subcommand(program: str) -> None:
    """README: every command takes --config FILE before or after the subcommand."""
    def without(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
        missing = [] if "--config" in parser._option_string_actions else [" ".join(path)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += without(child, (*path, name))
        return missing

    assert without(PROGRAMS[program](), (program,)) == []


def test_config_defaults_to_none() -> None:
    assert _parse("edge-sync", ["run"]).config is None
    assert _parse("edge-cloud", ["serve"]).config is None


def test_expansion_of_a_synopsis() -> None:
    variants = expand("events [--status pending|deployed] [--limit N] [--json]")
    assert ["events"] in variants
    assert ["events", "--status", "pending", "--limit", "5", "--json"] in variants
    assert ["events", "--status", "deployed"] in variants
    assert ["events", "--json"] in variants
    assert expand("attr set --device ID|NAME KEY=VALUE ...")[0][-2:] == ["key=1", "key=2"]


def test_extraction_of_shell_lines() -> None:
    line = "FOO=1 BAR=x edge-cloud serve &   # comment"
    assert [c for c in map(_program_command, _shell_commands(line)) if c] == [["edge-cloud", "serve"]]
    piped = list(_shell_commands("edge-cloud events --edge e --json | tail"))
    assert _program_command(piped[0]) == ["edge-cloud", "events", "--edge", "e", "--json"]


# -- integer options -----------------------------------------------------------------------------

INT64 = "0..9223372036854775807"


@pytest.mark.parametrize(("line", "error"), [
    ("edge-sync events --after-seq -5",
     f"edge-sync events: error: argument --after-seq: -5 is out of range {INT64}"),
    ("edge-sync events --after-seq 18446744073709551616",
     f"edge-sync events: error: argument --after-seq: 18446744073709551616 is out of range {INT64}"),
    ("edge-sync events --limit -1",
     f"edge-sync events: error: argument --limit: -1 is out of range {INT64}"),
    ("edge-sync events --after-seq abc",
     "edge-sync events: error: argument --after-seq: 'abc' is not an integer"),
    ("edge-sync replay --dead --seq 18446744073709551616",
     "edge-sync replay: error: argument --seq: 18446744073709551616 is out of range "
     "1..18446744073709551615"),
    ("edge-sync replay --dead --seq 3 0",
     "edge-sync replay: error: argument --seq: 0 is out of range 1..18446744073709551615"),
    ("edge-sync apply-log --after 9223372036854775808",
     f"edge-sync apply-log: error: argument --after: 9223372036854775808 is out of range {INT64}"),
    ("edge-sync status --watch --count -2",
     f"edge-sync status: error: argument --count: -2 is out of range {INT64}"),
    ("edge-cloud events --edge rk --after 18446744073709551616",
     f"edge-cloud events: error: argument --after: 18446744073709551616 is out of range {INT64}"),
    ("edge-cloud events --edge rk --limit -1",
     f"edge-cloud events: error: argument --limit: -1 is out of range {INT64}"),
], ids=["after-seq-negative", "after-seq-2^64", "limit-negative", "after-seq-text", "seq-2^64",
        "seq-zero", "apply-log-after", "watch-count", "cloud-after", "cloud-limit"])
def test_an_integer_option_out_of_range_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], line: str, error: str) -> None:
    program, *argv = shlex.split(line)
    with pytest.raises(SystemExit) as exited:
        PROGRAMS[program]().parse_args(argv)
    assert exited.value.code == common.EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1] == error


@pytest.mark.parametrize(("line", "name", "value"), [
    ("edge-sync events --after-seq 9223372036854775807", "after_seq", 2**63 - 1),
    ("edge-sync events --after-seq 0", "after_seq", 0),
    ("edge-sync replay --dead --seq 18446744073709551615", "seqs", [2**64 - 1]),
    ("edge-sync replay --dead --seq 1", "seqs", [1]),
    ("edge-sync apply-log --after 9223372036854775807", "after", 2**63 - 1),
    ("edge-cloud events --edge rk --after 9223372036854775807", "after", 2**63 - 1),
], ids=["after-seq-max", "after-seq-0", "seq-max", "seq-1", "apply-log-max", "cloud-max"])
def test_an_integer_option_at_its_bounds_is_taken(line: str, name: str, value: object) -> None:
    program, *argv = shlex.split(line)
    assert getattr(PROGRAMS[program]().parse_args(argv), name) == value


# -- exit codes and the stop loop --------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [
    (409, common.EXIT_CONFLICT), (507, common.EXIT_STORAGE), (503, common.EXIT_UNREACHABLE),
    (400, common.EXIT_CONFIG), (401, common.EXIT_CONFIG), (403, common.EXIT_CONFIG),
])
def test_edge_device_create_exit_code_follows_the_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], status: int, code: int
) -> None:
    answer = {"status": status, "message": "a device named 'pump-1' already exists"}
    monkeypatch.setattr(edge, "admin_call", lambda *_a, **_k: (status, answer))
    assert edge.main(["device", "create", "--name", "pump-1"]) == code
    err = capsys.readouterr().err
    if status in (401, 403):  # the agent runs and refused the token: what to set
        what = "admin token" if status == 401 else "request"
        assert err.startswith("error: device not created: the agent at 127.0.0.1:8090 is "
                              f"running but refused the {what} ({status}")
        assert "set EDGE_ADMIN_TOKEN (or admin.token in the file given with --config)" in err
    else:
        assert f"device not created ({status})" in err


def test_edge_device_create_without_a_running_agent_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*_a: object, **_k: object) -> None:
        raise common.AdminUnreachable("admin API at 127.0.0.1:8090 is unreachable")

    monkeypatch.setattr(edge, "admin_call", unreachable)
    assert edge.main(["device", "create", "--name", "pump-1"]) == common.EXIT_UNREACHABLE


@pytest.fixture
def quiet_cloud_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator commands would replace loguru's sinks for the whole test process."""
    monkeypatch.setattr(cloud, "_quiet_logging", lambda _cfg: None)


@pytest.mark.usefixtures("quiet_cloud_cli")
def test_edge_cloud_conflict_exits_6_through_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud, "_running", lambda _cfg: True)
    monkeypatch.setattr(cloud, "admin_call", lambda *_a, **_k: (409, {"message": "taken"}))
    argv = ["device", "create", "--edge", "rk", "--name", "d1"]
    assert cloud.main(argv) == common.EXIT_CONFLICT
    monkeypatch.setattr(cloud, "admin_call", lambda *_a, **_k: (404, {"message": "no edge rk"}))
    assert cloud.main(argv) == common.EXIT_CONFIG


@pytest.mark.usefixtures("quiet_cloud_cli")
def test_edge_cloud_conflict_exits_6_on_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cloud, "_running", lambda _cfg: False)
    monkeypatch.setenv("CLOUD_DATA_DIR", str(tmp_path / "cloud"))
    create = ["edge", "create", "--name", "e1", "--routing-key", "rk-1", "--secret", "s-1"]
    assert cloud.main(create) == common.EXIT_OK
    assert cloud.main([*create[:-1], "another"]) == common.EXIT_CONFLICT
    assert "already exists" in capsys.readouterr().err


def _restoring_stop_signals() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in common.STOP_SIGNALS}


@pytest.mark.parametrize("signum", common.STOP_SIGNALS)
def test_a_stop_signal_stops_the_app_once(signum: int) -> None:
    previous = _restoring_stop_signals()
    stopped: list[bool] = []
    try:
        threading.Timer(0.1, os.kill, (os.getpid(), signum)).start()
        asked = common.run_until_signal(lambda t: time.sleep(t) or False,
                                        lambda: stopped.append(True), poll_s=0.02)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
    assert asked is True and stopped == [True]


def test_an_app_that_ends_by_itself_is_stopped_without_a_signal() -> None:
    previous = _restoring_stop_signals()
    stopped: list[bool] = []
    try:
        asked = common.run_until_signal(lambda _t: True, lambda: stopped.append(True))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
    assert asked is False and stopped == [True]
