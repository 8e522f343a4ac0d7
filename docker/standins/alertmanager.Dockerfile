# Stand-in for prom/alertmanager: Debian's Alertmanager and amtool at the upstream image's paths,
# user and working directory, with busybox `wget` for the compose healthcheck.
FROM ope-standin/debian-base
COPY alertmanager amtool /bin/
COPY share /usr/share/prometheus/alertmanager
RUN ln -s /bin/busybox /usr/local/bin/wget && mkdir -p /alertmanager /etc/alertmanager && chown 65534:65534 /alertmanager
USER 65534
WORKDIR /alertmanager
EXPOSE 9093
VOLUME ["/alertmanager"]
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
