# Stand-in for python:3.11-slim-bookworm: Debian bookworm's Python 3.11 as `python` and `pip`
# in /usr/local/bin, like the upstream image. No package index is reachable from the engine,
# so pip installs from a wheelhouse made on the host from pyproject.toml (pip.conf below).
FROM ope-standin/debian-base
COPY wheelhouse /wheelhouse
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > /etc/pip.conf
CMD ["python3"]
