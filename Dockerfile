# The exporter alone. Multi-stage: build a wheel, install it into a slim runtime as a non-root user.
FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# exporter/default.yaml links to scenarios/default.yaml: the wheel build needs the file behind it.
COPY scenarios ./scenarios
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[report]'

FROM python:3.11.10-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter \
    && mkdir -p /var/lib/ollama-perf-exporter && chown exporter /var/lib/ollama-perf-exporter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY scenarios /etc/ollama-perf-exporter/scenarios
USER 10001
EXPOSE 9877
# Inside the container the exporter listens on all interfaces of its own network namespace;
# compose publishes the port on the host's 127.0.0.1 only.
ENTRYPOINT ["ollama-perf-exporter"]
CMD ["--config.file", "/etc/ollama-perf-exporter/scenarios/default.yaml", \
     "--web.listen-address", "0.0.0.0:9877", \
     "--results.file", "/var/lib/ollama-perf-exporter/results.jsonl"]
