"""meshway's Kubernetes mode: the upstream control plane built by scripts/build-kubernetes, and (later)
the Kubernetes store backend. See README "Kubernetes mode (in progress)"."""
