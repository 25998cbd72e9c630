"""cogvx.runtime: schedulers, the staged pipeline, stage backends and video IO."""
