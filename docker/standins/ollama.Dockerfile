# Stand-in for ollama/ollama:0.11.4: the same Ollama release (Go-built by scripts/install-ollama.sh)
# where the upstream image has it, the same entrypoint, user (root) and model path.
FROM ope-standin/debian-base
COPY ollama /usr/bin/ollama
ENV OLLAMA_HOST=0.0.0.0:11434
EXPOSE 11434
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
