# A stand-in for redis:7-alpine: Debian's redis-server, with the official image's entrypoint behaviour that matters
# to docker-compose.yml (protected mode off: the API reaches it over the compose network).
ARG DEBIAN_BASE
FROM ${DEBIAN_BASE}
COPY apt.conf /etc/apt/apt.conf.d/99standin
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
