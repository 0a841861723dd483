"""Flashpods on the laptop: an MCP server and a CLI that run jobs on a Flashpods host."""
