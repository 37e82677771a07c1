# The AceStream engine emulator as an engine image: a static binary on an empty
# base. Built by scripts/engine-sim-image, which hands docker a build context
# holding only the prebuilt binary (no registry here, so no rust base image).
#
# Like the real engine image, the emulator takes its settings from CONF, one
# flag per line, which is what the orchestrator sets on the engines it starts:
#   docker run -e CONF=$'--http-port=6878\n--bind-all' -p 6878:6878 acestream-engine-sim
# Without --bind-all it listens on 127.0.0.1 inside the container, where a
# published port cannot reach it (as with the real engine). ENGINE_SIM_MODE,
# ENGINE_SIM_LATENCY_MS, ENGINE_SIM_STARTUP_DELAY_MS... work as documented in
# crates/engine-sim/README.md.
FROM scratch
COPY acestream-engine-sim /acestream-engine-sim
EXPOSE 6878
ENTRYPOINT ["/acestream-engine-sim"]
