"""Long-running processes: the stack supervisor and (later) the streamer."""
