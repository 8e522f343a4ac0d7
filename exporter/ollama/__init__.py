"""Talking to Ollama: the wire format (wire.py), failure reasons (errors.py), control calls
through the `ollama` package (control.py), and the timed stream with its two readers
(transport.py, rawsocket.py, httpclient.py; HTTP framing in framing.py)."""

from .client import HTTP_CLIENT, RAW, TRANSPORTS, OllamaClient
from .errors import OllamaError
from .wire import FinalStats, ModelFacts, RunningModel, StreamChunk, normalize_model_name, same_model

__all__ = ["HTTP_CLIENT", "RAW", "TRANSPORTS", "OllamaClient", "OllamaError", "FinalStats", "ModelFacts",
           "RunningModel",
           "StreamChunk", "normalize_model_name", "same_model"]
