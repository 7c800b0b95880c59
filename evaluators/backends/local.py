"""The local backend: a transformers model and tokenizer loaded in this process.

Why its own module: it is the only part of the evaluation that needs torch and a model in
memory (the remote backend needs only a tokenizer). A checkpoint is checked, loaded once with
one-line errors, generates greedily with the log-probability of every chosen token, and
teacher-forces golden answers for cross-entropy; an out-of-memory batch raises
BackendOutOfMemoryError so that the evaluation halves it.

What a batch costs, with a real vocabulary (Qwen3: 151,936 tokens) in mind:

- Log-probabilities are recorded step by step (`_StepRecorder`): each step's raw logits are
  turned into one log-probability per row as soon as the token is chosen, so a batch keeps
  batch x steps floats and one step's log-softmax, never a full-vocabulary tensor per step
  (`output_logits=True` kept batch x steps x vocabulary: 1.2 GB for 32 x 64 steps in
  float32).
- The golden answers are scored after the prompt the generation already prefilled: the
  prompt's key/value cache from `generate` is cut back to the prompt and only the golden
  tokens run through the model (`score` right after `generate` on the same prompts). The
  first golden token's log-probability comes from the generation's first step, whose
  distribution is the one after the prompt. A row whose generation began with its golden
  tokens needs no pass at all: each of those steps ran on exactly the prompt + golden
  prefix teacher forcing feeds, so the golden log-probabilities are the ones recorded while
  generating (a model that answers right costs no scoring pass); only the other rows go
  through the model, the cache cut down to them. Anything else (another batch, a cache
  that cannot be cut back) scores with one forward pass of prompt + golden, as before.
- Quick mode (`teacher_forcing=False`) keeps nothing for scoring: no cache, no cross-entropy.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from evaluators.backends.base import (
    BackendOutOfMemoryError,
    Generation,
    GoldenScore,
    first_line,
    stop_cut,
)
from evaluators.backends.prompts import PromptRenderer, quiet_transformers
from evaluators.checkpoint import CheckpointInfo, inspect_checkpoint
from evaluators.data import Message
from evaluators.errors import EvaluationError

# Golden positions scored per forward pass: the logits of one pass are batch x this x
# vocabulary floats (32 x 16 x 151,936 x 4 bytes = 311 MB), whatever the golden answers' length.
GOLDEN_CHUNK = 16
# Config fields that give a model's context length in positions, in the order looked at.
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator failing (a RuntimeError with a telling message)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; anything else is checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError("backend", f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """`auto`: float32 on CPU (half precision is slow there), the checkpoint's own on GPU."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def context_length(config: Any) -> int | None:
    """The positions a model's config allows (None when it names none)."""
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_argument(model: Any) -> str:
    """The name forward() takes the key/value cache under (`cache` since transformers 5.x
    renamed `past_key_values`; either works through 5.40, only one after)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _StepRecorder:
    """Each generated token's log-probability under the raw logits, kept as it is chosen.

    A forward hook on the model sees every step's raw logits (before any logits processor of
    the checkpoint's generation_config) and keeps the last step's. This object, also the
    last logits processor, is called once per step with the tokens chosen so far: it reads
    the token the previous step chose from the previous step's log-softmax, then writes this
    step's log-softmax over it (one batch x vocabulary buffer for the whole generation: a
    fresh tensor per step makes the heap grow). The last step's token is read after
    generate (`finish`). The first step's log-softmax (the distribution after the prompt)
    goes to a tensor of its own when `keep_first`, for the golden answer's first token.
    """

    def __init__(self, keep_first: bool) -> None:
        self.keep_first = keep_first
        self.raw: Any = None  # the last forward's logits at the last position
        self.previous: Any = None  # the previous step's log-softmax, batch x vocabulary
        self.first: Any = None
        self.chosen: list[Any] = []  # one batch x 1 tensor per step
        self._buffer: Any = None

    def hook(self, _module: Any, _args: Any, output: Any) -> None:
        self.raw = output.logits[:, -1]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        values = self.raw.float()
        if self.previous is not None:
            self.chosen.append(self.previous.gather(-1, input_ids[:, -1:]))
        elif self.keep_first:
            self.previous = self.first = torch.log_softmax(values, dim=-1)
            return scores
        if self._buffer is None or self._buffer.shape != values.shape:
            self._buffer = torch.empty_like(values)
        self.previous = torch.log_softmax(values, dim=-1, out=self._buffer)
        return scores

    def finish(self, generated: Any) -> Any:
        """batch x generated-steps log-probabilities (the last step read from `generated`)."""
        import torch

        steps = generated.shape[1]
        if steps > len(self.chosen) and self.previous is not None:
            self.chosen.append(self.previous.gather(-1, generated[:, -1:]))
        self.previous = self.raw = self._buffer = None
        if steps == 0:
            return generated.new_zeros((generated.shape[0], 0), dtype=torch.float32)
        return torch.cat(self.chosen[:steps], dim=1)


@dataclass
class _Prefill:
    """What the generation of a batch leaves for scoring its golden answers."""

    rows: tuple[tuple[int, ...], ...]  # the prompts' token ids, to recognise the batch
    mask: Any  # the left-padded prompts' attention mask, batch x width
    cache: Any  # the key/value cache, cut back to the prompts
    first: Any  # the generation's first log-softmax (after the prompt), batch x vocabulary
    generated: list[list[int]]  # each row's generated tokens (padding after its end)
    logprobs: list[list[float]]  # each generated token's log-probability (raw logits)

    def select(self, indices: list[int]) -> _Prefill:
        """Only these rows (the cache is cut down in place: a prefill is used once)."""
        import torch

        picked = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(picked)
        return _Prefill(tuple(self.rows[i] for i in indices), self.mask[picked], self.cache,
                        self.first[picked], [self.generated[i] for i in indices],
                        [self.logprobs[i] for i in indices])

    def generated_nll(self, row: int, gold: list[int]) -> float | None:
        """The golden NLL from the generation itself, when the row generated exactly the
        golden tokens first (each step then saw the prompt + golden prefix); else None."""
        if not gold or self.generated[row][: len(gold)] != gold:
            return None
        return -sum(self.logprobs[row][: len(gold)])


class LocalBackend(PromptRenderer):
    """A transformers model and tokenizer loaded in this process.

    teacher_forcing: False for quick mode, where `score` only counts golden tokens and
    generation keeps nothing for it.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str, plain_prompts: bool,
                 teacher_forcing: bool = True) -> None:
        super().__init__(tokenizer, plain_prompts)
        self.model = model
        self.device = device
        self.teacher_forcing = teacher_forcing
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        self.context_length = context_length(model.config)
        self._cache_name = cache_argument(model)
        self._prefill: _Prefill | None = None
        mode = "" if teacher_forcing else ", quick: no cross-entropy"
        self.description = (
            f"transformers on {device} ({str(model.dtype).replace('torch.', '')}{mode})")

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        no_chat_template: str = "error",
        teacher_forcing: bool = True,
    ) -> tuple[LocalBackend, CheckpointInfo]:
        """Check the checkpoint, then load tokenizer and model once; one-line errors only."""
        info = inspect_checkpoint(path)
        quiet_transformers()
        resolved = resolve_device(device)
        tokenizer = cls._load_tokenizer(info.path)
        plain = cls._check_chat_template(tokenizer, info.path, no_chat_template)
        model = cls._load_model(info.path, resolved, resolve_dtype(dtype, resolved))
        return cls(model, tokenizer, resolved, plain, teacher_forcing), info

    @staticmethod
    def _load_model(path: Path, device: str, dtype: Any) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        try:
            # A (model, loading info) pair; transformers annotates it as the model alone.
            loaded = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, output_loading_info=True
            )
            model, loading = cast("tuple[Any, dict[str, Any]]", loaded)
        except Exception as exc:  # transformers raises many types for unreadable weights
            if is_out_of_memory(exc):
                raise EvaluationError("out_of_memory", f"{path}: model does not fit") from exc
            raise EvaluationError(
                "weights", f"cannot load the model in {path}: {first_line(exc)}"
            ) from exc
        missing = list(loading.get("missing_keys") or [])
        if missing:
            raise EvaluationError(
                "weights",
                f"{path}: {len(missing)} weight(s) missing from the checkpoint"
                f" (e.g. {missing[0]}); refusing to evaluate randomly initialised weights",
            )
        try:
            model.to(device)
        except torch.OutOfMemoryError as exc:
            raise EvaluationError(
                "out_of_memory", f"{path}: model does not fit on {device}"
            ) from exc
        model.eval()
        return model

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if not ids:
            raise EvaluationError("tokenizer", "neither tokenizer nor model defines an EOS token")
        return sorted(ids)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_ids[0]

    def _left_padded(self, rows: Sequence[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def golden_tokens(self, golden: str) -> int:
        """How many tokens a golden answer is scored over (for the context guard)."""
        return len(self.golden_ids(golden))

    def _check_context(self, longest: int, what: str) -> None:
        """Refuse a batch that would run past the model's positions (never an index error);
        the evaluation leaves such examples out before they get here (evaluate.py)."""
        if self.context_length is not None and longest > self.context_length:
            raise EvaluationError(
                "data", f"{what} needs {longest} positions, more than the model's"
                f" {self.context_length}")

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompts: Sequence[Sequence[Message]], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]:
        """Greedy generation of one batch, left-padded, with chosen-token log-probabilities."""
        return self._generate_ids([self.encode_prompt(p) for p in prompts], max_new_tokens,
                                  stops)

    def generate_rendered(
        self, texts: Sequence[str], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]:
        """Greedy generation from prompts already rendered with `render` (an inference server's
        input: the client applied the chat template, so its text holds the special tokens)."""
        rows = [list(self.tokenizer(t, add_special_tokens=self.plain_prompts)["input_ids"])
                for t in texts]
        return self._generate_ids(rows, max_new_tokens, stops)

    def _generate_ids(
        self, rows: Sequence[list[int]], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        self._prefill = None  # the previous batch's, never scored: free it first
        self._check_context(max(len(r) for r in rows) + max_new_tokens,
                            f"a prompt plus max_new_tokens {max_new_tokens}")
        input_ids, mask = self._left_padded(rows)
        recorder = _StepRecorder(keep_first=self.teacher_forcing)
        handle = self.model.register_forward_hook(recorder.hook)
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=self.eos_ids,
                    pad_token_id=self.pad_id,
                    stop_strings=list(stops) or None,
                    tokenizer=self.tokenizer if stops else None,
                    logits_processor=LogitsProcessorList([recorder]),
                    return_dict_in_generate=self.teacher_forcing,
                )
                sequences = out.sequences if self.teacher_forcing else out
                generated = sequences[:, input_ids.shape[1] :]
                logprobs = recorder.finish(generated).cpu().tolist()
                generated_rows = generated.tolist()
        except Exception as exc:
            self._raise_if_oom(exc)
            raise
        finally:
            handle.remove()
        if self.teacher_forcing:
            self._keep_prefill(rows, mask, out, recorder.first, generated_rows, logprobs)
        return [self._finish_row(row, lps, stops)
                for row, lps in zip(generated_rows, logprobs, strict=True)]

    def _keep_prefill(self, rows: Sequence[list[int]], mask: Any, out: Any, first: Any,
                      generated: list[list[int]], logprobs: list[list[float]]) -> None:
        """Keep the prompts' cache for `score`, cut back to the prompts; only a plain dynamic
        cache can be (a sliding window or a recurrent state cannot go back)."""
        from transformers.cache_utils import DynamicLayer

        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if (cache is None or first is None or not layers
                or not all(type(x) is DynamicLayer for x in layers)):
            return
        extra = cache.get_seq_length() - mask.shape[1]
        if extra > 0:
            cache.crop(-extra)
        self._prefill = _Prefill(tuple(tuple(r) for r in rows), mask, cache, first, generated,
                                 logprobs)

    def _finish_row(
        self, row: list[int], logprobs: list[float], stops: Sequence[str]
    ) -> Generation:
        """Cut one row at its end: the first EOS, or just after the first stop string."""
        end = next((i for i, tok in enumerate(row) if tok in self.eos_ids), None)
        ids = row if end is None else row[:end]
        text = self._decode(ids)
        cut = stop_cut(text, stops)
        if cut is not None:
            count = self._tokens_covering(ids, cut)
            ids, text = ids[:count], text[:cut]
        finished = end is not None or cut is not None
        tokens = [self._decode([i]) for i in ids]
        return Generation(text, tokens, logprobs[: len(ids)], truncated=not finished)

    def _decode(self, ids: Sequence[int]) -> str:
        # Special tokens are kept: `<think>` may be one, and stripping is scoring's decision.
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _tokens_covering(self, ids: Sequence[int], chars: int) -> int:
        """The fewest leading tokens whose text reaches `chars` characters."""
        for count in range(1, len(ids) + 1):
            if len(self._decode(ids[:count])) >= chars:
                return count
        return len(ids)

    def _raise_if_oom(self, exc: BaseException) -> None:
        import torch

        if is_out_of_memory(exc):
            self._prefill = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise BackendOutOfMemoryError(str(exc).splitlines()[0] if str(exc) else "out of memory")

    # ------------------------------------------------------------------ teacher forcing

    def score(
        self, prompts: Sequence[Sequence[Message]], goldens: Sequence[str]
    ) -> list[GoldenScore]:
        """Summed NLL of each golden answer after its prompt.

        Right after `generate` on the same prompts, from that generation's prefill (the
        module docstring); otherwise one forward pass of prompt + golden. In quick mode,
        golden token counts only.
        """
        prompt_rows = [self.encode_prompt(p) for p in prompts]
        gold_rows = [self.golden_ids(g) for g in goldens]
        prefill, self._prefill = self._prefill, None
        if not self.teacher_forcing:
            return [GoldenScore(nll=None, tokens=len(g)) for g in gold_rows]
        self._check_context(max(len(p) + len(g) for p, g in zip(prompt_rows, gold_rows,
                                                                strict=True)),
                            "a prompt plus its golden answer")
        try:
            if prefill is not None and prefill.rows == tuple(tuple(r) for r in prompt_rows):
                nlls = self._nll_after_prefill(prefill, gold_rows)
            else:
                nlls = self._nll_by_forward(prompt_rows, gold_rows)
        except Exception as exc:
            self._raise_if_oom(exc)
            raise
        return [GoldenScore(nll=nll, tokens=len(g)) for nll, g in zip(nlls, gold_rows,
                                                                      strict=True)]

    def _nll_after_prefill(self, prefill: _Prefill, gold_rows: Sequence[list[int]]) -> list[float]:
        """Golden NLLs from the generation: rows that generated their golden tokens first
        from its log-probabilities, the others through the model (`_nll_by_cache`) on the
        prefill cut down to them."""
        found = [prefill.generated_nll(i, gold) for i, gold in enumerate(gold_rows)]
        todo = [i for i, nll in enumerate(found) if nll is None]
        scored: dict[int, float] = {}
        if todo:
            rest = prefill if len(todo) == len(gold_rows) else prefill.select(todo)
            scored = dict(zip(todo, self._nll_by_cache(rest, [gold_rows[i] for i in todo]),
                              strict=True))
        return [scored[i] if nll is None else nll for i, nll in enumerate(found)]

    def _nll_by_cache(self, prefill: _Prefill, gold_rows: Sequence[list[int]]) -> list[float]:
        """Golden NLLs from the generation's prefill: the first token from the generation's
        first step, the rest from forward passes over the golden tokens only (right-padded
        after the prompts, GOLDEN_CHUNK positions a pass, continuing the cache)."""
        import torch

        batch = len(gold_rows)
        firsts = torch.tensor([[g[0] if g else 0] for g in gold_rows], device=self.device)
        per_token = [prefill.first.gather(-1, firsts).double().cpu()]
        inputs = [g[:-1] for g in gold_rows]  # token j predicts golden token j + 1
        width = max(len(g) for g in inputs)
        ids = torch.full((batch, max(width, 1)), self.pad_id, dtype=torch.long)
        targets = torch.zeros_like(ids)
        gold_mask = torch.zeros_like(ids)
        for i, gold in enumerate(gold_rows):
            if len(gold) > 1:
                ids[i, : len(gold) - 1] = torch.tensor(gold[:-1])
                targets[i, : len(gold) - 1] = torch.tensor(gold[1:])
                gold_mask[i, : len(gold) - 1] = 1
        ids, targets, gold_mask = (t.to(self.device) for t in (ids, targets, gold_mask))
        mask, start = prefill.mask, prefill.mask.sum(dim=-1, keepdim=True)
        with torch.inference_mode():
            for lo in range(0, width, GOLDEN_CHUNK):
                hi = min(lo + GOLDEN_CHUNK, width)
                mask = torch.cat([mask, gold_mask[:, lo:hi]], dim=1)
                logits = self.model(
                    input_ids=ids[:, lo:hi], attention_mask=mask,
                    position_ids=start + torch.arange(lo, hi, device=start.device),
                    use_cache=True, **{self._cache_name: prefill.cache},
                ).logits
                chosen = torch.log_softmax(logits.float(), dim=-1).gather(
                    -1, targets[:, lo:hi].unsqueeze(-1)).squeeze(-1)
                per_token.append((chosen * gold_mask[:, lo:hi]).double().cpu())
        totals = torch.cat(per_token, dim=1).sum(dim=1)
        return [-float(totals[i]) if gold_rows[i] else 0.0 for i in range(batch)]

    def _nll_by_forward(self, prompt_rows: Sequence[list[int]],
                        gold_rows: Sequence[list[int]]) -> list[float]:
        """Golden NLLs from one forward pass of prompt + golden per row.

        Left padding with explicit position ids puts every golden answer at the end of its
        row, so only the last positions' logits are computed (logits_to_keep): with a 150k
        vocabulary, full-sequence logits would dominate memory.
        """
        import torch

        input_ids, mask = self._left_padded([p + g for p, g in zip(prompt_rows, gold_rows,
                                                                    strict=True)])
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        keep = max(len(g) for g in gold_rows) + 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=keep,
            ).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = input_ids[:, -(keep - 1) :]
            chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        return [-float(chosen[i, chosen.shape[1] - len(gold) :].double().sum())
                for i, gold in enumerate(gold_rows)]

    def close(self) -> None:
        """Drop the model so that its memory is free before the next checkpoint loads."""
        import gc

        import torch

        self.model = None
        self._prefill = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
