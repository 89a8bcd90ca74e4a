"""Market knowledge without I/O: NSE trading calendar, instrument dumps, option chains."""
