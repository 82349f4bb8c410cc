"""The fake provider: an HTTP server on loopback speaking the OpenAI, Anthropic and Gemini wire formats."""

from workers.providers.fake.app import FakeApp, create_app
from workers.providers.fake.config import FakeConfig, FaultConfig, LatencyConfig, LimitConfig, ModelProfile
from workers.providers.fake.server import FakeProvider, serve

__all__ = [
    "FakeApp",
    "FakeConfig",
    "FakeProvider",
    "FaultConfig",
    "LatencyConfig",
    "LimitConfig",
    "ModelProfile",
    "create_app",
    "serve",
]
