# tunewatch processes (host exporter, training sidecar, evaluator) as one image.
# torch is not a dependency of the package: the exporter and the sidecar do not need it, and
# an evaluator image for GPUs should start from a CUDA torch base (see docs/deploy.md).
FROM python:3.11-slim
COPY pyproject.toml README.md /src/
COPY tunewatch /src/tunewatch
COPY exporters /src/exporters
COPY evaluators /src/evaluators
RUN pip install --no-cache-dir /src && useradd --system --no-create-home tunewatch
USER tunewatch
ENTRYPOINT ["tunewatch"]
