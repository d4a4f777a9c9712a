import os

import pytest


# Nothing in the tests may reach a model hub; TRL also pings telemetry unless told not to.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """Path of the embedded tiny default (Qwen2 config + local BPE tokenizer), built once per test session."""
    from trl_rankalign.tiny import tiny_model_path

    return tiny_model_path(cache_dir=tmp_path_factory.mktemp("tiny_cache"))


def load_benchmark(name: str):
    """A script of `benchmarks/` (not a package) as a module, e.g. `load_benchmark("real")`."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the scripts import their shared `common`
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_config(config_class, output_dir, **overrides):
    """A trainer config for fast CPU tests: fp32, no gradient checkpointing, no saving, log every step."""
    kwargs = dict(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        max_steps=3,
        seed=0,
    )
    kwargs.update(overrides)
    return config_class(**kwargs)


@pytest.fixture
def judge_server():
    """An OpenAI-compatible judge stub on 127.0.0.1 (tests/stub_judge.py), shut down after the test."""
    from stub_judge import StubJudge

    server = StubJudge()
    yield server
    server.close()


from real_model import smollm2_path, smollm2_server  # noqa: E402, F401  (the real tier's fixtures)
