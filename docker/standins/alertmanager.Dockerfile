# Stand-in for prom/alertmanager: Alertmanager and amtool built from their Go module
# (scripts/install-prometheus.sh) at the upstream image's paths, user and working directory,
# with busybox `wget` for the compose healthcheck.
FROM ope-standin/debian-base
COPY alertmanager amtool /bin/
RUN ln -s /bin/busybox /usr/local/bin/wget && mkdir -p /alertmanager /etc/alertmanager && chown 65534:65534 /alertmanager
USER 65534
WORKDIR /alertmanager
EXPOSE 9093
VOLUME ["/alertmanager"]
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
