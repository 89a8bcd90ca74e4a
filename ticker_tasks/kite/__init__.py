"""Zerodha Kite Connect protocol helpers (binary ticker codec, REST client glue)."""
