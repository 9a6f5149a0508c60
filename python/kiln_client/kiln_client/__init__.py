"""A Python client of the Kiln HTTP API: submit generations, follow them, move their files.

    from kiln_client import Kiln

    with Kiln("http://127.0.0.1:8080", key) as kiln:
        generation = kiln.generations.create("demo-video", {"prompt": "a red kiln"})
        generation = kiln.generations.wait(generation.id, on_progress=print)
        kiln.files.download(generation.output["video"].file_id, "kiln.mp4")

See docs/python-client.md in the Kiln repository.
"""

__version__ = "0.1.0"

from . import webhooks  # noqa: E402
from .client import Files, Generations, Kiln, Models, Webhooks  # noqa: E402 (after __version__, which they use)
from .errors import (  # noqa: E402
    Conflict, Forbidden, InvalidInput, InvalidRequest, KilnConnectionError, KilnError, NotFound, PayloadTooLarge,
    RateLimited, Unauthorized)
from .types import (  # noqa: E402
    FINAL_STATES, Alias, AliasTarget, Delivery, DeliveryAttempt, ErrorDetail, File, Generation, GenerationEvent,
    GenerationPage, Model, Output, Progress, QueueInfo, SubmissionResult, WebhookSecret)
from .webhooks import WebhookVerificationError  # noqa: E402

__all__ = [
    "Kiln", "Generations", "Files", "Models", "Webhooks", "webhooks", "WebhookVerificationError",
    "KilnError", "KilnConnectionError", "InvalidRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict",
    "PayloadTooLarge", "InvalidInput", "RateLimited",
    "FINAL_STATES", "Generation", "GenerationPage", "GenerationEvent", "Progress", "QueueInfo", "Output",
    "ErrorDetail", "SubmissionResult", "File", "Model", "Alias", "AliasTarget", "Delivery", "DeliveryAttempt", "WebhookSecret",
]
