"""xDS for meshway: pure builders (build_*), the per-proxy snapshot cache, the sans-I/O ADS stream
state machines and the grpc.aio ADS server."""
