# tunewatch processes (host exporter, training sidecar, evaluator) as one image.
# torch is not a dependency of the package: the exporter and the sidecar do not need it.
# The evaluator image starts from a CUDA torch base instead (docker-compose.yml passes
# BASE=pytorch/pytorch:...), so pip keeps that torch.
ARG BASE=python:3.11-slim
FROM ${BASE}
COPY pyproject.toml README.md /src/
COPY tunewatch /src/tunewatch
COPY exporters /src/exporters
COPY evaluators /src/evaluators
RUN pip install --no-cache-dir /src && useradd --system --no-create-home tunewatch \
    && mkdir -p /state && chown tunewatch /state
USER tunewatch
ENTRYPOINT ["tunewatch"]
