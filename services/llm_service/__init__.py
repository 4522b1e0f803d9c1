"""AgentOne LLM Service: one OpenAI-compatible endpoint in front of several LLM providers."""

__version__ = "0.1.0"
