"""ollama-perf-exporter: continuous performance probes of Ollama servers for Prometheus."""

__version__ = "0.1.0"
