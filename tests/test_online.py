"""The online loop (`trl_rankalign.online`): the shared sampling mixin, the round runner (resumable, keyed, recorded),
`rounds.jsonl` under a lock, keys without secrets, ties kept after RSO, and `kl_to_sft` on the sampled token ids
against a naive per-token reference."""

import json
import math
import multiprocessing

import pytest
import torch
from conftest import cpu_config
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trl_rankalign.online import SamplingArguments, read_rounds, record_round, round_key, run_rounds
from trl_rankalign.online.keys import is_secret, public_fields, secrets_cleared
from trl_rankalign.online.kl import SampledIds, sampled_kl
from trl_rankalign.sampling.generation import TransformersBackend, sample_and_score


# ------------------------------------------------------------------------------------------------ settings
def test_raft_iterate_and_rso_share_one_sampling_mixin(tmp_path):
    from trl_rankalign import RAFTConfig, RSOConfig
    from trl_rankalign.iterative import IterativeConfig

    for config_class, temperature in ((RAFTConfig, 1.0), (IterativeConfig, 1.0), (RSOConfig, 0.7)):
        assert issubclass(config_class, SamplingArguments)
        args = cpu_config(config_class, tmp_path, max_new_tokens=9, sampling_top_p=0.9)
        assert args.decoding() == {"temperature": temperature, "top_k": 40 if config_class is RSOConfig else 0,
                                   "top_p": 0.9, "max_new_tokens": 9}  # fmt: skip
        with pytest.raises(ValueError, match="top_p"):
            cpu_config(config_class, tmp_path, sampling_top_p=1.5)


def test_server_rounds_need_a_policy_update(tmp_path):
    from trl_rankalign.iterative import IterativeConfig

    server = dict(generation_backend="server", generation_base_url="http://127.0.0.1:9/v1", generation_model="m")
    with pytest.raises(ValueError, match="policy_update"):
        cpu_config(IterativeConfig, tmp_path, num_rounds=2, **server)
    assert cpu_config(IterativeConfig, tmp_path, num_rounds=2, policy_update="reload", **server).num_rounds == 2
    with pytest.raises(ValueError, match="generation_backend=server"):
        cpu_config(IterativeConfig, tmp_path, policy_update="sglang")


# ------------------------------------------------------------------------------------------------ keys
def test_rounds_need_an_integer_sampling_seed(tmp_path):
    from trl_rankalign.iterative import IterativeConfig

    with pytest.raises(ValueError, match="sampling_seed must be an integer"):
        cpu_config(IterativeConfig, tmp_path, sampling_seed=None)


def test_keys_never_hold_secrets(tmp_path):
    from trl_rankalign.iterative import IterativeConfig

    secret = "hf_SECRETsecretSECRET"
    args = cpu_config(
        IterativeConfig, tmp_path, hub_token=secret, model_init_kwargs={"token": secret, "revision": "r"}
    )
    fields = public_fields(args)
    assert secret not in json.dumps(fields) and fields["model_init_kwargs"] == {"revision": "r"}
    assert "sampling_batch_size" in fields  # it seeds the batches (sampling_seed + 1000 r + b): a setting
    assert "pad_token" in fields and "max_new_tokens" in fields  # settings that merely contain "token" stay
    assert [n for n in ("hub_token", "api_key", "wandb_api_key", "client_secret") if not is_secret(n)] == []
    assert not is_secret("generation_api_key_env")  # the name of the variable, not the key
    pushing = cpu_config(IterativeConfig, tmp_path, hub_token=secret, model_init_kwargs={"token": secret, "revision": "r"},
                         push_to_hub=True, hub_model_id="me/x")  # fmt: skip
    assert secrets_cleared(pushing) == {
        "hub_token": None,
        "model_init_kwargs": {"revision": "r"},
        "push_to_hub": False,
    }


def test_round_key_chains_and_names_weights():
    args = SamplingArguments()
    first = round_key(None, 0, args, policy="weights:a", reward="r", tokenizer="t", prompts=["p"])
    second = round_key(first, 1, args, policy="weights:a", reward="r", tokenizer="t", prompts=["p"])
    assert second["previous"] == first
    assert round_key(None, 0, args, policy="weights:b", reward="r", tokenizer="t", prompts=["p"]) != first


# ------------------------------------------------------------------------------------------------ records
def test_a_cut_last_line_is_skipped_and_redone(tmp_path):
    (tmp_path / "rounds.jsonl").write_text(json.dumps({"round": 0, "x": 1}) + '\n{"round": 1, "x"')
    assert read_rounds(tmp_path) == [{"round": 0, "x": 1}]
    record_round(tmp_path, {"round": 1, "x": 2})
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"round": 0, "x": 1}, {"round": 1, "x": 2}]


def _record_many(folder: str, worker: int) -> None:
    for index in range(20):
        record_round(folder, {"round": index, "worker": worker, "pad": "x" * 2000})


def test_concurrent_runs_leave_one_line_per_round(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(str(tmp_path), w)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["round"] for line in lines) == list(range(20))  # no duplicate, no damaged line


# ------------------------------------------------------------------------------------------------ runner
def _fake_loop(tmp_path, key_value, calls, num_rounds=2):
    def key(previous, index):
        return {"previous": previous or {}, "round": index, "setting": key_value}

    def sample(current, model):
        calls.append(("sample", current.index))
        (current.dir / "samples.jsonl").write_text("{}\n")
        return [model]

    def select(current, samples):
        (current.dir / "best").mkdir()
        return samples, {"selected": len(samples)}

    def train(current, model, data, metrics):
        current.model_dir.mkdir()
        (current.model_dir / "weights").write_text(str(model + 1))
        return model + 1

    def load(current, model):
        calls.append(("load", current.index))
        return int((current.model_dir / "weights").read_text())

    return run_rounds(str(tmp_path), num_rounds, 0, key=key, sample=sample, select=select, train=train, load=load,
                      products=("best",))  # fmt: skip


def test_round_runner_resumes_and_redoes_changed_rounds(tmp_path):
    calls = []
    model, history = _fake_loop(tmp_path, "a", calls)
    assert model == 2 and calls == [("sample", 0), ("sample", 1)]
    assert [r["round"] for r in history] == [0, 1] and all("time/train" in r for r in history)
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]
    assert json.loads((tmp_path / "round_1" / "settings.json").read_text())["previous"]["round"] == 0

    calls.clear()  # finished rounds are loaded
    assert _fake_loop(tmp_path, "a", calls)[0] == 2 and calls == [("load", 0), ("load", 1)]
    calls.clear()  # a changed key redoes every round; the samples stay (their rows carry their own key)
    assert _fake_loop(tmp_path, "b", calls)[0] == 2 and calls == [("sample", 0), ("sample", 1)]
    calls.clear()  # round 1 is interrupted after sampling: the rerun loads round 0 and redoes round 1 only
    (tmp_path / "round_1" / "model" / ".done").unlink()
    assert _fake_loop(tmp_path, "b", calls)[0] == 2 and calls == [("load", 0), ("sample", 1)]


# ------------------------------------------------------------------------------------------------ ties
def test_fully_tied_lists_are_kept_after_rso_acceptance():
    from trl_rankalign.iterative import IterativeConfig, build_lists

    rows = [
        {"index": 0, "prompt": "a", "completions": [" x", " y", " w", " z"], "scores": [1.0, 1.0, 1.0, 1.0]},
        {"index": 1, "prompt": "b", "completions": [" x", " y", " w", " z"], "scores": [0.0, 1.0, 2.0, 3.0]},
    ]
    common = dict(num_samples=4, bf16=False, use_cpu=True, report_to="none")
    lists, counts = build_lists(rows, IterativeConfig("unused", select="rso", num_accepted=2, **common), seed=0)
    assert [row["prompt"] for row in lists] == ["a", "b"] and counts["fully_tied_kept"] == 1
    assert counts["fully_tied"] == 0 and lists[0]["scores"] == [1.0, 1.0]
    # select="all" keeps dropping them (no target distribution to preserve); so does dpo's one pair
    assert [row["prompt"] for row in build_lists(rows, IterativeConfig("unused", **common), seed=0)[0]] == ["b"]
    dpo = IterativeConfig("unused", method="dpo", select="rso", num_accepted=2, **common)
    assert [row["prompt"] for row in build_lists(rows, dpo, seed=0)[0]] == ["b"]


def test_rso_selection_keeps_rso_target_distribution_with_ties():
    """Candidates whose rewards tie often (3 levels): the accepted completions' frequencies, over many prompts, match
    RSO's target pi * exp(r / beta) (pi uniform over the candidates) only if tied lists are kept."""
    from trl_rankalign.iterative import IterativeConfig, build_lists

    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(1500):
        scores = torch.randint(0, 3, (8,), generator=generator).float().tolist()
        rows.append({"index": index, "prompt": f"p{index}", "completions": [f" c{k}" for k in range(8)],
                     "scores": scores})  # fmt: skip
    args = IterativeConfig("unused", select="rso", num_samples=8, num_accepted=2, rso_beta=0.5, bf16=False,
                           use_cpu=True, report_to="none")  # fmt: skip
    lists, _ = build_lists(rows, args, seed=0)
    accepted = torch.zeros(3)
    for row in lists:
        for s in row["scores"]:
            accepted[int(s)] += 1
    weights = torch.zeros(3)
    for row in rows:
        w = torch.exp(torch.tensor(row["scores"]) / 0.5)
        for level in range(3):
            weights[level] += (w * (torch.tensor(row["scores"]) == level)).sum() / w.sum()
    tv = 0.5 * (accepted / accepted.sum() - weights / weights.sum()).abs().sum().item()
    assert tv < 0.05 and len(lists) == len(rows)


# ------------------------------------------------------------------------------------------------ KL on sampled ids
def _naive_logp(model, prompt: list[int], completion: list[int]) -> float:
    """log p(completion | prompt), one token at a time over the full vocabulary (float64)."""
    total = 0.0
    for t, token in enumerate(completion):
        ids = torch.tensor([prompt + completion[:t]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        total += torch.log_softmax(logits, dim=-1)[token].item()
    return total


@pytest.fixture(scope="module")
def tiny_pair(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    sft = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return policy, sft, tokenizer


def test_kl_on_sampled_ids_matches_a_naive_reference(tiny_pair):
    policy, sft, tokenizer = tiny_pair
    recorded = SampledIds()
    config = GenerationConfig(do_sample=True, max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
    backend = TransformersBackend(2, config, on_token_ids=recorded)
    prompts = ["Review of the pasta:", "Your thoughts on the salad:", "Review of the camera:"]
    rows = sample_and_score(policy, tokenizer, prompts, 3, generation_config=config, batch_size=2, backend=backend)
    assert len(recorded.samples) == 9
    for (_, completion), text in zip(recorded.samples, [c for row in rows for c in row["completions"]]):
        assert tokenizer.decode(completion, skip_special_tokens=True) == text  # the ids of the returned text
        assert len(completion) == 5 or completion[-1] == tokenizer.eos_token_id  # cut at the limit, or ended by EOS
        assert tokenizer.eos_token_id not in completion[:-1]
    total, count = sampled_kl(policy, sft, recorded.samples, tokenizer.pad_token_id or 0)
    naive = [_naive_logp(policy, p, c) - _naive_logp(sft, p, c) for p, c in recorded.samples]
    assert count == 9 and total / count == pytest.approx(sum(naive) / len(naive), abs=1e-5)


def test_iterate_reports_kl_on_the_ids_it_sampled(tiny_path, tmp_path):
    """Round 1's `kl_to_sft` equals the naive mean of log pi_0 - log pi_SFT over the ids round 1 drew (reproduced at
    the same seed), with samples cut at `max_new_tokens` scored without an EOS that was never drawn."""
    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.tiny import tiny_prompt_dataset
    from trl_rankalign.tiny.language import reward_fn

    prompts = tiny_prompt_dataset()["prompt"][:8]
    args = cpu_config(IterativeConfig, tmp_path, num_rounds=2, num_samples=4, max_new_tokens=8, sampling_batch_size=8,
                      max_steps=2, beta=0.1, learning_rate=5e-3)  # fmt: skip
    train_iterative(tiny_path, prompts, args, reward=reward_fn)
    history = read_rounds(tmp_path)
    assert history[1]["kl_to_sft_source"] == "ids" and history[1]["kl_to_sft_estimand"] == "KL(pi||pi_sft)"

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "round_0" / "model").eval()
    sft = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    config = GenerationConfig(do_sample=True, eos_token_id=tokenizer.eos_token_id, **args.decoding())
    recorded = SampledIds()
    rows = sample_and_score(policy, tokenizer, prompts, 4, generation_config=config, batch_size=8, seed=1000,
                            backend=TransformersBackend(8, config, on_token_ids=recorded))  # fmt: skip
    cached = [json.loads(line) for line in (tmp_path / "round_1" / "samples.jsonl").read_text().splitlines()]
    assert [row["completions"] for row in rows] == [row["completions"] for row in cached]  # the same draws
    assert any(len(c) == 8 and c[-1] != tokenizer.eos_token_id for _, c in recorded.samples)  # some were cut
    naive = [_naive_logp(policy, p, c) - _naive_logp(sft, p, c) for p, c in recorded.samples]
    assert history[1]["kl_to_sft"] == pytest.approx(sum(naive) / len(naive), abs=1e-4)
    assert math.isfinite(history[0]["kl_to_sft"]) and abs(history[0]["kl_to_sft"]) < 1e-5


# ------------------------------------------------------------------------------------------------ weights keys
def test_iterate_redoes_rounds_when_models_are_retrained_in_place(tiny_path, tmp_path, monkeypatch):
    """Policy and reward model retrained in place (same paths): round 0 is redone, not reused; and no file under
    output_dir holds the hub token; a cut last line of rounds.jsonl does not stop the rerun."""
    from transformers import AutoModelForSequenceClassification

    from trl_rankalign.iterative import IterativeConfig, train_iterative
    from trl_rankalign.sampling import generation
    from trl_rankalign.tiny import tiny_prompt_dataset

    policy_dir, reward_dir = tmp_path / "sft", tmp_path / "rm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    AutoModelForCausalLM.from_pretrained(tiny_path).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward_model.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)

    calls = []
    original = generation.generate_completions
    monkeypatch.setattr(generation, "generate_completions", lambda *a, **k: calls.append(1) or original(*a, **k))
    secret = "hf_DoNotWriteThisToken123"
    output = tmp_path / "out"
    prompts = tiny_prompt_dataset()["prompt"][:4]
    args = cpu_config(IterativeConfig, output, num_rounds=1, num_samples=3, max_new_tokens=6, sampling_batch_size=4,
                      max_steps=1, beta=0.1, hub_token=secret, reward_model_path=str(reward_dir),
                      model_init_kwargs={"token": secret})  # fmt: skip
    train_iterative(str(policy_dir), prompts, args)
    assert len(calls) == 1
    leaked = [p for p in output.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []

    with open(output / "rounds.jsonl", "a") as f:
        f.write('{"round": 1, "mean_rew')  # an interrupted write
    calls.clear()
    train_iterative(str(policy_dir), prompts, args)  # nothing changed: round 0 is reused
    assert calls == [] and [r["round"] for r in read_rounds(output)] == [0]

    with torch.no_grad():  # the SFT policy retrained in place
        policy = AutoModelForCausalLM.from_pretrained(policy_dir)
        next(policy.parameters()).add_(0.01)
        policy.save_pretrained(policy_dir)
    train_iterative(str(policy_dir), prompts, args)
    assert len(calls) == 1

    calls.clear()
    before = json.loads((output / "round_0" / "settings.json").read_text())["reward"]
    with torch.no_grad():  # the reward model retrained in place: the samples stay valid, the round is redone
        reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir)
        reward_model.score.weight.mul_(-1)
        reward_model.save_pretrained(reward_dir)
    train_iterative(str(policy_dir), prompts, args)
    settings = json.loads((output / "round_0" / "settings.json").read_text())
    assert "hub_token" not in settings["config"] and settings["reward"] != before  # the reward's weights changed
    assert json.loads((output / "round_0" / "model" / ".done").read_text()) == settings  # the round was redone
    assert calls == []  # rescored from the cached samples, not sampled again
