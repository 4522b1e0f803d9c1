# The AgentOne LLM Service as an image: `docker build -t llm-service .`, then
# `docker run -p 8000:8000 -e OPENAI_API_KEY=... llm-service` (no provider configured: demo mode).
# Several replicas sharing limits and breaker state: docker-compose.yml, and docs/deployment.md.

FROM python:3.11-slim AS build
WORKDIR /src
# What the wheel is built from: the package, its profiles and the fixtures demo mode serves.
COPY pyproject.toml README.md ./
COPY services ./services
COPY config ./config
COPY tests/fixtures ./tests/fixtures
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 llm
USER llm
WORKDIR /home/llm
# Listen on every interface inside the container; JSON logs for the collector.
ENV LLM_HOST=0.0.0.0 \
    LLM_PORT=8000 \
    LLM_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
CMD ["llm-service", "serve"]
