"""layerwise: plan, build and audit families of Docker images that share their heavy layers."""

__version__ = "0.1.0"
