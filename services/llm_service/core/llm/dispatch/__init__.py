"""Dispatcher concerns as small units (breaker, limits, queue, failover), each testable alone with an
injected clock; `core/llm/dispatcher.py` composes them."""
