"""A harness owned by neither tests nor benchmarks: servers in and out of process, an aiortc client, clips."""
