"""Access to the Kubernetes API server: the one adapter."""
