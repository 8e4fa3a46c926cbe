"""Offline render jobs: the SQLite store, the render worker, media probing/decoding/encoding, routes."""
