"""Peak tensor-core throughput per GPU board: the denominator of model FLOPs utilisation.

Why a table here: MFU (issue 22) divides the FLOPs a run does by what its GPUs could do at
best, and NVML reports no such figure. The vendor publishes one per board, so the exporter
publishes it beside the board's other readings (`tunewatch_gpu_peak_flops`), keyed by the
board name NVML returns (`nvmlDeviceGetName`, the `name` of `tunewatch_gpu_info`).

Every figure is the **dense** (no structured sparsity) BF16 tensor-core peak **with FP32
accumulate**, at the boost clock, as the vendor's datasheet or architecture whitepaper
states it. Where a document gives only the sparse figure ("with sparsity", marked `*`),
the dense one is half of it and the comment says so. GeForce boards run BF16/FP16 with
FP32 accumulate at half the rate of FP16 accumulate; the figure here is the FP32
accumulate one (what mixed-precision training uses).

Matching, in order: the exact name; then the name normalised by `normalise_board` (case
folded, runs of whitespace made one space, a leading "NVIDIA " dropped: drivers before
R470 named boards without it, e.g. "GeForce RTX 3090"). `exporter.gpu_peak_flops` (board
name -> FLOPS) overrides or extends the table, matched the same way, and wins over it.
A board found nowhere has no peak (the metric is absent) and is counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# The `precision` label of every figure below.
PRECISION = "bf16"
TERA = 1e12
# A leading vendor word older drivers left out of the board name.
VENDOR_PREFIX = "nvidia "
_WHITESPACE = re.compile(r"\s+")

# NVML board name -> dense BF16 tensor-core peak with FP32 accumulate, FLOPS.
BF16_DENSE_PEAK_FLOPS: Mapping[str, float] = MappingProxyType({
    # NVIDIA Ampere GA102 GPU Architecture whitepaper, appendix table "GeForce RTX 3090":
    # Peak BF16 Tensor TFLOPS with FP32 Accumulate 71 (142 with sparsity).
    "NVIDIA GeForce RTX 3090": 71.0 * TERA,
    # NVIDIA Ada GPU Architecture whitepaper, appendix table "GeForce RTX 4090":
    # Peak BF16 Tensor TFLOPS with FP32 Accumulate 165.2 (330.4 with sparsity); FP16
    # accumulate is 330.3, the GeForce half rate does not apply to it.
    "NVIDIA GeForce RTX 4090": 165.2 * TERA,
    # NVIDIA A100 Tensor Core GPU datasheet (40GB and 80GB, SXM4 and PCIe alike):
    # BF16 Tensor Core 312 TFLOPS (624 with sparsity).
    "NVIDIA A100-SXM4-40GB": 312.0 * TERA,
    "NVIDIA A100-SXM4-80GB": 312.0 * TERA,
    "NVIDIA A100-PCIE-40GB": 312.0 * TERA,
    "NVIDIA A100 80GB PCIe": 312.0 * TERA,
    # NVIDIA H100 Tensor Core GPU Architecture whitepaper, table "H100 SXM5": Peak BF16
    # Tensor TFLOPS with FP32 Accumulate 989.4 (1978.9 with sparsity); the H100 datasheet's
    # "1,979 teraFLOPS*" for H100 SXM is the sparse figure.
    "NVIDIA H100 80GB HBM3": 989.4 * TERA,
    # Same whitepaper, table "H100 PCIe": 756.5 dense (1513 with sparsity; the datasheet's
    # "1,513 teraFLOPS*" for H100 PCIe).
    "NVIDIA H100 PCIe": 756.5 * TERA,
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 Tensor Core "1,979 TFLOPS*"
    # (with sparsity), so 989.4 dense: the H100 SXM5's GH100 at the same clocks.
    "NVIDIA H200": 989.4 * TERA,
    # NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity).
    "NVIDIA L40S": 362.05 * TERA,
})


def normalise_board(name: str) -> str:
    """The form two spellings of one board share: case folded, whitespace runs as one
    space, trimmed, without a leading "NVIDIA " (older drivers left it out)."""
    folded = _WHITESPACE.sub(" ", name).strip().casefold()
    return folded[len(VENDOR_PREFIX):] if folded.startswith(VENDOR_PREFIX) else folded


class PeakFlopsTable:
    """Board name -> peak FLOPS: the configured overrides first, then the built-in table.

    Immutable after construction, so scrapes may look up concurrently.
    """

    def __init__(self, overrides: Mapping[str, float] | None = None,
                 table: Mapping[str, float] = BF16_DENSE_PEAK_FLOPS) -> None:
        self._layers = [self._index(overrides or {}), self._index(table)]

    @staticmethod
    def _index(entries: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """The exact names, and the normalised ones (the first spelling of a form wins)."""
        normalised: dict[str, float] = {}
        for name, flops in entries.items():
            normalised.setdefault(normalise_board(name), float(flops))
        return {name: float(flops) for name, flops in entries.items()}, normalised

    def lookup(self, board: str) -> float | None:
        """The board's peak FLOPS, or None when neither the overrides nor the table know it.

        Within each layer the exact name is tried before the normalised one; the override
        layer is searched in full before the table, so a configured figure always wins.
        """
        for exact, normalised in self._layers:
            if board in exact:
                return exact[board]
            found = normalised.get(normalise_board(board))
            if found is not None:
                return found
        return None
