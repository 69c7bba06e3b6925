"""The registry's blobs as models: the one way a stored blob becomes a `Model`.

- `decode_model(blob)`: `Model.from_json`, which validates every array and the integrity digest (never
  pickle); anything else raises ModelFormatError.
- `load_model(r, service)`: the active (or a given) model of a service, or a clear `ModelLoadError`.

A module of its own (`detect.service_state` re-exports both): training loads the active model from
here, and the service states, which count the windows training would use, import training.
"""

from __future__ import annotations

import redis

from anomalydesk.detect.forest import ModelFormatError
from anomalydesk.detect.model import Model
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys


def decode_model(blob: bytes) -> Model:
    """A stored blob as a Model; a tampered or malformed blob raises ValueError (ModelFormatError)."""
    try:
        return Model.from_json(blob)
    except ModelFormatError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFormatError(f"not a valid model blob: {err}") from err


def load_model(
    r: redis.Redis, service: str, version: int | None = None, *, keys: Keys | None = None
) -> tuple[registry.ModelInfo, Model]:
    """The active (or given) model of `service`; ModelNotFound / ModelLoadError with the reason."""
    return registry.load(r, service, decode_model, version, keys=keys)
