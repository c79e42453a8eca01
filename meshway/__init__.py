"""meshway: Istio ambient mode's waypoint architecture in Python."""
__version__ = "0.1.0"
