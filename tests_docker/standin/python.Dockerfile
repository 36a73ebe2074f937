# A stand-in for python:3.11-slim where Docker Hub is unreachable: Debian bookworm's Python 3.11 on a debootstrap
# base, with `python` and `pip` on PATH as in the official image, and this network's CA bundle for pip (its HTTPS
# proxy re-signs PyPI's certificate).
ARG DEBIAN_BASE
FROM ${DEBIAN_BASE}
COPY apt.conf /etc/apt/apt.conf.d/99standin
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends python3 python3-pip python3-venv \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
COPY ca-bundle.crt /etc/ssl/certs/standin-ca-bundle.crt
ENV PIP_CERT=/etc/ssl/certs/standin-ca-bundle.crt
