# Stand-in for prom/prometheus: Prometheus and promtool built from their Go module
# (scripts/install-prometheus.sh) at the upstream image's paths, user and working directory,
# with busybox `wget` for the compose healthcheck.
FROM ope-standin/debian-base
COPY prometheus promtool /bin/
RUN ln -s /bin/busybox /usr/local/bin/wget && mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
