"""
pytest plugin for the TRL contract run (loaded by `run.py` with `-p trl_contract_plugin`). It never edits a test.

Configured by environment variables set by `run.py`:

- `TRL_CONTRACT_TRAINER`: `dpo` (TRL's own `DPOTrainer`) or `rankdpo`: after collection, the names `DPOTrainer` and
  `DPOConfig` in every collected test module's namespace are rebound to `trl_rankalign.RankDPOTrainer` /
  `trl_rankalign.RankDPOConfig`, so the unchanged test bodies construct ours.
- `TRL_CONTRACT_MANIFEST`: JSON `{repo_id: {"status": "built" | ..., "reason": ...}}` from the offline build; a test
  that loads a `trl-internal-testing/*` repo that could not be built is skipped with that reason.
- `TRL_CONTRACT_RESULTS`: where to write the JSON summary (counts, and per test: outcome, first error line, the
  error message's first lines, and the last traceback frame in `trl_rankalign`, if any).
- `TRL_CONTRACT_TIMEOUT`: per-test time limit in seconds (SIGALRM; used when pytest-timeout is not installed).
- `TRL_CONTRACT_RUN_SLOW=1`: run tests TRL marks `slow` (by default they are skipped, as TRL's `make test` deselects
  them with `-m "not slow and not low_priority"`; here they count as skipped).

It also shims helpers that TRL's `tests/testing_utils.py` imports from `trl.import_utils` but that the installed trl
lacks (e.g. `is_joblib_available`), in memory only: `is_<pkg>_available` becomes "is `<pkg>` importable".
"""

import ast
import importlib.util
import inspect
import json
import os
import re
import signal
import textwrap
from pathlib import Path

import pytest


ORG_RE = re.compile(r"""["'](trl-internal-testing/[^"']+)["']""")
_results = {}
_shimmed = []


def _shim_import_utils():
    """Add the `trl.import_utils.is_*_available` helpers that testing_utils needs but this trl lacks."""
    import trl.import_utils as import_utils

    testing_utils = Path.cwd() / "tests" / "testing_utils.py"
    if not testing_utils.exists():
        return
    for node in ast.walk(ast.parse(testing_utils.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "trl.import_utils":
            for alias in node.names:
                match = re.fullmatch(r"is_(\w+)_available", alias.name)
                if not hasattr(import_utils, alias.name) and match:
                    package = match.group(1)
                    setattr(import_utils, alias.name, lambda p=package: importlib.util.find_spec(p) is not None)
                    _shimmed.append(alias.name)


_shim_import_utils()


def _referenced_repos(item):
    """`trl-internal-testing/*` ids the test loads: its parameters, plus string constants in its body that are call
    arguments or assigned to a name (not, e.g., ids it only compares its `model_id` parameter with)."""
    repos = set()
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        repos.update(ORG_RE.findall(repr(value)))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(item.function)))
    except (OSError, TypeError, SyntaxError):
        return repos
    for node in (n for statement in tree.body[0].body for n in ast.walk(statement)):  # not the decorators
        if isinstance(node, ast.Call):
            values = node.args + [k.value for k in node.keywords]
        elif isinstance(node, ast.Assign):
            values = [node.value]
        else:
            continue
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                repos.update(ORG_RE.findall(repr(value.value)))
    return repos


def pytest_collection_modifyitems(session, config, items):
    trainer = os.environ.get("TRL_CONTRACT_TRAINER", "dpo")
    manifest = (
        json.loads(Path(os.environ["TRL_CONTRACT_MANIFEST"]).read_text())
        if os.environ.get("TRL_CONTRACT_MANIFEST")
        else {}
    )
    if trainer == "rankdpo":
        from trl_rankalign import RankDPOConfig, RankDPOTrainer

        for module in {item.module for item in items if getattr(item, "module", None) is not None}:
            if hasattr(module, "DPOTrainer"):
                module.DPOTrainer, module.DPOConfig = RankDPOTrainer, RankDPOConfig
    for item in items:
        if item.get_closest_marker("slow") and os.environ.get("TRL_CONTRACT_RUN_SLOW") != "1":
            item.add_marker(pytest.mark.skip(reason="TRL marks it slow (deselected by TRL's default test run)"))
        missing = {r: manifest.get(r, {}) for r in _referenced_repos(item)}
        missing = {r: info for r, info in missing.items() if info.get("status") != "built"}
        if manifest and missing:
            repo, info = sorted(missing.items())[0]
            item.add_marker(pytest.mark.skip(reason=f"offline: {repo} not available ({info.get('reason')})"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = int(os.environ.get("TRL_CONTRACT_TIMEOUT", "0") or 0)
    if limit <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_timeout(signum, frame):
        raise TimeoutError(f"test exceeded the per-test limit of {limit}s")

    previous = signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _error_details(report):
    """(message: first lines of the error, ours_at: last traceback frame inside trl_rankalign, or None)."""
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(longrepr)
    locations = []
    for entry in getattr(getattr(longrepr, "reprtraceback", None), "reprentries", []) or []:
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None:
            locations.append(f"{loc.path}:{loc.lineno}")
        else:  # native-style entry
            locations += [f"{p}:{n}" for p, n in re.findall(r'File "([^"]+)", line (\d+)', "".join(entry.lines))]
    ours = [loc for loc in locations if "trl_rankalign" in loc]
    return "\n".join(message.strip().splitlines()[:6]), (ours[-1] if ours else None), (locations[-1:] or [None])[0]


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": None})
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.skipped:
            outcome = "skipped"
        elif report.failed:
            outcome = "error" if report.when == "setup" else "failed"
        else:
            outcome = "passed"
        entry.update(outcome=outcome, duration=round(report.duration, 2))
        if os.environ.get("TRL_CONTRACT_RESULTS"):  # one line per test, to follow a long run
            with open(os.environ["TRL_CONTRACT_RESULTS"] + ".progress", "a") as f:
                f.write(f"{outcome:8s} {report.duration:7.1f}s {report.nodeid}\n")
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["message"] = report.longrepr[2]
        elif report.failed:
            entry["message"], entry["ours_at"], entry["last_frame"] = _error_details(report)
    elif report.when == "teardown" and report.failed and entry["outcome"] == "passed":
        entry["outcome"] = "error"
        entry["message"], entry["ours_at"], entry["last_frame"] = _error_details(report)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("TRL_CONTRACT_RESULTS")
    if not path:
        return
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")}
    for entry in _results.values():
        key = "errors" if entry["outcome"] == "error" else entry["outcome"]
        if key in counts:
            counts[key] += 1
    for entry in _results.values():
        if entry.get("message"):
            entry["first_line"] = entry["message"].splitlines()[0] if entry["message"].strip() else ""
    summary = {
        "trainer": os.environ.get("TRL_CONTRACT_TRAINER", "dpo"),
        **counts,
        "exitstatus": int(exitstatus),
        "shimmed_import_utils": _shimmed,
        "tests": _results,
    }
    Path(path).write_text(json.dumps(summary, indent=1))
