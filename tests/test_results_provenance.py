"""Results a reader can trust: every JSON directly in ``benchmarks/results/`` was made from a clean tree by a script
of this repository (its provenance, as ``benchmarks/common.py`` writes it, says so), and
``benchmarks/results/archive/README.md`` accounts for every archived entry and names nothing that is not there."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHIVE = RESULTS / "archive"
COMMIT = re.compile(r"[0-9a-f]{40}")
ENTRY = re.compile(r"[\w.-]+(?:\.(?:json|png|md)|/)")  # a file or folder name, no path: `NAME.json`, `NAME/`


def provenances(data, where: str = "") -> list[tuple[str, dict]]:
    """Every provenance block of a result with where it is: keys ``provenance`` and ``provenance_*`` at any depth
    (a merged run's parts under ``merged_from``, per-entry blocks under ``rows``)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{where}/{key}"
            if (key == "provenance" or key.startswith("provenance_")) and isinstance(value, dict):
                found.append((here, value))
            else:
                found += provenances(value, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += provenances(value, f"{where}[{i}]")
    return found


def script_of(command: str, root: Path = ROOT) -> Path | None:
    """The script a recorded command ran: its first token ending in ``.py``, relative to the repository root or to
    ``benchmarks/`` (where some commands were typed). None when there is no such token or the file is not inside
    ``root``."""
    token = next((t for t in command.split() if t.endswith(".py")), None)
    if token is None:
        return None
    root = root.resolve()
    for base in (root, root / "benchmarks"):
        path = (base / token).resolve()
        if path.is_file() and path.is_relative_to(root):
            return path
    return None


def problems(path: Path, root: Path = ROOT) -> list[str]:
    """Why the result JSON at ``path`` is not trusted (empty when it is): no top-level provenance, or a provenance
    block (top-level or nested) with ``git_dirty`` not false, no full commit, or a command whose script is not in
    the repository."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("provenance"), dict):
        return [f"{path.name}: no provenance"]
    found = []
    for where, prov in provenances(data):
        if prov.get("git_dirty") is not False:
            found.append(f"{path.name}{where}: git_dirty is {prov.get('git_dirty')!r}")
        if not COMMIT.fullmatch(str(prov.get("git_commit"))):
            found.append(f"{path.name}{where}: git_commit {prov.get('git_commit')!r} is not a 40-hex commit")
        if script_of(str(prov.get("command") or ""), root) is None:
            found.append(f"{path.name}{where}: command {prov.get('command')!r} runs no script of the repository")
    return found


def archive_mismatch(folder: Path) -> tuple[set[str], set[str]]:
    """(entries of ``folder`` its README.md does not name, names in the README that are not in ``folder``). A name is
    a backquoted file (``.json``, ``.png``, ``.md``) or folder (trailing ``/``) without a path."""
    named = {t.rstrip("/") for t in re.findall(r"`([^`\s]+)`", (folder / "README.md").read_text(encoding="utf-8"))
             if ENTRY.fullmatch(t)} - {"README.md"}
    entries = {p.name for p in folder.iterdir()} - {"README.md"}
    return entries - named, named - entries


KEPT = sorted(RESULTS.glob("*.json"))


def test_there_are_kept_results():
    assert KEPT, "no result JSON directly in benchmarks/results/"


@pytest.mark.parametrize("path", KEPT, ids=lambda p: p.name)
def test_kept_result_is_from_a_clean_tree_and_a_script_of_the_repository(path: Path):
    assert problems(path) == [], "move it to benchmarks/results/archive/ (with its entry in archive/README.md) " \
                                 "or rerun it from a clean tree"


def test_archive_readme_names_every_archived_entry_and_nothing_else():
    unnamed, missing = archive_mismatch(ARCHIVE)
    assert not unnamed, f"archived but not in archive/README.md: {sorted(unnamed)}"
    assert not missing, f"named in archive/README.md but not archived: {sorted(missing)}"


class TestTheCheckerFlagsBrokenResults:
    @pytest.fixture
    def clean(self) -> dict:
        data = json.loads(KEPT[0].read_text(encoding="utf-8"))
        assert problems(KEPT[0]) == []
        return data

    @staticmethod
    def _check(tmp_path: Path, data: dict) -> list[str]:
        path = tmp_path / "result.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        return problems(path)

    def test_a_clean_copy_passes(self, tmp_path, clean):
        assert self._check(tmp_path, clean) == []

    def test_dirty_tree(self, tmp_path, clean):
        clean["provenance"]["git_dirty"] = True
        assert any("git_dirty is True" in p for p in self._check(tmp_path, clean))

    def test_unknown_dirtiness_and_commit(self, tmp_path, clean):
        clean["provenance"] |= {"git_dirty": None, "git_commit": "unknown"}
        found = self._check(tmp_path, clean)
        assert any("git_dirty is None" in p for p in found) and any("40-hex" in p for p in found)

    def test_missing_script(self, tmp_path, clean):
        clean["provenance"]["command"] = "benchmarks/no_such_benchmark.py --quick"
        assert any("runs no script" in p for p in self._check(tmp_path, clean))

    def test_script_outside_the_repository(self, tmp_path, clean):
        elsewhere = tmp_path / "benchmark.py"
        elsewhere.write_text("", encoding="utf-8")
        clean["provenance"]["command"] = f"{elsewhere} --threads 1"
        assert any("runs no script" in p for p in self._check(tmp_path, clean))

    def test_no_provenance(self, tmp_path, clean):
        del clean["provenance"]
        assert self._check(tmp_path, clean) == ["result.json: no provenance"]

    def test_dirty_merged_part(self, tmp_path, clean):
        part = copy.deepcopy(clean["provenance"]) | {"git_dirty": True}
        clean["merged_from"] = [{"file": "part.json", "provenance": part}]
        assert self._check(tmp_path, clean) == ["result.json/merged_from[0]/provenance: git_dirty is True"]

    def test_commands_typed_in_benchmarks_resolve(self):
        assert script_of("defense_mnist.py --merge a.json b.json") == ROOT / "benchmarks" / "defense_mnist.py"
        assert script_of("benchmarks/defense_mnist.py --quick") == ROOT / "benchmarks" / "defense_mnist.py"
        assert script_of("--threads 1") is None


def test_archive_check_flags_unnamed_and_missing_entries(tmp_path):
    (tmp_path / "kept.json").write_text("{}", encoding="utf-8")
    (tmp_path / "records").mkdir()
    (tmp_path / "README.md").write_text("- `kept.json` — named\n- `gone.png` — not there\n"
                                        "- `python benchmarks/x.py --out kept.json` — a command, not a name\n",
                                        encoding="utf-8")
    assert archive_mismatch(tmp_path) == ({"records"}, {"gone.png"})
