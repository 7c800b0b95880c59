"""The `gpu` collector of the host exporter: NVML readings as `tunewatch_gpu_*` metrics.

One job per module:

    readings.py   the plain data one read produces, and the GpuReader interface
    nvml.py       NvmlReader: every GPU read through NVML (nvidia-ml-py)
    processes.py  ProcessDescriber: a GPU process's name, run and ranks (psutil)
    recorded.py   the JSON recording format and RecordedReader (tests, demos)
    peak_flops.py the boards' peak tensor-core FLOPS table (MFU's denominator)
    families.py   readings -> metric families (pure)
    trackers.py   XID events, memory peaks and read errors kept between scrapes
    collector.py  GpuCollector, the Prometheus collector, and `create_collector`

The exporter's registry (exporters/collectors/__init__.py) imports this package and calls
`create_collector(cfg)`; the exposition it produces is shown in collector.py.
"""

from exporters.collectors.gpu.collector import GpuCollector, create_collector

__all__ = ["GpuCollector", "create_collector"]
