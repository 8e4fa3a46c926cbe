"""The stylization server: aiohttp + aiortc in rooms by feature (live, control, jobs, observe, http)."""
