"""xDS for meshway: pure builders (build_*), the per-proxy snapshot cache, the sans-I/O ADS stream and the grpc.aio server."""
