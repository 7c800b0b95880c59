# tunewatch processes (host exporter, training sidecar, evaluator) as one image.
# torch is not a dependency of the package: the exporter and the sidecar do not need it.
# The evaluator image starts from a CUDA torch base instead (docker-compose.yml passes
# BASE=pytorch/pytorch:...), so pip keeps that torch.
# EXTRAS picks the role (pyproject.toml): none for the exporter and the sidecar (the core:
# no torch, no transformers), "eval,postgres" for the evaluator, "postgres" for compose's
# one-shot `init` (secrets and the predictions schema). Versions come from
# constraints.txt (make lock), as in the bootstrap and CI.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRAS=""
COPY pyproject.toml README.md constraints.txt /src/
COPY tunewatch /src/tunewatch
COPY exporters /src/exporters
COPY evaluators /src/evaluators
# The user's uid is fixed: docker-compose.yml's `init` hands the evaluator its secrets as
# files owned by uid 10001, whichever base image the evaluator was built from.
RUN pip install --no-cache-dir -c /src/constraints.txt "/src${EXTRAS:+[$EXTRAS]}" \
    && useradd --system --uid 10001 --no-create-home tunewatch \
    && mkdir -p /state && chown tunewatch /state
USER tunewatch
ENTRYPOINT ["tunewatch"]
