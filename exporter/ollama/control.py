"""Control calls (version, running models, show, tags, pull, unload) through the `ollama` package.

These are not timed, so the official client does them: typed responses, streamed
pull progress. Every exception it raises becomes an OllamaError (errors.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Generator, Iterator, Optional

import httpx
import ollama

from .endpoint import Endpoint, tls_context
from .errors import OllamaError, error_message, from_exception, http_failure
from .wire import ModelFacts, RunningModel, normalize_model_name

CONTROL_TIMEOUT_S = 10.0
UNLOAD_TIMEOUT_S = 60.0


class _TargetCredentials(httpx.Auth):
    """Exactly the target's own credentials on every request. The package adds $OLLAMA_API_KEY
    (an ollama.com key) when it is given no authorization header; that key is not the target's."""

    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.pop("authorization", None)
        request.headers.update(self.headers)
        yield request


class ControlClient:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    def _settings(self, timeout: Optional[float]) -> dict:
        """What every control call's HTTP client shares. trust_env=False: the measured stream
        ignores proxy variables, so these calls do too."""
        return dict(timeout=timeout, verify=tls_context(), trust_env=False,
                    auth=_TargetCredentials(self.endpoint.headers()))

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Every exception of the call leaves as an OllamaError (or as it is, when unknown)."""
        try:
            yield
        except OllamaError:
            raise
        except Exception as exc:
            raise from_exception(exc, f"{what} on {self.endpoint.where}") from None

    @contextmanager
    def _client(self, what: str, timeout: Optional[float] = CONTROL_TIMEOUT_S) -> Iterator[ollama.Client]:
        """An ollama.Client for one call: one per call, cheap with the shared TLS context."""
        with self._calling(what), ollama.Client(host=self.endpoint.base_url, **self._settings(timeout)) as client:
            yield client

    def version(self) -> str:
        # The package has no version call: plain httpx, with the settings of the other calls.
        with self._calling("/api/version"), httpx.Client(**self._settings(CONTROL_TIMEOUT_S)) as http:
            r = http.get(self.endpoint.base_url + "/api/version")
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
