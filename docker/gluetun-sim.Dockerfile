# The Gluetun control-server emulator as a VPN-node image: a static binary on an
# empty base. Built by scripts/gluetun-sim-image, which hands docker a build context
# holding only the prebuilt binary (no registry here, so no rust base image).
#
# Engines join this container's network namespace (network_mode: container:<node>),
# as they would a real Gluetun container; the emulator only has to keep running as
# PID 1 (it exits 0 on SIGTERM). Settings come from the environment as documented in
# crates/gluetun-sim/README.md, e.g.
#   docker run -d -p 127.0.0.1::8000 -e GLUETUN_SIM_FORWARDED_PORT=40000 \
#     -e HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE='{"auth":"apikey","apikey":"k"}' \
#     acestream-gluetun-sim
#
# Like the real image's, the health check follows the tunnel: healthy while
# GET /v1/vpn/status would say "running", unhealthy once it is stopped (checked on
# an emulator-only route, so fault modes and the API key don't affect it, as the real
# image's separate health server isn't affected by its control server).
FROM scratch
COPY gluetun-sim /gluetun-sim
EXPOSE 8000
HEALTHCHECK --interval=2s --timeout=3s --retries=2 CMD ["/gluetun-sim", "--healthcheck"]
ENTRYPOINT ["/gluetun-sim"]
