"""Built-in workloads that pods run in place of container images: an `echo` server, bookinfo
stand-ins, a trace `collector` (Zipkin / OTLP), and `sleep`. Each is `python -m meshway.apps.<name>`;
`images` maps image names to them.
Standard library asyncio only (plus `h2` for the echo server's h2c, and the OTLP protos and grpcio
that xds-protos brings for the collector)."""
