"""The whole study from one config file (``cfhdask run``) and the demo."""

from cfhdask.study.config import StudyConfig, load_config, schema_markdown, validate_config
from cfhdask.study.pipeline import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "load_config", "run_study", "schema_markdown",
           "validate_config"]
