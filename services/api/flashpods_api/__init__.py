"""Flashpods API: HTTP routes, job store, Podman runtime and reaper."""
