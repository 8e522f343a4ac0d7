"""Start llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on the SmolLM2
GGUF that the real Ollama serves: a second real engine for `api: openai`.

Its Python comes from $LLAMA_CPP_SERVER_PYTHON (set by `make test`), else from
scripts/install-llama-cpp-server.sh, which builds the wheel once per machine into the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from .exporters import ROOT, http_get
from .real_ollama import model_gguf

MODEL = "smollm2-135m"  # the alias it answers to, the same name as on the real Ollama
START_DEADLINE_S = 180  # loading the model and importing fastapi on two busy cores
INSTALL_TIMEOUT_S = 3600  # a first build compiles llama.cpp


def server_python() -> str:
    """$LLAMA_CPP_SERVER_PYTHON, else the cached build (made on first use)."""
    path = os.environ.get("LLAMA_CPP_SERVER_PYTHON")
    if path and os.access(path, os.X_OK):
        return path
    res = subprocess.run([os.path.join(ROOT, "scripts", "install-llama-cpp-server.sh")], capture_output=True,
                         text=True, timeout=INSTALL_TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"cannot build llama-cpp-python's server:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


@dataclass
class LlamaCppServer:
    python: str
    port: int
    log_path: str
    # Further models by alias -> GGUF path (a multi-model server from a config file; a path that
    # does not exist fails only when a request names it).
    extra_models: dict[str, str] = field(default_factory=dict)
    n_ctx: int = 2048
    n_threads: int = 2
    proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if not self.extra_models:
            return [self.python, "-m", "llama_cpp.server", "--model", model_gguf(), "--model_alias", MODEL,
                    "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                    "--n_threads", str(self.n_threads), "--verbose", "false"]
        models = [{"model": model_gguf(), "model_alias": MODEL, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                   "verbose": False}]
        models += [{"model": path, "model_alias": alias, "n_ctx": self.n_ctx, "verbose": False}
                   for alias, path in self.extra_models.items()]
        config = self.log_path + ".config.json"
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"host": "127.0.0.1", "port": self.port, "models": models}, f)
        return [self.python, "-m", "llama_cpp.server", "--config_file", config]

    def start(self) -> "LlamaCppServer":
        log = open(self.log_path, "ab")
        # Its own session: stop() signals the whole group, whatever the server starts.
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_DEADLINE_S
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {self.log_path}")
                if http_get(self.url + "/v1/models", timeout=1)[0] == 200:
                    return self
                time.sleep(0.2)
            raise RuntimeError(f"llama_cpp.server did not answer within {START_DEADLINE_S}s; see {self.log_path}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if not self.proc:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "LlamaCppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
