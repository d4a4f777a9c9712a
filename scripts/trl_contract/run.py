"""
Run Hugging Face TRL's own DPO test file against TRL's `DPOTrainer` or against `trl_rankalign.RankDPOTrainer`, offline.

    python scripts/trl_contract/run.py --trl-repo /work/.mirror/huggingface+trl/repo --work /tmp/trl_contract \
        --trainer dpo                       # baseline: TRL's DPOTrainer (installed trl)
    ... --trainer rankdpo                   # same tests, DPOTrainer/DPOConfig rebound to RankDPOTrainer/RankDPOConfig
    ... --compare                           # both, then list tests that pass with dpo but fail with rankdpo
    ... --compare-only                      # compare the results-*.json of earlier runs
    ... --trainer dpo --pytest-args "-k test_train_loss_types"   # anything for pytest

Nothing of TRL's is copied into this repository; at run time, WORK gets:

1. `WORK/trl_src/`: `scripts/`, `tests/`, `trl/chat_templates/` and `pyproject.toml` of `--trl-repo` (a git directory,
   bare or not, read with `git archive HEAD`; or a plain checkout), and `WORK/tests/`: `test_dpo_trainer.py`,
   `conftest.py`, `__init__.py`, `testing_utils.py` and whatever these import from `tests/`, plus TRL's
   `pyproject.toml` in WORK (its pytest markers and warning filters).
2. Every `trl-internal-testing/*` model and data set the test file names, built by TRL's own generators
   (`scripts/generate_tiny_models/**`, `scripts/generate_*_dataset.py`), one subprocess each, through
   `build_offline.py` (its docstring lists the offline substitutions: tokenizers, generation configs, pushes). They
   land in `WORK/trl-internal-testing/<name>/`, and pytest runs with WORK as its working directory, so
   `from_pretrained("trl-internal-testing/x")` and `load_dataset("trl-internal-testing/x", ...)` load those local
   folders (a relative path that exists wins over the Hub), with `HF_HUB_OFFLINE=1`, `HF_DATASETS_OFFLINE=1` and
   `HF_HOME=WORK/hf_home`. `WORK/manifest.json` records what was built; tests needing what was not are skipped.
3. pytest on `WORK/tests/test_dpo_trainer.py` with `trl_contract_plugin.py` (trainer swap, skips, per-test time
   limit, JSON summary): JUnit XML in `WORK/junit-<trainer>.xml`, summary in `WORK/results-<trainer>.json`.

Tests are run serially with one thread (`OMP_NUM_THREADS=1`); `-p no:cacheprovider`; no `-x`.
"""

import argparse
import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tokenize
from pathlib import Path


HERE = Path(__file__).resolve().parent
TEST_FILE = "tests/test_dpo_trainer.py"
BASE_TEST_FILES = [TEST_FILE, "tests/testing_utils.py", "tests/conftest.py", "tests/__init__.py"]
ORG_RE = re.compile(r"""["'](trl-internal-testing/[^"']+)["']""")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
    "CUDA_VISIBLE_DEVICES": "", "PYTHONDONTWRITEBYTECODE": "1",
}  # fmt: skip


def extract_trl(trl_repo: Path, work: Path) -> Path:
    """Copy TRL's scripts/, tests/, chat templates and pyproject.toml into WORK/trl_src (fresh each time)."""
    src = work / "trl_src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    paths = ["scripts", "tests", "trl/chat_templates", "pyproject.toml"]
    if subprocess.run(["git", "-C", str(trl_repo), "rev-parse", "--git-dir"], capture_output=True).returncode == 0:
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "-C", str(trl_repo), "archive", "HEAD", *paths], stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(src, filter="data")
    else:
        for p in paths:
            (shutil.copytree if (trl_repo / p).is_dir() else shutil.copy2)(trl_repo / p, src / p)
    return src


def copy_tests(src: Path, work: Path):
    """Lay out WORK/tests/ with the DPO test file and the tests/ modules it (transitively) imports."""
    shutil.rmtree(work / "tests", ignore_errors=True)
    todo, done = list(BASE_TEST_FILES), set()
    while todo:
        rel = todo.pop()
        if rel in done or not (src / rel).exists():
            continue
        done.add(rel)
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, work / rel)
        for node in ast.walk(ast.parse((src / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("tests.")):
                name = (node.module or "").removeprefix("tests.")
                todo += [f"tests/{name.replace('.', '/')}.py"] + [f"tests/{a.name}.py" for a in node.names]
    shutil.copy2(src / "pyproject.toml", work / "pyproject.toml")


def find_generators(src: Path) -> dict:
    """Map each repo id TRL's generators push to -> ("model", module) or ("dataset", script path)."""
    generators = {}
    for path in sorted((src / "scripts" / "generate_tiny_models").rglob("*.py")):
        text = path.read_text()
        cls = re.search(r"^model = (\w+)\(config\)", text, re.M)
        push = re.search(r'^push_to_hub\(\s*\w+,\s*\w+,\s*\w+(?:,\s*"([^"]*)")?(?:,\s*"([^"]*)")?', text, re.M)
        if cls and push:
            name = f"{push.group(1)}-{cls.group(1)}" if push.group(1) else cls.group(1)
            module = ".".join(path.relative_to(src).with_suffix("").parts)
            generators[f"trl-internal-testing/{name}" + (f"-{push.group(2)}" if push.group(2) else "")] = (
                "model", module)  # fmt: skip
    for path in sorted((src / "scripts").glob("generate_*_dataset.py")):
        repo = re.search(r'default="(trl-internal-testing/[^"]+)"', path.read_text())
        if repo:
            generators[repo.group(1)] = ("dataset", str(path.relative_to(src)))
    return generators


def build_offline(src: Path, work: Path, python: str, rebuild: bool) -> dict:
    """Build every trl-internal-testing repo the test file names; return and save the manifest."""
    with open(work / TEST_FILE, "rb") as f:  # string literals only: ids in comments are models TRL skipped
        strings = [t.string for t in tokenize.tokenize(f.readline) if t.type == tokenize.STRING]
    needed = sorted({m for s in strings for m in ORG_RE.findall(s)})
    generators, manifest = find_generators(src), {}
    env = {**os.environ, **OFFLINE_ENV, "HF_HOME": str(work / "hf_home")}
    for repo in needed:
        target = work / repo
        if target.exists() and not rebuild:
            manifest[repo] = {"status": "built", "reason": "reused"}
            continue
        if repo not in generators:
            manifest[repo] = {"status": "no-generator", "reason": "no TRL generator script pushes this repo"}
            continue
        shutil.rmtree(target, ignore_errors=True)
        kind, gen = generators[repo]
        cmd = [python, str(HERE / "build_offline.py"), "--src", str(src), "--out", str(work), kind, gen]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
        reason = (errors or proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        ok = proc.returncode == 0 and target.exists()
        manifest[repo] = {"status": "built" if ok else "failed", "generator": gen, "reason": "ok" if ok else reason}
        print(f"[build] {repo}: {manifest[repo]['status']} ({gen}){'' if ok else ': ' + reason}", flush=True)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def run_pytest(work: Path, trainer: str, python: str, pytest_args: list, timeout: int) -> dict:
    results, junit = work / f"results-{trainer}.json", work / f"junit-{trainer}.xml"
    results.unlink(missing_ok=True)
    Path(f"{results}.progress").unlink(missing_ok=True)
    env = {**os.environ, **OFFLINE_ENV, "HF_HOME": str(work / "hf_home"), "TRL_CONTRACT_TRAINER": trainer,
           "TRL_CONTRACT_MANIFEST": str(work / "manifest.json"), "TRL_CONTRACT_RESULTS": str(results),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(work)])}  # fmt: skip
    cmd = [python, "-m", "pytest", TEST_FILE, "-p", "no:cacheprovider", "-p", "trl_contract_plugin",
           f"--junitxml={junit}", "-o", "junit_family=xunit2", "-rfE", "-q", "--tb=short", *pytest_args]  # fmt: skip
    has_timeout = subprocess.run([python, "-c", "import pytest_timeout"], capture_output=True).returncode == 0
    if has_timeout:
        cmd.append(f"--timeout={timeout}")
    else:
        env["TRL_CONTRACT_TIMEOUT"] = str(timeout)  # the plugin's SIGALRM limit
    print(f"[pytest:{trainer}] {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=work, env=env)
    summary = json.loads(results.read_text())
    project = HERE.parent.parent  # record which trl_rankalign was tested (read-only git calls)
    git = lambda *a: subprocess.run(["git", "-C", str(project), *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    summary["project"] = {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain").splitlines()}
    results.write_text(json.dumps(summary, indent=1))
    print(f"[pytest:{trainer}] " + ", ".join(f"{k}={summary[k]}" for k in
          ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")), flush=True)  # fmt: skip
    return summary


def compare(work: Path):
    dpo, ours = (json.loads((work / f"results-{t}.json").read_text())["tests"] for t in ("dpo", "rankdpo"))
    regressions = {n: ours[n] for n, r in dpo.items() if r["outcome"] == "passed"
                   and ours.get(n, {}).get("outcome") in ("failed", "error")}  # fmt: skip
    print(f"\n{len(regressions)} test(s) pass with DPOTrainer but fail with RankDPOTrainer:")
    for name, r in sorted(regressions.items()):
        print(f"\n- {name} [{r['outcome']}]\n    at: {r.get('ours_at') or r.get('last_frame')}")
        print("\n".join("    " + line for line in (r.get("message") or "").splitlines()))
    other = sorted(n for n in dpo if dpo[n]["outcome"] != ours.get(n, {}).get("outcome") and n not in regressions)
    if other:
        print("\nOther outcome differences (dpo -> rankdpo):")
        for n in other:
            print(f"  {n}: {dpo[n]['outcome']} -> {ours.get(n, {}).get('outcome')}")
    (work / "regressions.json").write_text(json.dumps(regressions, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-repo", type=Path, help="TRL git directory (bare or not) or plain checkout")
    parser.add_argument("--work", type=Path, default=Path("/tmp/trl_contract"))
    parser.add_argument("--trainer", choices=["dpo", "rankdpo"], default="dpo")
    parser.add_argument("--compare", action="store_true", help="run dpo then rankdpo, then compare")
    parser.add_argument("--compare-only", action="store_true", help="only compare WORK/results-*.json")
    parser.add_argument("--pytest-args", default="", help='extra pytest arguments, e.g. "-k loss_types"')
    parser.add_argument("--rebuild", action="store_true", help="rebuild tiny models/datasets already in WORK")
    parser.add_argument("--skip-build", action="store_true", help="reuse WORK/tests and WORK/manifest.json as is")
    parser.add_argument("--timeout", type=int, default=900, help="per-test time limit in seconds")
    parser.add_argument("--python", default=sys.executable, help="interpreter with trl and trl_rankalign")
    args = parser.parse_args()
    work = args.work.resolve()
    if args.compare_only:
        return compare(work)
    if not args.skip_build:
        if args.trl_repo is None:
            parser.error("--trl-repo is required unless --skip-build or --compare-only")
        work.mkdir(parents=True, exist_ok=True)
        src = extract_trl(args.trl_repo.resolve(), work)
        copy_tests(src, work)
        build_offline(src, work, args.python, args.rebuild)
    trainers = ["dpo", "rankdpo"] if args.compare else [args.trainer]
    for trainer in trainers:
        run_pytest(work, trainer, args.python, shlex.split(args.pytest_args), args.timeout)
    if args.compare:
        compare(work)


if __name__ == "__main__":
    if importlib.util.find_spec("trl") is None and "--python" not in sys.argv:
        sys.exit("run with the project's interpreter (e.g. .venv/bin/python) or pass --python")
    main()
