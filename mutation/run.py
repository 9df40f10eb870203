"""Mutation testing of the kit's guards with cosmic-ray (`make mutate`; docs/mutation.md).

For each target of ``mutation/guards.toml`` (or those named on the command line): cosmic-ray
lists the mutants of the target's file, the ones outside the named functions are skipped, and
each remaining mutant is written into a copy of the checkout and the target's tests are run
against it (``pytest -x``); a mutant is killed when they fail or time out. The checkout itself
is never mutated: the copy is in a temporary folder, and its sessions and the report are kept
in ``mutation/results/`` (git-ignored).

    python mutation/run.py                    # every target
    python mutation/run.py gate run-path      # some
    python mutation/run.py --list             # the targets and their mutant counts, nothing run
    python mutation/run.py --sample 60 --seed 24 request-validation   # 60 of its mutants, drawn with seed 24
    python mutation/run.py --survivors gate   # only the last run's survivors, against the tests as they are now
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "guards.toml"
RESULTS = Path(__file__).resolve().parent / "results"
#: operators left out everywhere: an arithmetic operator turned into a bitwise one, a shift,
#: ``**``, ``%`` or ``//`` fails at once on the floats, text and paths of these guards (a
#: TypeError): ten mutants per ``+`` that any test kills and that say nothing about the tests
NOISE = [r"ReplaceBinaryOperator_\w+_(BitOr|BitAnd|BitXor|LShift|RShift|Pow|Mod|FloorDiv)$"]


def spans(source: str, names: list[str]) -> list[tuple[int, int]]:
    """The line ranges of the named functions (``Class.method``) and module-level assignments
    of ``source``; ``*`` is the whole file."""
    if "*" in names:
        return [(1, len(source.splitlines()) + 1)]
    found: dict[str, tuple[int, int]] = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found[prefix + node.name] = (start, node.end_lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not prefix:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            found[name.id] = (node.lineno, node.end_lineno)

    visit(ast.parse(source).body, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"guards.toml names {missing}, which the file does not define")
    return [found[n] for n in names]


def annotations(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are: with ``from __future__ import annotations`` they are never
    evaluated, so a mutant in one (``float | None`` into ``float * None``) changes nothing."""
    found = []
    for node in ast.walk(ast.parse(source)):
        notes = []
        if isinstance(node, ast.arg):
            notes = [node.annotation]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            notes = [node.returns]
        elif isinstance(node, ast.AnnAssign):
            notes = [node.annotation]
        found += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes if n is not None]
    return found


def copy_checkout(into: Path) -> None:
    """The tracked and untracked (not ignored) files of the checkout, as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def cosmic_ray(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], cwd=cwd, check=True)


def _key(item) -> list:
    """A mutant that stays the same across sessions while its file does (job ids are random)."""
    return [(m.module_path, tuple(m.start_pos), m.operator_name, m.occurrence) for m in item.mutations]


def survivors_of(session: Path) -> list:
    """The keys of the mutants that survived in ``session`` (the last run of a target)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    if not session.exists():
        raise SystemExit(f"--survivors: no previous run at {session}")
    with use_db(str(session), WorkDB.Mode.open) as db:
        return [_key(item) for item, result in db.completed_work_items
                if result.test_outcome == TestOutcome.SURVIVED]


def run_target(name: str, target: dict, work: Path, *, list_only: bool, sample: int | None = None,
               seed: int = 0, survivors: bool = False) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    module = target["module"]
    source = (work / module).read_text()
    ranges, notes = spans(source, target["functions"]), annotations(source)
    tests = " ".join(target["tests"]) + (f" -k {shlex.quote(target['select'])}" if "select" in target else "")
    plugins = "".join(f" -p no:{p}" for p in target.get("plugins-off", []))  # their imports: seconds a run
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider{plugins} {tests}"
    # a run of the last run's survivors is kept beside it (<target>-again.*): the full run stays the reference
    stem = f"{name}-again" if survivors else name
    again = survivors_of(RESULTS / f"{name}.sqlite") if survivors else None
    # --list counts in the temporary copy: the last run's session (what --survivors reads) stays
    session = (work if list_only else RESULTS) / f"{stem}.sqlite"
    session.unlink(missing_ok=True)
    started = time.perf_counter()
    if not list_only:  # the tests must pass unmutated; their time sets the timeout
        baseline = subprocess.run(shlex.split(command), cwd=work, capture_output=True, text=True)
        if baseline.returncode != 0:
            raise SystemExit(f"{name}: the tests fail without a mutant:\n{baseline.stdout[-3000:]}")
    timeout = max(60.0, 4 * (time.perf_counter() - started))
    config = work / f"{name}.toml"
    config.write_text("[cosmic-ray]\n" + "\n".join([
        f"module-path = {json.dumps(module)}",
        f"timeout = {timeout:.0f}",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "[cosmic-ray.distributor]",
        'name = "local"']) + "\n")
    cosmic_ray("init", str(config), str(session), cwd=work)
    excluded = [re.compile(p) for p in [*NOISE, *target.get("operators-excluded", [])]]
    with use_db(str(session), WorkDB.Mode.open) as db:
        outside = [item.job_id for item in db.pending_work_items
                   if not all(any(a <= m.start_pos[0] <= b for a, b in ranges) for m in item.mutations)
                   or any(p.search(m.operator_name) for m in item.mutations for p in excluded)
                   or any(a <= tuple(m.start_pos) < b for m in item.mutations for a, b in notes)]
        if outside:
            db.set_multiple_results(outside, WorkResult(output="outside the guard",
                                                        worker_outcome=WorkerOutcome.SKIPPED))
        # in the file's order (job ids are random): one seed draws the same mutants every time
        if again is not None:  # the last run's survivors only (the file unchanged: same keys)
            db.set_multiple_results([item.job_id for item in db.pending_work_items if _key(item) not in again],
                                    WorkResult(output="not a survivor of the last run",
                                               worker_outcome=WorkerOutcome.SKIPPED))
        pending = [item.job_id for item in sorted(db.pending_work_items, key=_key)]
        if sample is not None and sample < len(pending):  # a documented sample
            drawn = set(random.Random(seed).sample(pending, sample))
            db.set_multiple_results([j for j in pending if j not in drawn], WorkResult(
                output=f"outside the sample (seed {seed})", worker_outcome=WorkerOutcome.SKIPPED))
        mutants = len(db.pending_work_items)
    if list_only:
        print(f"{name}: {mutants} mutants ({module}: {', '.join(target['functions'])})")
        return {"target": name, "mutants": mutants}
    print(f"{name}: {mutants} mutants, each against {tests} (timeout {timeout:.0f} s)", flush=True)
    cosmic_ray("exec", str(config), str(session), cwd=work)
    summary = summarize(stem, target, session, time.perf_counter() - started)
    if sample is not None and sample < len(pending):
        summary.update(sample=f"{mutants} of {len(pending)} mutants, drawn with seed {seed}")
        (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def summarize(name: str, target: dict, session: Path, seconds: float) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survived, incompetent = 0, [], 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                (mutation,) = item.mutations
                survived.append({"operator": mutation.operator_name, "line": mutation.start_pos[0],
                                 "diff": "\n".join(line for line in (result.diff or "").splitlines()
                                                   if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))})
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            else:
                killed += 1
    total = killed + len(survived)
    summary = {"target": name, "module": target["module"], "killed": killed, "survived": len(survived),
               "incompetent": incompetent, "rate": round(killed / total, 3) if total else None,
               "seconds": round(seconds), "survivors": sorted(survived, key=lambda s: s["line"])}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets of guards.toml (default: all)")
    parser.add_argument("--list", action="store_true", help="count the mutants, run nothing")
    parser.add_argument("--sample", type=int, help="run only this many of each target's mutants, drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw (default 0)")
    parser.add_argument("--survivors", action="store_true",
                        help="run only the mutants that survived the target's last run (its file unchanged)")
    args = parser.parse_args(argv)
    targets = tomllib.loads(CONFIG.read_text())
    unknown = [t for t in args.targets if t not in targets]
    if unknown:
        parser.error(f"unknown targets {unknown}; guards.toml has {sorted(targets)}")
    RESULTS.mkdir(exist_ok=True)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="mlops-kit-mutate-") as folder:
        work = Path(folder)
        copy_checkout(work)
        os.environ["PYTHONPATH"] = str(work)  # subprocesses (the CLI, servers) import the mutant too
        os.environ["MLOPS_KIT_PROJECT_DIR"] = str(work)
        for name in args.targets or list(targets):
            summaries.append(run_target(name, targets[name], work, list_only=args.list, sample=args.sample,
                                        seed=args.seed, survivors=args.survivors))
            if not args.list:
                s = summaries[-1]
                print(f"{name}: {s['killed']} of {s['killed'] + s['survived']} killed ({s['rate']:.0%}), "
                      f"{s['incompetent']} incompetent, {s['seconds']} s", flush=True)
                for survivor in s["survivors"]:
                    print(f"  survived, line {survivor['line']} ({survivor['operator']}):\n    "
                          + survivor["diff"].replace("\n", "\n    "))
    if not args.list:
        killed = sum(s["killed"] for s in summaries)
        total = killed + sum(s["survived"] for s in summaries)
        print(f"all: {killed} of {total} mutants killed ({killed / total:.0%})" if total else "no mutants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
