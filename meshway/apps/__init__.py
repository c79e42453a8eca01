"""Built-in workloads that pods run in place of container images: an `echo` server, bookinfo
stand-ins, and `sleep`. Each is `python -m meshway.apps.<name>`; `images` maps image names to them.
Standard library asyncio only (plus `h2` for the echo server's h2c)."""
