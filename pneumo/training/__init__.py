"""Stage 4, training: one fold's loop and the handlers that subscribe to its events, processes and signals."""
