# acestream-orchestrator as a FROM-scratch image around its static binary.
#
# Build it with scripts/orchestrator-image, not `docker build .`: that script
# builds the static binary first and hands docker a context holding only it
# (this machine has no registry, so nothing is compiled inside an image).
# Run it with docker-compose.yml beside this file.
#
# The orchestrator talks to the Docker daemon through /var/run/docker.sock
# (mount it) and keeps its SQLite database in the /data volume.
FROM scratch
COPY acestream-orchestrator /acestream-orchestrator
ENV APP_HOST=0.0.0.0 \
    APP_PORT=8000 \
    DB_URL=sqlite:////data/orchestrator.db
# Also where a .env file would be read from, and where SQLite puts temp files.
WORKDIR /data
VOLUME /data
EXPOSE 8000
# No curl in a scratch image: the binary asks itself (GET /health/live on
# APP_PORT) and exits 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/acestream-orchestrator", "--healthcheck"]
ENTRYPOINT ["/acestream-orchestrator"]
