"""Evaluating a checkpoint through the inference server instead of loading it here.

Why: seed 000's GPU host already serves the model (POST /generate, GET /jobs/{id}); an
evaluator without a GPU of its own can use it (evaluators/remote/client.py speaks its HTTP
API). What changes against the local backend:

- prompts are rendered and counted with the checkpoint's own tokenizer (loaded here: small)
  and sent as text, so the server generates from exactly what the local backend would;
- the server only generates, so there is no teacher forcing: cross-entropy is absent (and
  the composite score is made of the parts that exist); answer confidence and calibration
  exist only when the server returns token log-probabilities (`remote.logprobs`);
- before and after the pass /models/active must name this checkpoint's model id, and each
  job's result, where it names a model, must name it too: the seeds scored the base model's
  answers as the newest checkpoint's for days. With `remote.activate` the checkpoint is
  registered and activated first; otherwise a mismatch is refused (reason wrong_model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from evaluators.backends.base import Generation, GoldenScore, stop_cut
from evaluators.backends.prompts import PromptRenderer
from evaluators.checkpoint import CheckpointInfo, inspect_checkpoint
from evaluators.data import Message, Suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import EvalResult, evaluate_with_backend, suite_for
from evaluators.remote.client import InferenceClient, JobResult, RemoteStats
from tunewatch.core.config import EvaluatorConfig, RemoteConfig

log = logging.getLogger(__name__)


def model_id_for(cfg: RemoteConfig, run: str, checkpoint: Path, step: int | None) -> str:
    """A checkpoint's id on the server, from the `remote.model_id` template."""
    return cfg.model_id_for(run, checkpoint.name, step)


class RemoteBackend:
    """GenerationBackend over the inference server (see the module docstring)."""

    def __init__(self, prompts: PromptRenderer, client: InferenceClient, model_id: str,
                 max_parallel_jobs: int) -> None:
        self.prompts = prompts
        self.client = client
        self.model_id = model_id
        self.max_parallel_jobs = max_parallel_jobs
        self.description = f"inference server {client.base} (model {model_id})"

    def prompt_tokens(self, prompt: Sequence[Message]) -> int:
        """Counted with the checkpoint's tokenizer, as the local backend counts them."""
        return self.prompts.prompt_tokens(prompt)

    def generate(
        self, prompts: Sequence[Sequence[Message]], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]:
        """One job per prompt, up to max_parallel_jobs queued at once; results in order."""
        texts = [self.prompts.render(p) for p in prompts]
        results = self.client.run(texts, max_new_tokens, list(stops), self.max_parallel_jobs)
        for result in results:
            self._check_model(result)
        return [self._generation(r, max_new_tokens, stops) for r in results]

    def _check_model(self, result: JobResult) -> None:
        if result.model is not None and result.model != self.model_id:
            raise EvaluationError(
                "wrong_model", f"a job was answered by model {result.model!r}, not"
                f" {self.model_id!r}: refusing to score another model's answers")

    def _generation(self, result: JobResult, max_new_tokens: int,
                    stops: Sequence[str]) -> Generation:
        """The server's text, cut like the local backend cuts it (EOS text, stop strings)."""
        text = result.text
        eos = self.prompts.tokenizer.eos_token
        ended = bool(eos) and eos in text
        if ended:
            text = text[: text.index(eos)]
        cut = stop_cut(text, stops)
        if cut is not None:
            text = text[:cut]
        tokens, logprobs = result.tokens, result.token_logprobs
        finished = ended or cut is not None
        if tokens is not None and logprobs is not None:
            if finished:  # token texts may over-count split multi-byte characters: cut only
                count = _tokens_covering(tokens, len(text))  # when the text was cut
                tokens, logprobs = tokens[:count], logprobs[:count]
        else:
            ids = self.prompts.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = [self.prompts.tokenizer.decode([i]) for i in ids]
        return Generation(text, tokens, logprobs,
                          truncated=self._truncated(result, finished, len(tokens),
                                                    max_new_tokens))

    @staticmethod
    def _truncated(result: JobResult, finished: bool, tokens: int, budget: int) -> bool:
        """Not when an EOS or a stop string ended it; else the server's finish_reason where
        it gives one, else whether the answer used the whole budget (re-tokenized here)."""
        if finished:
            return False
        if result.finish_reason is not None:
            return result.finish_reason == "length"
        return tokens >= budget

    def score(
        self, prompts: Sequence[Sequence[Message]], goldens: Sequence[str]
    ) -> list[GoldenScore]:
        """No teacher forcing over this API: golden token counts only, NLL absent."""
        return [GoldenScore(nll=None, tokens=len(self.prompts.golden_ids(g))) for g in goldens]

    def close(self) -> None:
        """Nothing is held on the server's side; the tokenizer goes with this object."""


def _tokens_covering(tokens: Sequence[str], chars: int) -> int:
    """The fewest leading token texts that reach `chars` characters."""
    if chars <= 0:
        return 0
    total = 0
    for count, token in enumerate(tokens, start=1):
        total += len(token)
        if total >= chars:
            return count
    return len(tokens)


class RemoteEvaluator:
    """`evaluate_checkpoint`'s counterpart for `evaluator.backend: remote`.

    Callable like evaluate_checkpoint (the daemon and eval-once take either); `stats` holds
    the client's counters for /metrics.
    """

    def __init__(self, cfg: EvaluatorConfig, run: str, stats: RemoteStats | None = None,
                 client: InferenceClient | None = None) -> None:
        self.remote = cfg.remote
        self.run = run
        self.stats = stats or RemoteStats()
        self.client = client or InferenceClient(cfg.remote, self.stats)

    def __call__(
        self,
        checkpoint: Path | str,
        cfg: EvaluatorConfig,
        *,
        suite: Suite | None = None,
        data_dir: Path | str | None = None,
        limit: int | None = None,
        show_progress: bool | None = None,
    ) -> EvalResult:
        """Evaluate one checkpoint through the server (evaluate_checkpoint's signature)."""
        suite = suite_for(cfg, suite, data_dir)
        info = inspect_checkpoint(checkpoint)
        self.client.health()
        model_id = model_id_for(self.remote, self.run, info.path, info.step)
        if self.remote.activate:
            self.activate(info, model_id)
        self.check_served(model_id, "before")
        prompts = PromptRenderer.for_checkpoint(info.path, cfg.no_chat_template)
        backend = RemoteBackend(prompts, self.client, model_id, self.remote.max_parallel_jobs)
        result = evaluate_with_backend(
            backend, suite, cfg, checkpoint=str(info.path), step=info.step, limit=limit,
            show_progress=show_progress)
        # A model switched during the pass would have answered part of it.
        self.check_served(model_id, "after")
        return result

    def activate(self, info: CheckpointInfo, model_id: str) -> None:
        """Register the checkpoint under its id and make it the served model.

        Always, even when the server already serves that id: a checkpoint rewritten in place
        (or retried after a failure) keeps its id, and the server must load what is on disk.
        """
        tags = f"step{info.step},tunewatch" if info.step is not None else "tunewatch"
        self.client.register(model_id, str(info.path), tags)
        self.client.set_active(model_id)
        log.info("inference server %s now serves %s (%s)", self.client.base, model_id,
                 info.path)

    def check_served(self, model_id: str, when: str) -> None:
        """Refuse (wrong_model) unless the server serves `model_id`."""
        served = self.client.active_model()
        if served != model_id:
            raise EvaluationError(
                "wrong_model",
                f"inference server {self.client.base} serves {served or 'no model'!s}"
                f" {when} the evaluation, not {model_id!r}; refusing to score it as this"
                " checkpoint (set evaluator.remote.activate: true to switch it)")
