"""AnomalyDesk: desktop anomaly monitoring for microservices, on Redis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anomalydesk")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
