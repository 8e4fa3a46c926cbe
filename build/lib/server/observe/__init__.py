"""Observing the server: Prometheus metrics, /api/stats, the recent windows behind them, their routes."""
