"""The one exception a failed evaluation raises.

Why a reason code: the daemon counts failures as `tunewatch_eval_failures_total{reason}`, so
the cause must be a bounded label value, while the message is the one line a person reads.
A failed evaluation never returns figures: no exact match of 0, no cross-entropy of inf.
"""

from __future__ import annotations

# Bounded values of the `reason` label (DESIGN section 9: reason is an allowed label).
REASONS = (
    "checkpoint_missing",
    "config",
    "weights",
    "tokenizer",
    "chat_template",
    "data",
    "out_of_memory",
    "backend",
    "state_write",  # the evaluation succeeded or failed, but its record could not be saved
    # The inference server (backend: remote, evaluators/remote):
    "remote_unavailable",  # refused connections, 5xx or an unhealthy /health after retries
    "remote_timeout",  # a generation job not done within remote.job_timeout_seconds
    "remote_job",  # a job that failed on the server, or an answer not in the API's shape
    "wrong_model",  # the served model is not the checkpoint being evaluated
)


# Failures of the inference server rather than of the checkpoint: the daemon keeps retrying
# them (backoff capped at evaluator.retry_max_backoff_seconds) instead of giving up on a
# checkpoint that is fine.
TRANSIENT_REASONS = frozenset({"remote_unavailable", "remote_timeout", "wrong_model"})


class EvaluationError(Exception):
    """A checkpoint or suite that cannot be evaluated; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown evaluation failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message
