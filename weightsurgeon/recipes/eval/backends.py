"""Generation backends behind one small interface, so budget forcing is written once.

A backend continues prompt strings: ``generate(prompts, max_new_tokens, stop)`` returns
for each prompt the generated text (cut before the first stop string, like vLLM), the
number of tokens generated, and why it finished (``stop``: a stop string or the
end-of-sequence token; ``length``: the token cap). Special tokens stay in the text
(``</think>`` must be visible), except the end-of-sequence token that ends a generation.

``hf`` runs transformers ``generate`` (CPU or one GPU; what the tests use). ``vllm``
runs vLLM's offline ``LLM`` and is imported only when chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from weightsurgeon.errors import SurgeonError


@dataclass(frozen=True)
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" or "length"
    stop_reason: str | None = None  # the stop string hit, "eos", or None


@dataclass(frozen=True)
class Sampling:
    """Decoding settings shared by both backends; temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: Sequence[str], sampling: Sampling
    ) -> list[Generation]:
        """Continue each prompt; ``max_new_tokens`` may differ per prompt."""
        ...

    def chat_prompt(self, user_message: str) -> str:
        """The model's chat template applied to one user turn, ready for generation."""
        ...

    def count_tokens(self, text: str) -> int:
        ...


def _per_prompt(value: int | Sequence[int], n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError("max_new_tokens must give one value per prompt")
    return values


def apply_chat(tokenizer: Any, user_message: str) -> str:
    """One user turn through the model's chat template, ending where the assistant starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise SurgeonError(f"{getattr(tokenizer, 'name_or_path', '') or 'the model'}: its tokenizer has no chat template; "
                           "use --prompt plain (or add a chat_template to tokenizer_config.json)")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Text before the earliest stop string, and which one it was."""
    best, which = len(text), None
    for s in stop:
        if not s:
            continue
        at = text.find(s)
        if at != -1 and at < best:
            best, which = at, s
    return text[:best], which


class HFBackend:
    """transformers ``generate`` with left-padded batches; greedy or sampled."""

    name = "hf"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise SurgeonError("the hf backend needs torch and transformers (pip install weightsurgeon[eval])") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype: Any = "auto"
        if dtype != "auto":
            torch_dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32,
                           "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype)
            if torch_dtype is None:
                raise SurgeonError(f"unknown dtype {dtype!r}; use auto, bf16, f16 or f32")
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device)
        except (OSError, ValueError) as exc:
            raise SurgeonError(f"{model}: transformers cannot load it ({str(exc)[:200]}); the hf backend needs a folder "
                               "(or a Hub id in the local cache) with config.json, the tokenizer and the weights") from exc
        self.model.eval()
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if not self.eos_ids:
            raise SurgeonError(f"{model}: neither generation_config.json nor the tokenizer names an eos token; set "
                               "eos_token_id in generation_config.json (generation would never stop)")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, user_message: str) -> str:
        return apply_chat(self.tokenizer, user_message)

    def _encode(self, prompts: Sequence[str]):
        bos = self.tokenizer.bos_token
        # a chat-templated prompt already carries its BOS; a plain one gets it from the tokenizer
        add_special = not (bos and all(p.startswith(bos) for p in prompts))
        return self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: Sequence[str], sampling: Sampling
    ) -> list[Generation]:
        import torch

        caps = _per_prompt(max_new_tokens, len(prompts))
        results: list[Generation | None] = [None] * len(prompts)
        # group equal caps so a batch never generates past what its prompts may use
        order = sorted(range(len(prompts)), key=lambda i: caps[i])
        torch.manual_seed(sampling.seed)
        for begin in range(0, len(order), self.batch_size):
            idx = order[begin : begin + self.batch_size]
            cap = max(caps[i] for i in idx)
            todo = [i for i in idx if caps[i] > 0]
            for i in idx:
                if caps[i] <= 0:
                    results[i] = Generation("", 0, "length", None)
            if not todo:
                continue
            batch = self._encode([prompts[i] for i in todo]).to(self.device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=cap,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
            )
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
            with torch.no_grad():
                out = self.model.generate(**batch, **kwargs)
            new = out[:, batch["input_ids"].shape[1] :].tolist()
            for row, i in zip(new, todo):
                results[i] = self._finish(row[: caps[i]], stop, caps[i])
        return [r for r in results if r is not None]

    def _finish(self, ids: list[int], stop: Sequence[str], cap: int) -> Generation:
        end = len(ids)
        hit_eos = False
        for k, tok in enumerate(ids):
            if tok in self.eos_ids:
                end, hit_eos = k, True
                break
        if not hit_eos and self.pad_id not in self.eos_ids:
            # rows finished by a stop string are padded after it
            while end > 0 and ids[end - 1] == self.pad_id:
                end -= 1
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=False)
        cut, which = cut_at_stop(text, stop)
        num_tokens = end + (1 if hit_eos else 0)
        if which is not None:
            return Generation(cut, self._tokens_through(ids[:end], len(cut) + len(which)), "stop", which)
        if hit_eos:
            return Generation(text, num_tokens, "stop", "eos")
        return Generation(text, num_tokens, "length" if num_tokens >= cap else "stop", None)


    def _tokens_through(self, ids: list[int], chars: int) -> int:
        """Fewest leading tokens whose text covers ``chars`` characters (the stop string's end):
        what the model generated before the stop, whatever padding followed in the batch."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=False)) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return hi


class VLLMBackend:
    """vLLM's offline engine; all prompts of a call go to vLLM at once (it schedules them)."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        seed: int = 0,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise SurgeonError("the vllm backend needs vLLM (pip install weightsurgeon[vllm]) and a GPU") from exc
        kwargs: dict[str, Any] = dict(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32"}.get(dtype, dtype),
            seed=seed,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, user_message: str) -> str:
        return apply_chat(self.tokenizer, user_message)

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: Sequence[str], sampling: Sampling
    ) -> list[Generation]:
        from vllm import SamplingParams

        caps = _per_prompt(max_new_tokens, len(prompts))
        results: list[Generation | None] = [None] * len(prompts)
        todo = [i for i in range(len(prompts)) if caps[i] > 0]
        for i in range(len(prompts)):
            if caps[i] <= 0:
                results[i] = Generation("", 0, "length", None)
        params = [
            SamplingParams(
                max_tokens=caps[i],
                stop=list(stop) or None,
                temperature=sampling.temperature,
                top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                seed=sampling.seed + k if sampling.temperature > 0 else None,
                skip_special_tokens=False,
            )
            for k, i in enumerate(todo)
        ]
        if todo:
            outputs = self.llm.generate([prompts[i] for i in todo], params, use_tqdm=False)
            for i, out in zip(todo, outputs):
                o = out.outputs[0]
                reason = o.stop_reason if isinstance(o.stop_reason, str) else ("eos" if o.finish_reason == "stop" else None)
                results[i] = Generation(o.text, len(o.token_ids), o.finish_reason or "length", reason)
        return [r for r in results if r is not None]


def check_backend(name: str, model: str, options: dict[str, Any]) -> type:
    """The class a request names, after checking it: unknown option names are an error, not ignored."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise SurgeonError(f"{model}: no such checkpoint folder; give the model's folder or a Hub id")
    if name == "hf":
        allowed = {"device", "dtype", "batch_size", "data_parallel_size"}
        cls: Any = HFBackend
    elif name == "vllm":
        allowed = {"tensor_parallel_size", "data_parallel_size", "max_model_len", "gpu_memory_utilization", "dtype", "seed"}
        cls = VLLMBackend
    else:
        raise SurgeonError(f"unknown backend {name!r}; use hf or vllm")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SurgeonError(f"backend {name} does not take option(s) {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
    return cls


def open_backend(name: str, model: str, options: dict[str, Any] | None = None) -> Backend:
    """One backend in this process (``parallel.make_backend`` decides whether to run replicas)."""
    options = dict(options or {})
    cls = check_backend(name, model, options)
    options.pop("data_parallel_size", None)
    return cls(model, **options)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
