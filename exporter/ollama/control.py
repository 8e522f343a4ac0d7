"""Control calls (version, running models, show, tags, pull, unload) through the `ollama` package.

These are not timed, so the official client does them: typed responses, streamed
pull progress. Every exception it raises becomes an OllamaError (errors.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import ollama

from .endpoint import Endpoint, tls_context
from .errors import OllamaError, error_message, from_exception, http_failure
from .wire import ModelFacts, RunningModel, normalize_model_name

CONTROL_TIMEOUT_S = 10.0
UNLOAD_TIMEOUT_S = 60.0


class ControlClient:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    @contextmanager
    def _client(self, what: str, timeout: Optional[float] = CONTROL_TIMEOUT_S) -> Iterator[ollama.Client]:
        """An ollama.Client for one call; its exceptions leave as OllamaError.

        One per call, like the connections before it: cheap with the shared TLS context.
        trust_env=False: the measured stream ignores proxy variables, so these calls do too.
        The package would add $OLLAMA_API_KEY (an ollama.com key) to a target that has no
        credentials configured; only the target's own credentials are sent.
        """
        where = f"{what} on {self.endpoint.where}"
        headers = self.endpoint.headers()
        try:
            with ollama.Client(host=self.endpoint.base_url, timeout=timeout, headers=headers,
                               verify=tls_context(), trust_env=False) as client:
                if not headers:
                    client._client.headers.pop("authorization", None)
                yield client
        except OllamaError:
            raise
        except Exception as exc:  # classified, or re-raised as it is when unknown
            raise from_exception(exc, where) from None

    def version(self) -> str:
        # The package has no version call: one GET through its own httpx client, so that
        # host, headers, timeout and the exception mapping stay those of the other calls.
        with self._client("/api/version") as client:
            r = client._client.get("/api/version")
            if r.status_code >= 400:
                raise http_failure(r.status_code, error_message(r.content))
            data = r.json()
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise OllamaError("malformed_response", "/api/version: no version field")
        return data["version"]

    def running_models(self) -> list[RunningModel]:
        with self._client("/api/ps") as client:
            models = client.ps().models
        return [m for m in map(RunningModel.from_ps, models) if m is not None]

    def show(self, model: str) -> ModelFacts:
        with self._client("/api/show") as client:
            return ModelFacts.from_show(client.show(model))

    def local_models(self) -> set[str]:
        """Normalised names of the models on the server (/api/tags)."""
        with self._client("/api/tags") as client:
            return {normalize_model_name(m.model) for m in client.list().models if m.model}

    def pull(self, model: str, timeout: Optional[float]) -> Iterator[ollama.ProgressResponse]:
        """/api/pull's progress messages; ends after the last one (status "success")."""
        with self._client("/api/pull", timeout) as client:
            yield from client.pull(model, stream=True)

    def unload(self, model: str) -> None:
        with self._client("/api/generate", UNLOAD_TIMEOUT_S) as client:
            client.generate(model=model, keep_alive=0, stream=False)
