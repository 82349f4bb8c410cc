"""The ledger's tables. Importing this package registers every table on ``Base.metadata``."""

from service.db.models.api_token import ApiToken
from service.db.models.dataset import Case, Dataset
from service.db.models.enums import (
    ConfigRole,
    Family,
    JobState,
    Outcome,
    Provider,
    ResponseType,
    UnitState,
)
from service.db.models.human_label import HumanLabel
from service.db.models.job import Job, JobModelConfig
from service.db.models.model_config import ModelConfig
from service.db.models.work import UNSCORABLE, Judgement, Request, Response

__all__ = [
    "UNSCORABLE",
    "ApiToken",
    "Case",
    "ConfigRole",
    "Dataset",
    "Family",
    "HumanLabel",
    "Job",
    "JobModelConfig",
    "JobState",
    "Judgement",
    "ModelConfig",
    "Outcome",
    "Provider",
    "Request",
    "Response",
    "ResponseType",
    "UnitState",
]
