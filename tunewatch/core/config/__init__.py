"""One YAML configuration for every tunewatch process, with environment overrides.

Why one file: the trainer, the sidecar, the host exporter and the evaluator of one run must
agree on names (the run label, directories, ports). Each process reads the same
`tunewatch.yml` (its path from `--config` or `TUNEWATCH_CONFIG`) and only the sections it
needs. Every key has a documented default, so an absent file is a valid configuration.

Environment overrides: a name with a double underscore is configuration,
`TUNEWATCH_<SECTION>__<KEY>` (one `__` between levels: `TUNEWATCH_EVALUATOR__REMOTE__URL` is
three), the value parsed as a YAML scalar, e.g. `TUNEWATCH_EVALUATOR__BATCH_SIZE=32`; an unknown
section or key there is an error naming the variable and its value. Three single names are
read: `TUNEWATCH_RUN` (the run label, fixed by the design), `TUNEWATCH_LOG_LEVEL` and
`TUNEWATCH_CONFIG` (the file). Every other `TUNEWATCH_*` name is ignored.

Validation happens once at start; each error names the key (and the file and line where the
value came from), so a typo is found before a long run, not after.

The parts: sections.py (the schema, each numeric key's range declared next to its default),
environment.py (the overrides), validate.py (types), checks.py (the declared ranges walked,
and the rules across keys), loader.py (putting them together).
"""

from tunewatch.core.config.checks import COMPOSITE_PARTS, remote_errors
from tunewatch.core.config.environment import (
    ENV_CONFIG_PATH,
    ENV_LEVEL_SEPARATOR,
    ENV_PREFIX,
    ENV_SINGLE_NAMES,
)
from tunewatch.core.config.loader import (
    DEFAULT_CONFIG_NAME,
    as_dict,
    find_config_path,
    load_config,
)
from tunewatch.core.config.sections import (
    PREDICTION_LIMITS,
    RANGE,
    Config,
    ContractConfig,
    DemoConfig,
    EvaluatorConfig,
    ExporterConfig,
    PredictionsConfig,
    ProcessTarget,
    QueueDir,
    Range,
    RegressionConfig,
    RemoteConfig,
    StackConfig,
    TrainingConfig,
)
from tunewatch.core.errors import ConfigError

__all__ = [
    "COMPOSITE_PARTS",
    "DEFAULT_CONFIG_NAME",
    "ENV_CONFIG_PATH",
    "ENV_LEVEL_SEPARATOR",
    "ENV_PREFIX",
    "ENV_SINGLE_NAMES",
    "PREDICTION_LIMITS",
    "RANGE",
    "Config",
    "ConfigError",
    "ContractConfig",
    "DemoConfig",
    "EvaluatorConfig",
    "ExporterConfig",
    "PredictionsConfig",
    "ProcessTarget",
    "QueueDir",
    "Range",
    "RegressionConfig",
    "RemoteConfig",
    "StackConfig",
    "TrainingConfig",
    "as_dict",
    "find_config_path",
    "load_config",
    "remote_errors",
]
