"""The local backend: a transformers model and tokenizer loaded in this process.

Why its own module: it is the only part of the evaluation that needs torch and a model in
memory (the remote backend needs only a tokenizer). A checkpoint is checked, loaded once with
one-line errors, generates greedily with the log-probability of every chosen token, and
teacher-forces golden answers for cross-entropy; an out-of-memory batch raises
BackendOutOfMemoryError so that the evaluation halves it.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        quiet_transformers()
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
