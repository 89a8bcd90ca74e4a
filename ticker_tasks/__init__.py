"""ticker_tasks: market data and order tasks on Zerodha Kite Connect."""

__version__ = "0.1.0"
