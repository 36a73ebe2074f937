"""Python client of fvsteer: steered completions and function-vector management over HTTP.

Imports only httpx and pydantic (never torch), so it installs anywhere a server can be reached from.
"""

from fvsteer_client.client import (
    DEFAULT_BASE_URL,
    AsyncClient,
    Client,
    CompletionOptions,
)
from fvsteer_client.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    FvsteerClientError,
    GatewayTimeoutError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from fvsteer_client.models import (
    AdminVectorListing,
    Baseline,
    Completion,
    DeletedVector,
    Health,
    Readiness,
    RefusedVector,
    Steering,
    SteeringLayer,
    Usage,
    VectorInfo,
    VectorMetadata,
    VectorSummary,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AdminVectorListing",
    "AsyncClient",
    "AuthenticationError",
    "Baseline",
    "Client",
    "Completion",
    "CompletionOptions",
    "ConflictError",
    "DeletedVector",
    "FvsteerClientError",
    "GatewayTimeoutError",
    "Health",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "Readiness",
    "RefusedVector",
    "ServiceUnavailableError",
    "Steering",
    "SteeringLayer",
    "Usage",
    "VectorInfo",
    "VectorMetadata",
    "VectorSummary",
    "__version__",
]
