"""The whole study from one config file (``cfhdask run``) and the demo."""

from cfhdask.study.pipeline import StudyResult, run_study
from cfhdask.study.schema import SCHEMA, load_config, schema_markdown, validate_config

__all__ = ["SCHEMA", "StudyResult", "load_config", "run_study", "schema_markdown",
           "validate_config"]
