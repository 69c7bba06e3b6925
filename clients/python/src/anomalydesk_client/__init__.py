"""anomalydesk-client: send request and business metrics to an AnomalyDesk collector.

    from anomalydesk_client import AnomalyClient
    client = AnomalyClient("http://127.0.0.1:4000", api_key="...", service="orders")
    client.send_metric("GET:/orders/42", 200, 12.5)
    client.send_business_metric("checkout_value", 129.0, expected_range=[20, 500])
"""

from anomalydesk_client._core import AnomalyClientError, QueueFull, Stats, TransportError
from anomalydesk_client.aio import AsyncAnomalyClient
from anomalydesk_client.client import AnomalyClient
from anomalydesk_client.middleware import AnomalyASGIMiddleware, AnomalyWSGIMiddleware
from anomalydesk_client.timer import Timer

__version__ = "0.1.0"
__all__ = [
    "AnomalyASGIMiddleware",
    "AnomalyClient",
    "AnomalyClientError",
    "AnomalyWSGIMiddleware",
    "AsyncAnomalyClient",
    "QueueFull",
    "Stats",
    "Timer",
    "TransportError",
]
