"""The HTTP edge: JSON errors and validation, security middleware, pages and probes."""
