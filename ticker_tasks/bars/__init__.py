"""1-minute bars from validated ticks: merged in Redis whatever the order, closed into candles."""
