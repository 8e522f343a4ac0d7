"""Test kit: for tests, scripts and benchmarks; the exporter itself never imports it.

- fake_ollama:   FakeOllama, a programmable Ollama-compatible server (failure modes, write log)
- stream_server: a single-threaded streaming server with exact token timing, for benchmarks
- real_ollama:   OllamaServer, a real `ollama serve` with the SmolLM2-135M model
- faults:        the fault matrix, each fault made real and judged on what the exporter reports
- exporters:     free_port, wait_for, scenario_yaml, CollectingSink, ThreadedExporter, ExporterProcess
- soak:          the exporter process at ten times its normal probe rate, leak check
"""
