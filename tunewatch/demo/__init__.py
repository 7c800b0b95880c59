"""The demo workload: a real model that trains on a CPU in seconds, and the demo trainer.

- tinymodel.py: the tiny Qwen3 model, its tokenizer, task and validation suite, built from
  nothing (tests, benchmarks and the demo all use it; nothing is downloaded);
- trainer.py: what `tunewatch demo-train` runs under `make up`: that model trained with the
  real transformers Trainer and the PrometheusCallback, paced for a person to watch, with
  one deliberately damaged checkpoint so the regression alert is seen firing.

Importing this package imports neither torch nor transformers.
"""
