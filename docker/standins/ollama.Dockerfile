# Stand-in for ollama/ollama at docker-compose.yml's tag: the same Ollama release (built by
# scripts/install-ollama.sh) where the upstream image has it, the same entrypoint, user (root)
# and model path. The build's lib/ollama (0.30 and later: llama-server, llama-quantize and the
# GGML libraries the model runner loads) goes where upstream keeps it, /usr/lib/ollama: Ollama
# looks for it at <dir of the executable>/../lib/ollama.
FROM ope-standin/debian-base
COPY ollama /usr/bin/ollama
COPY lib/ollama/ /usr/lib/ollama/
ENV OLLAMA_HOST=0.0.0.0:11434
EXPOSE 11434
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
