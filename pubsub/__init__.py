"""progress-hub's core: the event model, brokers, the job store and the publisher library.

`Tracker` publishes from async code, `SyncTracker` from threads, Celery and RQ tasks.
Importable by workers without Starlette.
"""

from pubsub.broker import Broker, open_broker
from pubsub.errors import (
    AccessDenied,
    BrokerUnavailable,
    InvalidUpdate,
    JobCancelled,
    JobExists,
    JobNotFound,
    JobTerminal,
    NoResult,
    PayloadTooLarge,
    ProgressError,
)
from pubsub.events import ChunkRef, Chunks, JobStatus, Snapshot, Update
from pubsub.pipelines import Pipeline, PipelineRegistry, Stage, load_pipelines
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from pubsub.sync import SyncTracker
from pubsub.tokens import issue_token, verify_token

__all__ = [
    "AccessDenied",
    "Broker",
    "BrokerUnavailable",
    "ChunkRef",
    "Chunks",
    "InvalidUpdate",
    "JobCancelled",
    "JobExists",
    "JobNotFound",
    "JobStatus",
    "JobStore",
    "JobTerminal",
    "NoResult",
    "PayloadTooLarge",
    "Pipeline",
    "PipelineRegistry",
    "ProgressError",
    "Snapshot",
    "Stage",
    "SyncTracker",
    "Tracker",
    "Update",
    "issue_token",
    "load_pipelines",
    "open_broker",
    "verify_token",
]
