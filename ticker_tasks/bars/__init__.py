"""1-minute bars and candle upkeep.

- :mod:`~ticker_tasks.bars.aggregate`, :mod:`~ticker_tasks.bars.live`: partial bars of a batch
  merged into the open bars in Redis, whatever the order or number of deliveries;
- :mod:`~ticker_tasks.bars.closing`, :mod:`~ticker_tasks.bars.close`,
  :mod:`~ticker_tasks.bars.candles`: closing finished minutes into ``candles`` (source
  ``stream``) with volume, feed-gap seconds and quality, and publishing them;
- :mod:`~ticker_tasks.bars.compare`, :mod:`~ticker_tasks.bars.rotation`,
  :mod:`~ticker_tasks.bars.completeness`: checking stream bars against Kite's minute candles;
- :mod:`~ticker_tasks.bars.retention`: purging candles past their retention.
"""
