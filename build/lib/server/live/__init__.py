"""Live streams: WebRTC peers, the per-peer session, the stylized track, bitrates, offers and outputs."""
