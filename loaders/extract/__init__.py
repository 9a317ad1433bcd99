"""Extracts from databases into the landing zone (``starsmith extract``)."""
