"""Prompts as the model sees them: the chat template applied, encoded and counted.

Why apart from the backends: the local backend feeds these token ids to the model, and the
remote one sends the rendered text to an inference server but still counts tokens here, so
both sort batches and bucket prompt lengths by the same numbers. A checkpoint without a chat
template is refused, or rendered plainly where `evaluator.no_chat_template: plain` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluators.backends.base import first_line
from evaluators.data import Message
from evaluators.errors import EvaluationError

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """A fatal evaluation must end with one line: no progress bars or warnings from loading."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class PromptRenderer:
    """The checkpoint's tokenizer: prompts rendered and counted as the model sees them.

    Shared by the local backend and the remote one (remote.py), which sends the
    rendered text to an inference server but still counts tokens here.
    """

    def __init__(self, tokenizer: Any, plain_prompts: bool) -> None:
        self.tokenizer = tokenizer
        self.plain_prompts = plain_prompts
        self._encoded: dict[tuple[Message, ...], list[int]] = {}

    @classmethod
    def for_checkpoint(cls, path: Path, no_chat_template: str) -> PromptRenderer:
        """The tokenizer of the checkpoint at `path`, checked for a chat template."""
        quiet_transformers()
        tokenizer = cls._load_tokenizer(path)
        return cls(tokenizer, cls._check_chat_template(tokenizer, path, no_chat_template))

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # any failure here means: no usable tokenizer
            raise EvaluationError(
                "tokenizer", f"cannot load the tokenizer of {path}: {first_line(exc)}"
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
