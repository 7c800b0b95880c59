"""Generation backends: what the evaluation needs from a model, and the local transformers one.

Why an interface: the evaluation logic (batching, scoring, statistics) must not care whether
the model runs in this process or behind an HTTP server (a later issue adds one). So the
interface is small and speaks in chat messages and texts, never in tensors:

- `prompt_tokens(prompt)`: the prompt's length in tokens, chat template applied (for sorting
  batches and for the length buckets);
- `generate(prompts, max_new_tokens, stops)`: greedy answers, each with its generated tokens,
  their log-probabilities under the model, and whether it was cut off by max_new_tokens;
- `score(prompts, goldens)`: the teacher-forced negative log-likelihood of each golden
  answer after its prompt (for cross-entropy); None where the backend cannot compute it
  (evaluators/remote: a server that only generates), so that the figure is absent.

A backend raises `BackendOutOfMemoryError` when a batch does not fit, so that the caller can halve
the batch and retry, and `EvaluationError` for anything that ends the evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evaluators.checkpoint import CheckpointInfo, inspect_checkpoint
from evaluators.data import Message
from evaluators.errors import EvaluationError

log = logging.getLogger(__name__)


class BackendOutOfMemoryError(Exception):
    """A batch did not fit in (GPU or host) memory; a smaller one may."""


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    text: the decoded answer without the end-of-sequence token; when a stop string ended it,
    the text ends right after that stop string (which is kept). tokens / logprobs: the
    generated tokens up to that point (each token's text, and its log-probability in nats
    under the model's unprocessed distribution; None when the backend has none, which leaves
    confidence and calibration absent). truncated: max_new_tokens ran out first.
    """

    text: str
    tokens: list[str]
    logprobs: list[float] | None
    truncated: bool


@dataclass(frozen=True)
class GoldenScore:
    """Teacher-forced likelihood of a golden answer: summed NLL (nats) over its tokens.

    nll is None when the backend cannot teacher-force (an inference server that only
    generates): cross-entropy is then absent, never estimated.
    """

    nll: float | None
    tokens: int


class GenerationBackend(Protocol):
    """What the evaluation needs from a model (see the module docstring)."""

    description: str

    def prompt_tokens(self, prompt: Sequence[Message]) -> int: ...

    def generate(
        self, prompts: Sequence[Sequence[Message]], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]: ...

    def score(
        self, prompts: Sequence[Sequence[Message]], goldens: Sequence[str]
    ) -> list[GoldenScore]: ...

    def close(self) -> None: ...


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


def _quiet_transformers() -> None:
    """A fatal evaluation must end with one line: no progress bars or warnings from loading."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Where the answer ends: just after the earliest stop string in it, None without one."""
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    return min(ends) if ends else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PromptRenderer:
    """The checkpoint's tokenizer: prompts rendered and counted as the model sees them.

    Shared by the local backend and the remote one (evaluators/remote), which sends the
    rendered text to an inference server but still counts tokens here.
    """

    def __init__(self, tokenizer: Any, plain_prompts: bool) -> None:
        self.tokenizer = tokenizer
        self.plain_prompts = plain_prompts
        self._encoded: dict[tuple[Message, ...], list[int]] = {}

    @classmethod
    def for_checkpoint(cls, path: Path, no_chat_template: str) -> PromptRenderer:
        """The tokenizer of the checkpoint at `path`, checked for a chat template."""
        _quiet_transformers()
        tokenizer = cls._load_tokenizer(path)
        return cls(tokenizer, cls._check_chat_template(tokenizer, path, no_chat_template))

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # any failure here means: no usable tokenizer
            raise EvaluationError(
                "tokenizer", f"cannot load the tokenizer of {path}: {_first_line(exc)}"
            ) from exc
        tokenizer.padding_side = "left"
        return tokenizer

    @staticmethod
    def _check_chat_template(tokenizer: Any, path: Path, mode: str) -> bool:
        """True when prompts must use the plain fallback (evaluator.no_chat_template)."""
        if getattr(tokenizer, "chat_template", None):
            return False
        if mode == "plain":
            log.warning("%s: tokenizer has no chat template, using the plain fallback", path)
            return True
        raise EvaluationError(
            "chat_template",
            f"the tokenizer of {path} has no chat template"
            " (set evaluator.no_chat_template: plain for the documented fallback)",
        )

    def render(self, prompt: Sequence[Message]) -> str:
        """The prompt text: chat template with the generation prompt, or the plain fallback."""
        if self.plain_prompts:
            return "".join(m.content + "\n" for m in prompt)
        messages = [{"role": m.role, "content": m.content} for m in prompt]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode_prompt(self, prompt: Sequence[Message]) -> list[int]:
        """Token ids of the rendered prompt (cached: sorting and generation both need them).

        Templated text already holds its special tokens; the plain fallback gets the
        tokenizer's own (a BOS where the model has one).
        """
        key = tuple(prompt)
        if key not in self._encoded:
            text = self.render(prompt)
            ids = self.tokenizer(text, add_special_tokens=self.plain_prompts)["input_ids"]
            self._encoded[key] = list(ids)
        return self._encoded[key]

    def prompt_tokens(self, prompt: Sequence[Message]) -> int:
        return len(self.encode_prompt(prompt))

    def golden_ids(self, golden: str) -> list[int]:
        """Golden answer tokens, tokenized on their own as training appends them."""
        return list(self.tokenizer(golden, add_special_tokens=False)["input_ids"])


class LocalBackend(PromptRenderer):
    """A transformers model and tokenizer loaded in this process."""

    def __init__(self, model: Any, tokenizer: Any, device: str, plain_prompts: bool) -> None:
        super().__init__(tokenizer, plain_prompts)
        self.model = model
        self.device = device
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        self.description = f"transformers on {device} ({str(model.dtype).replace('torch.', '')})"

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        no_chat_template: str = "error",
    ) -> tuple[LocalBackend, CheckpointInfo]:
        """Check the checkpoint, then load tokenizer and model once; one-line errors only."""
        info = inspect_checkpoint(path)
        _quiet_transformers()
        resolved = resolve_device(device)
        tokenizer = cls._load_tokenizer(info.path)
        plain = cls._check_chat_template(tokenizer, info.path, no_chat_template)
        model = cls._load_model(info.path, resolved, resolve_dtype(dtype, resolved))
        return cls(model, tokenizer, resolved, plain), info

    @staticmethod
    def _load_model(path: Path, device: str, dtype: Any) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        try:
            model, loading = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, output_loading_info=True
            )
        except Exception as exc:  # transformers raises many types for unreadable weights
            if is_out_of_memory(exc):
                raise EvaluationError("out_of_memory", f"{path}: model does not fit") from exc
            raise EvaluationError(
                "weights", f"cannot load the model in {path}: {_first_line(exc)}"
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

        input_ids, mask = self._left_padded(rows)
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
                    return_dict_in_generate=True,
                    output_logits=True,
                )
                generated = out.sequences[:, input_ids.shape[1] :]
                logprobs = self._chosen_logprobs(out.logits, generated)
        except Exception as exc:
            self._raise_if_oom(exc)
            raise
        return [self._finish_row(row, lps, stops)
                for row, lps in zip(generated.tolist(), logprobs, strict=True)]

    @staticmethod
    def _chosen_logprobs(logits: Sequence[Any], generated: Any) -> list[list[float]]:
        """log softmax of each step's raw logits, at the token greedy decoding chose.

        Raw logits (output_logits), not processed scores: the confidence is the model's own
        probability, whatever processors a checkpoint's generation_config brings.
        """
        import torch

        steps = []
        for t, step_logits in enumerate(logits):
            lp = torch.log_softmax(step_logits.float(), dim=-1)
            steps.append(lp.gather(-1, generated[:, t : t + 1]))
        return torch.cat(steps, dim=1).cpu().tolist()

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
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise BackendOutOfMemoryError(str(exc).splitlines()[0] if str(exc) else "out of memory")

    # ------------------------------------------------------------------ teacher forcing

    def score(
        self, prompts: Sequence[Sequence[Message]], goldens: Sequence[str]
    ) -> list[GoldenScore]:
        """Summed NLL of each golden answer after its prompt, in one forward pass per batch.

        Left padding with explicit position ids puts every golden answer at the end of its
        row, so only the last positions' logits are computed (logits_to_keep): with a 150k
        vocabulary, full-sequence logits would dominate memory.
        """
        import torch

        prompt_rows = [self.encode_prompt(p) for p in prompts]
        gold_rows = [self.golden_ids(g) for g in goldens]
        input_ids, mask = self._left_padded([p + g for p, g in zip(prompt_rows, gold_rows,
                                                                    strict=True)])
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        keep = max(len(g) for g in gold_rows) + 1
        try:
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
        except Exception as exc:
            self._raise_if_oom(exc)
            raise
        scores = []
        for i, gold in enumerate(gold_rows):
            nll = -float(chosen[i, chosen.shape[1] - len(gold) :].double().sum())
            scores.append(GoldenScore(nll=nll, tokens=len(gold)))
        return scores

    def close(self) -> None:
        """Drop the model so that its memory is free before the next checkpoint loads."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
