"""The `vllm` generation backend: colocated vLLM on this node's GPUs, through TRL 1.16's `trl.generation`.

`VLLMGeneration` (what TRL's online trainers use in `vllm_mode="colocate"`) starts one vLLM engine per process from the
policy's checkpoint (`model.name_or_path`), shares the GPU with training (`gpu_memory_utilization`), and takes the
current weights (`sync_weights`): here before the first call and whenever the policy's fingerprint changed since the
last push (e.g. between RAFT rounds). Each prompt is sent `n` times; vLLM's prefix caching prefills it once. Needs the
`vllm` extra (`pip install "trl[vllm]"`) and a CUDA GPU. vLLM seeds its engine per process (TRL sets the seed to the
process index), so samples are reproducible for the same sequence of calls, not per batch as with transformers.
Tensor parallelism is not offered: the sampling stages give processes uneven numbers of batches, which would stall a
tensor-parallel group; serve such models with `vllm serve` and the `server` backend instead.
"""

from .fingerprint import model_fingerprint


__all__ = ["VLLMBackend"]

_ENGINES: dict = {}  # (checkpoint, tensor parallel, memory, length) -> VLLMGeneration, one per process
_SYNCED: dict = {}  # same keys -> fingerprint of the weights last pushed


class VLLMBackend:
    """
    Colocated vLLM through `trl.generation.VLLMGeneration`.

    Args:
        gpu_memory_utilization: share of GPU memory vLLM reserves (weights and KV cache); the rest stays for training.
        tensor_parallel_size: GPUs per engine; only 1 (see the module docstring).
        max_model_length: context length of the engine (prompt + completion); default: the model's.
        enable_sleep_mode: offload the engine's weights and cache between calls (frees memory for training).
    """

    name = "vllm"

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        max_model_length: int | None = None,
        enable_sleep_mode: bool = False,
    ):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.")
        if tensor_parallel_size != 1:
            raise ValueError(
                "The vllm backend runs one engine per process (tensor_parallel_size=1): for a model that needs tensor "
                "parallelism, serve it (`vllm serve --tensor-parallel-size N`) and use generation_backend=server."
            )
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.max_model_length = max_model_length
        self.enable_sleep_mode = enable_sleep_mode
        self.engine = None

    def identity(self, model) -> str:
        return model_fingerprint(model)

    def _engine(self, model, tokenizer):
        try:
            from accelerate import Accelerator
            from trl.generation import VLLMGeneration
        except ImportError as error:  # trl.generation exports VLLMGeneration only when vllm imports
            raise ImportError(
                'The vllm backend needs vLLM: pip install "trl-rankalign[vllm]" (or "trl[vllm]").'
            ) from error
        key = (str(model.name_or_path), self.tensor_parallel_size, self.gpu_memory_utilization, self.max_model_length)
        if key not in _ENGINES:  # one engine per checkpoint and process: vLLM engines cannot be reliably freed
            _ENGINES[key] = VLLMGeneration(
                model,
                Accelerator(),
                tokenizer,
                mode="colocate",
                tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_length=self.max_model_length,
                enable_sleep_mode=self.enable_sleep_mode,
            )
            _SYNCED[key] = None
        self.engine = _ENGINES[key]
        self.engine.model = model  # the policy whose weights `sync_weights` pushes
        fingerprint = model_fingerprint(model)
        if _SYNCED[key] != fingerprint:  # the engine holds other weights (the checkpoint's, or an earlier round's)
            self.engine.sync_weights()
            _SYNCED[key] = fingerprint
        return self.engine

    def generate(self, model, tokenizer, texts, num_samples, decoding, progress=False, desc="Sampling"):
        if model is None:
            raise ValueError("The vllm backend samples from a loaded model (its checkpoint starts the engine).")
        engine = self._engine(model, tokenizer)
        engine.temperature = decoding.temperature
        engine.top_k = decoding.top_k
        engine.top_p = decoding.top_p
        engine.max_completion_length = decoding.max_new_tokens
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        repeated = [prompt for prompt in ids for _ in range(num_samples)]
        _, completion_ids, _, _ = engine.generate(repeated, None, num_samples)
        decoded = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return [decoded[i * num_samples : (i + 1) * num_samples] for i in range(len(texts))]
