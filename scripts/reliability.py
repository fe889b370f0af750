"""Run the reliability tests and write their totals to ``benchmarks/results/reliability.json``, which the docs quote.

    .venv/bin/python scripts/reliability.py            # about 5 minutes on 2 cores

What it runs: ``tests/test_reliability.py`` whole (bad inputs, inputs read by what they show, injected faults) and
every test the "Field cases of step 11" table of ``docs/reliability.md`` names. What it counts, from pytest's JUnit
XML of that run: bad inputs tried and handled (passed), faults injected and survived, and the table's rows whose
tests all passed. ``tests/test_docs.py`` checks that the docs quote these numbers; ``tests/test_reliability.py``
checks that the totals cover its tables as they are now (a row added without running this script fails there).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
OUT = ROOT / "benchmarks" / "results" / "reliability.json"
BAD = "test_reliability.py::test_bad_input_gets_one_line_naming_it_and_nothing_is_destroyed"
ACCEPTED = "test_reliability.py::test_field_inputs_are_read_by_what_they_show"
FAULT = "test_reliability.py::test_fault"


def case_rows(page: str = "") -> list[tuple[str, list[str]]]:
    """(case number, the tests it names) of each row of the step-11 table: ``file.py::test`` (every parameter of
    it) or ``file.py`` (row "NAME"), a row of the bad-input table."""
    text = page or PAGE.read_text(encoding="utf-8")
    section = text.split("## Field cases of step 11", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        tests = re.findall(r"`(test_\w+\.py::test_\w+)`", cells[3])
        tests += [f"{BAD}[{name}]" for name in re.findall(r'`test_reliability\.py` \(row "([^"]+)"\)', cells[3])]
        rows.append((cells[0], tests))
    return rows


def _outcomes(xml: Path) -> dict[str, str]:
    """``file.py::test[param]`` -> passed / failed / skipped, from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed"
            elif child.tag == "skipped":
                kind = "skipped"
        out[f"{module}.py::{case.get('name')}"] = kind
    return out


def _passed(outcomes: dict[str, str], test: str) -> tuple[int, int]:
    """(cases run, cases passed) of ``test``: an exact node id, or every parameter of a test function."""
    hits = [v for k, v in outcomes.items() if k == test or (k.startswith(test + "[") and "[" not in test)]
    return len(hits), sum(v == "passed" for v in hits)


def main() -> int:
    rows = case_rows()
    named = {t.split("[", 1)[0] for _, tests in rows for t in tests if not t.startswith("test_reliability.py")}
    selection = ["tests/test_reliability.py", *(f"tests/{t}" for t in sorted(named))]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        # -p no:cacheprovider keeps the checkout clean
        # the tests that check the docs against this script's output are not what it counts
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        "-k", "not test_the_totals_are and not test_the_docs_quote", *selection],
                       cwd=ROOT, check=False)
        outcomes = _outcomes(xml)
    bad_run, bad_ok = _passed(outcomes, BAD)
    acc_run, acc_ok = _passed(outcomes, ACCEPTED)
    fault_run, fault_ok = _passed(outcomes, FAULT)
    cases = {}
    for number, tests in rows:
        counts = [_passed(outcomes, t) for t in tests]
        cases[number] = {"tests": tests, "handled": bool(tests) and all(run and run == ok for run, ok in counts)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "droneseg", "tests"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    result = {
        "command": "python scripts/reliability.py",
        "commit": commit.strip() + ("+changes" if dirty else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "seconds": round(time.monotonic() - t0),
        "bad_inputs": {"refused": bad_run, "read_by_what_they_show": acc_run, "tried": bad_run + acc_run,
                       "handled": bad_ok + acc_ok},
        "faults": {"injected": fault_run, "nothing_lost": fault_ok},
        "step11_cases": {"rows": len(cases), "handled": sum(c["handled"] for c in cases.values()), "rows_detail": cases},
        "tests": {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "skipped")},
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['bad_inputs']['tried']} bad inputs tried, {result['bad_inputs']['handled']} handled; "
          f"{fault_run} faults injected, {fault_ok} survived; {result['step11_cases']['handled']} of {len(cases)} "
          f"step-11 cases handled -> {OUT.relative_to(ROOT)}")
    return 0 if result["tests"]["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
