"""Generation backends: what the evaluation needs from a model, one module per concern.

Why a package: the evaluation logic (batching, scoring, statistics) must not care whether the
model runs in this process or behind an inference server. base.py holds the small interface
and what every backend shares, prompts.py renders and counts prompts with the checkpoint's
tokenizer (both backends use it), local.py is the transformers backend and remote.py evaluates
through the inference server (evaluators/remote/ speaks its HTTP API).

Nothing is imported here: `evaluators.backends.local` pulls in torch, and a command that
evaluates remotely must not pay for it.
"""
