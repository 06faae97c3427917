"""A scan of the command line's argument errors: every subcommand, every option that checks its value, an
unknown flag — each is one line on stderr and exit 2, never a traceback or argparse's usage block."""

from __future__ import annotations

import argparse

import pytest

from manifold_defense.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(prefix)] = parser
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return found


def _bad_values() -> list[tuple[list[str], str]]:
    cases = []
    for command, parser in _subcommands().items():
        cases.append(([*command.split(), "--no-such-flag"], f"{command} --no-such-flag"))
        for action in parser._actions:
            flag = next((s for s in action.option_strings if s.startswith("--")), None)
            if flag is None or action.nargs == 0:
                continue
            if action.choices is not None:
                bad = "no-such-choice"
            elif action.type in (int, float) or getattr(action.type, "__name__", "") == "parse":
                bad = "not-a-number"
            else:
                continue  # free text (names, paths): their failures have tests of their own (test_failures.py)
            cases.append(([*command.split(), flag, bad], f"{command} {flag}"))
    return cases


CASES = _bad_values()


def test_the_scan_covers_every_subcommand():
    assert {c.split()[0] for c in _subcommands()} >= {"demo", "evaluate", "train-classifier", "train-generator",
                                                      "adv-train", "recover", "generate", "zoo", "records"}
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv", [c[0] for c in CASES], ids=[c[1] for c in CASES])
def test_a_bad_value_is_one_line_and_exit_2(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
