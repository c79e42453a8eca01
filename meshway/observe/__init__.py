"""Observability: Istio's metrics read from Envoy's own stats (pure translation and summaries)."""
