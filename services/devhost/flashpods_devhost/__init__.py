"""Flashpods dev host: one launcher for the API, reaper, token service, rsyncd and Podman.

`scripts/dev-host` and every integration/host test start a host through
`flashpods_devhost.host.DevHost`, so the tests exercise exactly what a user runs.
"""
